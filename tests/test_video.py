"""The shot-video model: 3D patches and RoPE ids, sharded step == unsharded, keyframe-conditioned sampling,
and the whole-movie CLI (MP4s, HTML page)."""

import json
import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import input_space
from cinema_jax.eval import benchmark
from cinema_jax.eval import video_metrics
from cinema_jax.models import keyframe
from cinema_jax.models import video
from cinema_jax.sampling import jobs
from cinema_jax.sampling import movie
from cinema_jax.sampling import shot_sampler
from configs import video as video_config
from data_pipelines import pipeline
from data_pipelines import precompute
from data_pipelines import tokenizer
from data_pipelines import toy_render

from conftest import LATENT_TINY
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_3d_patches_round_trip_and_match_keyframe_tokens_at_patch_t_1():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 8, 12, 3))  # [B, K, F, H, W, C]
  tok = video.patchify(x, 2, 4)
  assert tok.shape == (2, 3, 2 * 2 * 3, 3 * 2 * 4 * 4)
  np.testing.assert_array_equal(video.unpatchify(tok, 2, 4, 4, 8, 12), x)
  # token (t=1, row=0, col=2) holds frames 2..3, pixels rows 0..3, cols 8..11, channels (c, t, ph, pw)
  want = jnp.einsum("thwc->cthw", x[0, 0, 2:4, 0:4, 8:12]).ravel()
  np.testing.assert_array_equal(tok[0, 0, 1 * 6 + 0 * 3 + 2], want)
  # one frame per token: exactly the keyframe model's (FLUX's) tokens, so img_in weights carry over
  np.testing.assert_array_equal(video.patchify(x, 1, 4)[:, :, :6], keyframe.patchify(x[:, :, 0], 4))


def test_3d_rope_ids_put_each_keyframe_at_its_shots_first_frame_slot():
  kf, clip, txt = video.position_ids(num_shots=2, token_frames_=2, grid=(1, 2), num_text=3, gap=1)
  stride = 1 + 2 + 1  # keyframe slot, 2 token frames, the gap
  np.testing.assert_array_equal(kf, [[[0, 0, 0], [0, 0, 1]], [[stride, 0, 0], [stride, 0, 1]]])
  np.testing.assert_array_equal(clip[1], [[stride + 1, 0, 0], [stride + 1, 0, 1], [stride + 2, 0, 0],
                                          [stride + 2, 0, 1]])
  np.testing.assert_array_equal(clip[0, :, 0], [1, 1, 2, 2])
  assert txt.shape == (4, 3, 3)  # keyframe pairs, then clip pairs: both read their shot's caption
  np.testing.assert_array_equal(txt[:, :, 0], [[0] * 3, [stride] * 3, [0] * 3, [stride] * 3])
  assert not txt[:, :, 1:].any()
  _, later, _ = video.position_ids(2, 2, (1, 2), 3, 1, first_shot=1)
  np.testing.assert_array_equal(later[0], clip[1])


def test_paper_variant_is_about_3b_parameters_and_compiles_abstractly():
  c = video_config.get_config("paper")
  model = keyframe.abstract(c)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
  assert 2.9e9 < n < 3.2e9, n
  assert model.dit.img_in.kernel.shape == (16 * 4 * 2 * 2, 2048)  # 4 frames x 2 x 2 latent patches
  assert video.pair_image_tokens(c) == [5 * 21 * 42] * 8  # each shot: its keyframe, then 4 token frames
  c.model.video.keyframes = "pairs"
  assert video.pair_image_tokens(c) == [21 * 42] * 8 + [4 * 21 * 42] * 8


@pytest.mark.parametrize("variant", ["demo", "tiny", "paper"])
def test_video_variants_validate(variant):
  c = video_config.get_config(variant)
  config_validation.load(c, reads_data=variant != "paper")
  if variant == "paper":  # it trains on pre-computed frame latents (data_pipelines.precompute --frames)
    with pytest.raises(errors.ConfigError, match="config.data.path is empty"):
      config_validation.load(c)


@pytest.mark.parametrize("field,value,message", [
    ("model.video.patch_t", 3, "must divide the 2 generated frames"),
    ("model.video.shot_attention", "sparse", "shot_attention='sparse'"),
    ("objective.loss_pairs", "all", "the video model trains its clips only"),
    ("data.toy.num_frames", 4, "the toy world must render the model's frames per shot"),
    ("log.sample_every_steps", 10, "sample the video model with python -m cinema_jax.sample"),
])
def test_bad_video_configs_are_one_line_errors(field, value, message):
  c = video_config.get_config("tiny")
  section, _, name = field.rpartition(".")
  node = c
  for part in section.split("."):
    node = node[part]
  node[name] = value
  with pytest.raises(errors.ConfigError, match=message):
    config_validation.load(c)


def _tiny_video(**kw):
  c = video_config.get_config("tiny")
  c.update(kw)
  c.model.video.update(num_frames=2, patch_t=1)  # the shared toy fixture renders 2 frames per shot
  c.data.toy.num_frames = 2
  return c


@pytest.mark.parametrize("space", ["pixels", "latents"])
def test_video_sharded_step_equals_the_unsharded_step(toy_train, space, request, tmp_path):
  c = _tiny_video(batch_size=8)
  data = toy_train
  if space == "latents":  # every shot frame's latent, as the toy road pre-computes them
    data = str(tmp_path / "latents")
    enc = precompute.load_encoders(request.getfixturevalue("toy_autoencoder"), "", "")
    precompute.run(toy_train, data, enc, frames=True, log=lambda msg: None)
    c.model.update(LATENT_TINY)
  batch = next(pipeline.make_pipeline(c.data, data, batch_size=8).iterator())
  assert batch[input_space.of(c).frames_key].shape == (8, 2, 2, *input_space.of(c).frame_shape)
  one, one_losses = helpers.run_steps(c, helpers.mesh(1, 1, 1, 1, jax.devices()[:1]), batch, 3)
  eight, eight_losses = helpers.run_steps(c, helpers.mesh(2, 1, 2, 2, jax.devices()), batch, 3)
  np.testing.assert_allclose(eight_losses, one_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(eight["params"]), jax.tree.leaves(one["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert one_losses[2] != one_losses[1] != one_losses[0]


@pytest.mark.parametrize("keyframes", ["in_shot", "pairs"])
def test_keyframes_enter_clean_and_each_shot_gets_its_own_time(toy_train, monkeypatch, keyframes):
  c = _tiny_video(batch_size=2)
  c.model.video.keyframes = keyframes
  batch = next(pipeline.make_pipeline(c.data, toy_train, batch_size=2).iterator())
  seen = {}
  real = video.apply

  def spy(c_, model, kf, clips, t, t_kf, *args, **kw):
    seen.update(kf=kf, clips=clips, t=t, t_kf=t_kf)
    return real(c_, model, kf, clips, t, t_kf, *args, **kw)

  monkeypatch.setattr(video, "apply", spy)
  loss, _ = video.loss(c, keyframe.build(c), batch, jax.random.key(0))
  kf_clean, clips_clean = video.shot_tokens(c, batch)
  np.testing.assert_array_equal(seen["kf"], kf_clean)  # t = 0: the keyframes exactly, no noise
  t = np.asarray(seen["t"])
  assert t.shape == (2, 2) and (t > 0).all() and len(set(t.ravel())) == 4 and not np.asarray(seen["t_kf"]).any()
  assert np.abs(np.asarray(seen["clips"]) - clips_clean).mean() > 0.1  # the clips are noised
  assert float(loss) == pytest.approx(1.31333, rel=1e-4)  # recorded: the zero-initialised output layer's loss


@pytest.fixture(scope="module")
def random_video_model():
  """The tiny video model (3 frames per shot, patch_t 2) with every parameter random."""
  c = video_config.get_config("tiny")
  c.sample.num_steps = 3
  c = config_validation.load(c)
  state = nnx.state(keyframe.build(c))
  leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = treedef.unflatten([0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  return c, nnx.graphdef(keyframe.build(c)), params


def _keyframes(k):
  return np.random.RandomState(0).randint(0, 256, (k, 16, 32, 3)).astype(np.uint8)


@pytest.mark.parametrize("keyframes,attention", [("in_shot", "full"), ("in_shot", "causal"), ("pairs", "full")])
def test_keyframes_come_out_unchanged_and_one_shots_noise_changes_no_other_keyframe(random_video_model, keyframes,
                                                                                    attention):
  c, graphdef, params = random_video_model
  c = config_validation.replace(c, {"model.video.keyframes": keyframes, "model.video.shot_attention": attention})
  sampler = shot_sampler.ShotSampler(c, graphdef)
  kf, caps = _keyframes(2), ["a red circle walks left in the forest", "a blue square jumps"]
  a = sampler.shots(params, kf, caps, shot_seeds=[1, 2])
  b = sampler.shots(params, kf, caps, shot_seeds=[1, 3])  # shot 1's noise changes
  assert a.shape == (2, 3, 16, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a[:, 0], kf)  # the conditions are the first frames, bit for bit
  np.testing.assert_array_equal(b[:, 0], kf)
  assert np.abs(a[1, 1:].astype(int) - b[1, 1:]).mean() > 5  # shot 1 itself did change
  if attention == "causal":  # shot 0 sees only the keyframes and itself: entirely unchanged
    np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a, sampler.shots(params, kf, caps, shot_seeds=[1, 2]))  # reproducible


@pytest.mark.parametrize("captions", ["shot", "global"])
def test_global_captions_let_every_shot_read_every_caption(random_video_model, captions):
  """Under causal shot attention shot 0 cannot see shot 1, except through the tiled global caption."""
  c, graphdef, params = random_video_model
  c = config_validation.replace(c, {"model.video.shot_attention": "causal", "model.video.captions": captions})
  model = nnx.merge(graphdef, params)
  kf, clips = (jax.random.normal(jax.random.key(i), (1, 2, n, 96)) for i, n in ((0, 32), (1, 32)))  # 4x8 tokens

  def shot0(second_caption):
    tokens, masks = tokenizer.for_data(c.data)(["Mia, a large red circle, stands still.", second_caption])
    text = model.encode_text({"text_tokens": jnp.asarray(tokens)[None], "text_mask": jnp.asarray(masks)[None]})
    return np.asarray(video.velocity(c, model, kf, clips, jnp.full((1, 2), 0.5), jnp.zeros((1, 2)), text))[0, 0]

  changed = np.abs(shot0("Tom, a small blue square, jumps.") - shot0("Ava, a large green cross, walks away.")).max()
  assert (changed > 1e-3) == (captions == "global"), changed


def test_shot_sampler_checks_its_keyframes(random_video_model):
  c, graphdef, params = random_video_model
  sampler = shot_sampler.ShotSampler(c, graphdef)
  with pytest.raises(ValueError, match=r"expected uint8 \[2, 16, 32, 3\]"):
    sampler.shots(params, _keyframes(2).astype(np.float32), ["a", "b"])


@pytest.fixture(scope="module")
def whole_movie(tiny_run, tmp_path_factory):
  """The sample CLI's output folder for the tiny keyframe model and a tiny video model trained 2 steps."""
  c = video_config.get_config("tiny")
  c.update(batch_size=8, total_steps=2)
  video_run = str(tmp_path_factory.mktemp("tiny_video") / "run")
  helpers.train(c, video_run)
  out = tmp_path_factory.mktemp("movies")
  cmd = [sys.executable, "-m", "cinema_jax.sample", f"--workdir={tiny_run}", f"--video_workdir={video_run}",
         "--storylines=toy", f"--outdir={out}", "--max_shots=3", "--num_steps=2", "--fps=6", "--video_scale=2"]
  res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
  assert res.returncode == 0, res.stderr[-3000:]
  first = sorted(d for d in os.listdir(out) if not d.startswith(".") and os.path.isdir(out / d))[0]
  return out / first, video_run


@pytest.mark.xdist_group(name="whole_movie")  # one worker builds the fixture
def test_whole_movie_mp4s_have_exact_frames_and_rate_and_open_on_their_keyframes(whole_movie):
  whole_movie, _ = whole_movie
  m = json.loads((whole_movie / "manifest.json").read_text())
  assert m["shots"] == ["shot_000.mp4", "shot_001.mp4", "shot_002.mp4"] and m["frames_per_shot"] == 3
  keyframes = [np.asarray(Image.open(whole_movie / png)).astype(int) for png in m["keyframes"]]
  for k, name in enumerate(m["shots"]):
    assert movie.mp4_info(str(whole_movie / name)) == (3, 6.0, (32, 64))  # 16x32 frames, scale 2
    first = movie.read_mp4(str(whole_movie / name))[0, ::2, ::2].astype(int)
    own, other = (np.abs(first - keyframes[j]).mean() for j in (k, (k + 1) % 3))
    assert own < 12 and own < other / 3, (own, other)  # its keyframe opens the shot (H.264 is lossy)
  assert movie.mp4_info(str(whole_movie / "movie.mp4"))[:2] == (9, 6.0)  # the 3 shots in order
  html = (whole_movie / "movie.html").read_text()
  assert html.count("<video") == 4 and all(cap in html for cap in m["captions"][:1])


@pytest.mark.xdist_group(name="whole_movie")  # one worker builds the fixture
@pytest.mark.skipif(movie.find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_whole_movie_page_plays_every_video_in_headless_chromium(whole_movie):
  whole_movie, _ = whole_movie
  assert movie.render_html_status(str(whole_movie / "movie.html"), movie.find_chromium()) == "loaded 4/4"


def test_an_untrained_from_keyframe_model_holds_each_keyframe_still():
  """model.video.from_keyframe: the zero-initialised final layer predicts 'no change from the keyframe'."""
  c = video_config.get_config("tiny")
  c.model.video.from_keyframe = True
  c.objective.prediction = "x"
  c.sample.num_steps = 3
  model = keyframe.build(config_validation.load(c))
  sampler = shot_sampler.ShotSampler(config_validation.load(c), nnx.graphdef(model))
  kf = _keyframes(2)
  out = sampler.shots(nnx.to_pure_dict(nnx.state(model)), kf, ["a", "b"], seed=3)
  np.testing.assert_allclose(out, np.broadcast_to(kf[:, None], out.shape), atol=1)
  c.objective.prediction = "v"
  with pytest.raises(errors.ConfigError, match="needs config.objective.prediction='x'"):
    config_validation.load(c)


@pytest.mark.xdist_group(name="whole_movie")  # one worker builds the fixture
def test_video_benchmark_scores_the_model_against_holding_still_and_the_real_shots(whole_movie, tiny_run, tmp_path):
  _, video_run = whole_movie
  res = subprocess.run([sys.executable, "-m", "cinema_jax.evaluate_video", f"--video_workdir={video_run}",
                        f"--workdir={tiny_run}", f"--out={tmp_path}", "--max_storylines=1", "--max_shots=2",
                        "--num_steps=2"],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
  assert res.returncode == 0, res.stderr[-3000:]
  rows = {r["setting"]: r for r in json.loads((tmp_path / "report.json").read_text())["rows"]}
  assert list(rows) == ["video model, real keyframes", "video model, generated keyframes", "hold the keyframe still",
                        "real shots (reference)"]
  assert all(r["shots"] == 2 for r in rows.values())
  # What is rated follows from the scripts: a metric is null only where no shot gives it anything to rate
  report = json.loads((tmp_path / "report.json").read_text())
  story = jobs.read_storylines(report["storylines"])[0]
  scripts = benchmark.read_truth(report["storylines"])[story["movie_id"]]["shots"][:2]
  moving = any(ch["action"] in video_metrics.MOVING for s in scripts for ch in s["characters"])
  changes = any(np.ptp(toy_render.render_shot(s, 16, 32), axis=0).any() for s in scripts)
  assert moving and changes  # the fixture's shots have motion to rate, so no motion metric may be null
  still, real = rows["hold the keyframe still"], rows["real shots (reference)"]
  assert still["flicker"] == 0 and still["location_adherence"] == 1 and still["motion_match"] == 0
  assert still["motion_energy"] == 0 and real["motion_energy"] == 1
  for setting, row in rows.items():  # defined by the scripts for any model; tracking, for the reference rows
    rated = ("motion_match", "motion_energy", "location_adherence", "cast_adherence")
    rated += ("x_error", "jitter") if setting in ("hold the keyframe still", "real shots (reference)") else ()
    assert all(row[k] is not None for k in rated), (setting, row)
  assert "| video model, real keyframes | 2 |" in (tmp_path / "report.md").read_text()
