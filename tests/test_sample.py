"""Keyframe sampling: reproducible from the seed, causal in autoregressive mode, the CLI and its errors."""

import dataclasses
import json
import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import loading
from cinema_jax.models import keyframe
from cinema_jax.sampling import flow
from cinema_jax.sampling import jobs
from cinema_jax.sampling import keyframe_sampler
from cinema_jax.training import objective
from configs import keyframe as keyframe_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["Wide shot in the forest. Mia, a small red circle, jumps.", "Close shot in the forest. Mia stands still.",
            "Medium shot in the farm. Tom walks to the left.", "Wide shot in the farm. Mia comes closer."]


@pytest.fixture(scope="module")
def model():
  """The tiny model with every parameter random, so sampling is not trivially the noise."""
  c = config_validation.load(keyframe_config.get_config("tiny"))
  graphdef, state = nnx.split(keyframe.build(c))
  leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  return c, graphdef, params


def test_same_seed_same_keyframes(model):
  c, graphdef, params = model
  s = keyframe_sampler.Sampler(c, graphdef)
  a = s.keyframes(params, CAPTIONS, seed=3)
  assert a.shape == (4, 16, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, s.keyframes(params, CAPTIONS, seed=3))
  assert not np.array_equal(a, s.keyframes(params, CAPTIONS, seed=4))
  assert a.std() > 5  # not a flat image
  joint = s.keyframes(params, CAPTIONS[:3], seed=3, mode="joint")
  np.testing.assert_array_equal(joint, s.keyframes(params, CAPTIONS[:3], seed=3, mode="joint"))


def test_autoregressive_keyframes_do_not_depend_on_later_captions(model):
  c, graphdef, params = model
  s = keyframe_sampler.Sampler(c, graphdef)
  a = s.keyframes(params, CAPTIONS, seed=0)
  b = s.keyframes(params, CAPTIONS[:2] + ["Close shot in the desert. Ava jumps.", CAPTIONS[3]], seed=0)
  np.testing.assert_array_equal(a[:2], b[:2])
  assert not np.array_equal(a[2], b[2])
  # joint sampling is bidirectional: a later caption reaches earlier keyframes
  ja = s.keyframes(params, CAPTIONS[:3], seed=0, mode="joint")
  jb = s.keyframes(params, CAPTIONS[:2] + ["Close shot in the desert. Ava jumps."], seed=0, mode="joint")
  assert not np.array_equal(ja[0], jb[0])


def test_guidance_is_the_classifier_free_formula(model):
  """Against a plain Euler loop over the model: guidance 1 is the conditional pass, 0 the unconditional one
  (the new pair's caption dropped), and g in between and beyond v_u + g (v_c - v_u)."""
  c, graphdef, params = model
  s = keyframe_sampler.Sampler(c, graphdef)
  net = nnx.merge(graphdef, params)
  states, mask, pooled = net.encode_text({k: jnp.asarray(v[None]) for k, v in s.text(CAPTIONS[:1]).items()})
  times = flow.schedule(c.sample.num_steps, s.grid[0] * s.grid[1], c.objective.shift)
  x1 = jax.random.normal(jax.random.key(5), (1, 1, s.grid[0] * s.grid[1], 3 * c.model.patch ** 2))

  def euler(g):
    x = x1
    for i in range(c.sample.num_steps):
      t = jnp.full((1, 1), times[i])
      v = lambda st, m, pl: objective.velocity(net(x, t, st, m, pl, grid=s.grid), x, t, c.objective.prediction)
      v_c, v_u = v(states, mask, pooled), v(0 * states, mask & False, 0 * pooled)
      x = x + (times[i + 1] - times[i]) * (v_u + g * (v_c - v_u))
    return keyframe.unpatchify(x, c.model.patch, *s.frame_shape[:2])[0]

  for g in (1.0, 0.0, 3.0):
    got = s.frames_batch(params, [CAPTIONS[:1]], seeds=[5], mode="joint", guidance=g)[0]
    np.testing.assert_allclose(got, euler(g), rtol=1e-4, atol=1e-4, err_msg=f"guidance {g}")
  assert np.abs(euler(3.0) - euler(1.0)).mean() > 0.01  # the caption matters to this model


def test_a_sampler_keeps_the_settings_it_was_built_with(model):
  c, graphdef, params = model
  frames = lambda sampler: sampler.frames_batch(params, [CAPTIONS[:2]], seeds=[1])[0]  # float: not saturated
  s = keyframe_sampler.Sampler(c, graphdef)
  a = frames(s)
  compiled = keyframe_sampler.denoise._cache_size()  # pylint: disable=protected-access
  # an equal config (another object) shares the compiled programs: the cache keys on values
  same = config_validation.replace(c, {"sample.num_steps": c.sample.num_steps})
  assert same is not c and same == c and hash(same) == hash(c)
  np.testing.assert_array_equal(a, frames(keyframe_sampler.Sampler(same, graphdef)))
  assert keyframe_sampler.denoise._cache_size() == compiled  # pylint: disable=protected-access
  more = config_validation.replace(c, {"sample.num_steps": c.sample.num_steps + 2})
  assert np.abs(a - frames(keyframe_sampler.Sampler(more, graphdef))).max() > 1e-3
  np.testing.assert_array_equal(a, frames(s))
  with pytest.raises(dataclasses.FrozenInstanceError):  # nothing can change a config a sampler holds
    s.c.sample.num_steps = 1
  with pytest.raises(TypeError, match="takes a config_validation.Config"):  # nor a ConfigDict be given
    keyframe_sampler.Sampler(keyframe_config.get_config("tiny"), graphdef)


def test_schedule_runs_from_noise_to_data():
  t = flow.schedule(10, 128, shift=True)
  assert t.shape == (11,) and t[0] == 1.0 and t[-1] == 0.0 and (np.diff(t) < 0).all()
  np.testing.assert_allclose(flow.schedule(4, 128, shift=False), [1, 0.75, 0.5, 0.25, 0])


@pytest.mark.parametrize("content,message", [
    ("", "no storylines"),
    ("{not json\n", "line 1: not JSON"),
    ('{"title": "x", "captions": []}\n', 'line 1: expected {"title": ..., "captions": [non-empty strings]}'),
    ('{"title": "x", "captions": ["ok"]}\n[1, 2]\n', "line 2: expected"),
    (b'{"title": "x", "captions": ["ok"]}\n{"title": "\xff"}\n', "line 2: not UTF-8 text"),
    (None, "--storylines=.* is a folder; expected a file"),
])
def test_bad_storylines_files(tmp_path, content, message):
  path = tmp_path / "s.jsonl"
  if content is None:
    path.mkdir()
  elif isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  with pytest.raises(errors.DataError, match=message.replace("(", r"\(").replace("[", r"\[").replace("{", r"\{")):
    jobs.read_storylines(str(path))


def test_sample_cli_without_checkpoints_is_a_one_line_error(tmp_path):
  stories = tmp_path / "s.jsonl"
  stories.write_text(json.dumps({"title": "t", "captions": ["a"]}) + "\n")
  (tmp_path / "nothing").mkdir()  # a folder with no checkpoints (a missing one: tests/hostile.py)
  done = subprocess.run([sys.executable, "-m", "cinema_jax.sample", f"--workdir={tmp_path / 'nothing'}",
                         f"--storylines={stories}", f"--outdir={tmp_path / 'out'}"], cwd=REPO, capture_output=True,
                        text=True, check=False)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1].startswith("error: no checkpoints in ")


def test_guidance_distilled_models_take_the_scale_through_their_embedding():
  c = keyframe_config.get_config("tiny")
  c.model.guidance_embed = True
  c = config_validation.load(c)
  graphdef, state = nnx.split(keyframe.build(c))
  leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(treedef, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  s = keyframe_sampler.Sampler(c, graphdef)
  low = s.keyframes(params, CAPTIONS[:2], guidance=1.0)
  np.testing.assert_array_equal(low, s.keyframes(params, CAPTIONS[:2], guidance=1.0))
  assert not np.array_equal(low, s.keyframes(params, CAPTIONS[:2], guidance=4.0))


@pytest.mark.parametrize("flag,message", [("--num_steps=0", "flag --num_steps=0: 0 is not a positive integer"),
                                          ("--max_shots=-1", "flag --max_shots=-1: -1 is not a non-negative integer"),
                                          ("--guidance=-2", "flag --guidance=-2: -2.0 is not a non-negative number")])
def test_out_of_range_sampling_flags_are_one_line_errors(tmp_path, flag, message):
  done = subprocess.run([sys.executable, "-m", "cinema_jax.sample", f"--workdir={tmp_path}", "--storylines=toy",
                         f"--outdir={tmp_path / 'out'}", flag], cwd=REPO, capture_output=True, text=True, check=False,
                        timeout=300)
  assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == f"error: {message}", done.stderr[-2000:]
  assert not (tmp_path / "out").exists()


def test_an_outdir_that_is_a_file_is_refused_before_any_work(tmp_path):
  (tmp_path / "out").write_text("mine")
  done = subprocess.run([sys.executable, "-m", "cinema_jax.sample", f"--workdir={tmp_path}", "--storylines=toy",
                         f"--outdir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True, check=False,
                        timeout=300)
  assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
      f"error: --outdir={tmp_path / 'out'} is a file; expected a folder"), done.stderr[-2000:]
  assert (tmp_path / "out").read_text() == "mine"


def _sample_cli(workdir, outdir, *extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run([sys.executable, "-m", "cinema_jax.sample", f"--workdir={workdir}", "--storylines=toy",
                         f"--outdir={outdir}", "--max_shots=2", *extra], cwd=REPO, env=env, capture_output=True,
                        text=True, check=False, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  (story,) = [p for p in sorted(os.listdir(outdir)) if p.startswith("000-")]
  manifest = json.loads(open(os.path.join(outdir, story, "manifest.json")).read())
  assert manifest["keyframes"] == ["keyframe_000.png", "keyframe_001.png"] and manifest["checkpoint_step"] == 4
  return [np.asarray(__import__("PIL.Image").Image.open(os.path.join(outdir, story, k))) for k in manifest["keyframes"]]


def test_a_rerun_with_other_settings_is_refused(tiny_run, tmp_path):
  _sample_cli(tiny_run, tmp_path / "out")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run([sys.executable, "-m", "cinema_jax.sample", f"--workdir={tiny_run}", "--storylines=toy",
                         f"--outdir={tmp_path / 'out'}", "--max_shots=2", "--seed=7", "--num_steps=3"], cwd=REPO,
                        env=env, capture_output=True, text=True, check=False, timeout=600)
  assert done.returncode == 1, done.stderr[-3000:]
  assert done.stderr.strip().splitlines()[-1] == (
      f"error: --outdir={tmp_path / 'out'} holds storylines sampled with other settings: num_steps 2 (now 3), "
      "seed 0 (now 7); sample into another folder (or delete it)")
  _sample_cli(tiny_run, tmp_path / "out")  # the same settings: every storyline is already complete


def test_sample_cli_uses_the_ema_unless_asked_for_raw_parameters(tiny_run, tmp_path):
  ema = _sample_cli(tiny_run, tmp_path / "ema")
  raw = _sample_cli(tiny_run, tmp_path / "raw", "--raw_params")
  assert not all(np.array_equal(a, b) for a, b in zip(ema, raw))
  np.testing.assert_array_equal(ema[0], _sample_cli(tiny_run, tmp_path / "again")[0])


def test_context_window_sets_what_a_keyframe_remembers(model):
  c, graphdef, params = model
  other_first = ["Close shot in the desert. Ava jumps."] + CAPTIONS[1:]
  alone = keyframe_sampler.Sampler(c, graphdef, context_pairs=1)  # no memory: each shot from its caption
  a, b = alone.keyframes(params, CAPTIONS, seed=0), alone.keyframes(params, other_first, seed=0)
  np.testing.assert_array_equal(a[1:], b[1:])
  two = keyframe_sampler.Sampler(c, graphdef, context_pairs=2)  # keyframe k sees keyframe k-1 only
  a, b = two.keyframes(params, CAPTIONS, seed=0), two.keyframes(params, other_first, seed=0)
  assert not np.array_equal(a[1], b[1])
  # Window padding (8-slot buckets vs exactly 4 slots) does not change what comes out.
  wide = keyframe_sampler.Sampler(c, graphdef, context_pairs=10).keyframes(params, CAPTIONS, seed=0)
  exact = keyframe_sampler.Sampler(c, graphdef, context_pairs=4).keyframes(params, CAPTIONS, seed=0)
  assert np.abs(wide.astype(int) - exact.astype(int)).max() <= 1
  with pytest.raises(ValueError, match="context_pairs must be >= 1"):
    keyframe_sampler.Sampler(c, graphdef, context_pairs=-1)


def test_goldenmem_sampling_relevels_the_history(model):
  c, graphdef, params = model
  c = config_validation.replace(c, {"data.memory_levels": "goldenmem", "data.goldenmem.group_size": 1})
  s = keyframe_sampler.Sampler(c, graphdef)
  a = s.keyframes(params, CAPTIONS, seed=0)
  assert a.shape == (4, 16, 32, 3)
  np.testing.assert_array_equal(a, s.keyframes(params, CAPTIONS, seed=0))
  # The first keyframe has no history, so it is the plain sampler's; later ones see compressed context.
  plain = keyframe_sampler.Sampler(model[0], graphdef).keyframes(params, CAPTIONS, seed=0)
  np.testing.assert_array_equal(a[0], plain[0])
  assert not np.array_equal(a[2:], plain[2:])
  b = s.keyframes(params, ["Close shot in the desert. Ava jumps."] + CAPTIONS[1:], seed=0)
  assert not np.array_equal(a[1], b[1])  # the compressed history still reaches the new keyframe
  # the history resized on device instead of as uint8 frames
  c = config_validation.replace(c, {"data.goldenmem.resize": "latents"})
  on_device = keyframe_sampler.Sampler(c, graphdef).keyframes(params, CAPTIONS, seed=0)
  np.testing.assert_array_equal(on_device[0], a[0])
  assert np.abs(on_device.astype(int) - a.astype(int)).mean() < 8  # same history up to rounding


@pytest.mark.parametrize("group_size", [1, 3])
def test_goldenmem_history_is_resized_once_per_level_and_never_from_a_placeholder(model, group_size):
  c, graphdef, _ = model
  c = config_validation.replace(c, {"data.memory_levels": "goldenmem",
                                    "data.goldenmem.group_size": group_size})
  s = keyframe_sampler.Sampler(c, graphdef)
  plan = keyframe.memory_plan(c, 3)
  pixels = np.zeros((4, 16, 32, 3), np.float32)
  pixels[:2] = np.random.default_rng(0).uniform(-1, 1, (2, 16, 32, 3))
  memo = {}
  s._context(pixels[[0, 1, 2]], plan, memo, [0, 1, 2])  # pylint: disable=protected-access  (2: the placeholder)
  pixels[2] = np.random.default_rng(1).uniform(-1, 1, (16, 32, 3))  # keyframe 2 is generated
  got = s._context(pixels[[1, 2, 3]], plan, memo, [1, 2, 3])  # pylint: disable=protected-access
  fresh = s._context(pixels[[1, 2, 3]], plan, {}, [1, 2, 3])  # pylint: disable=protected-access
  for a, b in zip(got, fresh):
    np.testing.assert_array_equal(a, b)
  # Each generated frame resized once per level it takes: three levels, frames 0, 1 and then 1, 2
  # move down a level (4 entries); one full-resolution group, frames 0, 1, 2 at full size (3).
  assert len(memo) == (4 if group_size == 1 else 3)


def test_noisy_context_changes_only_what_has_context(model):
  c, graphdef, params = model
  c = config_validation.replace(c, {"sample.context_t": (0.001, 0.25)})
  noisy = keyframe_sampler.Sampler(c, graphdef).keyframes(params, CAPTIONS, seed=0)
  clean = keyframe_sampler.Sampler(model[0], graphdef).keyframes(params, CAPTIONS, seed=0)
  np.testing.assert_array_equal(noisy[0], clean[0])
  assert not np.array_equal(noisy[1:], clean[1:])


def test_text_retrieval_chooses_the_context(model):
  c, graphdef, params = model
  c = config_validation.replace(c, {"data.context_order": "text"})  # the tiny window holds 2 context pairs
  captions = ["Wide shot in the forest. Mia jumps.", "Close shot in the desert. Tom jumps.",
              "Medium shot in the farm. Ava stands still.", "Wide shot in the castle hall. Leo jumps.",
              "Close shot in the forest. Mia walks to the left."]
  a = keyframe_sampler.Sampler(c, graphdef).keyframes(params, captions, seed=0)
  plain = keyframe_sampler.Sampler(model[0], graphdef).keyframes(params, captions, seed=0)
  np.testing.assert_array_equal(a[:2], plain[:2])  # one or no context pair: nothing to choose
  assert not np.array_equal(a[4], plain[4])  # shot 4 sees shot 0 (same place and person), not shots 2-3
  np.testing.assert_array_equal(a, keyframe_sampler.Sampler(c, graphdef).keyframes(params, captions, seed=0))


def test_image_retrieval_embeds_each_generated_keyframe_and_chooses_by_it(model):
  from cinema_jax import retrieval, toy_clip  # pylint: disable=g-import-not-at-top
  c, graphdef, params = model
  c = config_validation.replace(c, {"data.context_order": "image"})
  with pytest.raises(ValueError, match="context_order=.image. .* needs an image/text embedding"):
    keyframe_sampler.Sampler(c, graphdef)
  rng = np.random.default_rng(0)
  clip = toy_clip.fit(rng.integers(0, 255, (16, 16, 32, 3), np.uint8),
                      [f"shot {i} in place {i % 3}" for i in range(16)], steps=20)

  class Spy:  # records what the sampler embeds and chooses
    dim = clip.dim
    embedded, chosen = [], []

    def texts(self, captions):
      return clip.texts(captions)

    def images(self, frames):
      self.embedded.append(frames.copy())
      return clip.images(frames)

  captions = ["Wide shot in the forest. Mia jumps.", "Close shot in the desert. Tom jumps.",
              "Medium shot in the farm. Ava stands still.", "Wide shot in the castle hall. Leo jumps.",
              "Close shot in the forest. Mia walks to the left."]
  spy = Spy()
  select = retrieval.select
  def spy_select(order, count, k, **kw):
    out = select(order, count, k, **kw)
    spy.chosen.append((count, out, kw.get("query"), kw.get("history")))
    return out
  retrieval.select = spy_select
  try:
    a = keyframe_sampler.Sampler(c, graphdef, clip=spy).keyframes(params, captions, seed=0)
  finally:
    retrieval.select = select
  assert len(spy.embedded) == len(captions)  # each keyframe once, as it is made
  for k, frame in enumerate(spy.embedded):
    np.testing.assert_array_equal(frame[0], a[k])
  for count, out, query, history in spy.chosen:  # the history is the generated keyframes' embeddings
    np.testing.assert_allclose(history, clip.images(a[:count]), atol=1e-6)
    np.testing.assert_allclose(query, clip.texts([captions[count]])[0], atol=1e-6)
    scores = history @ query
    assert sorted(out) == sorted(np.argsort(-scores, kind="stable")[:len(out)])
  plain = keyframe_sampler.Sampler(model[0], graphdef).keyframes(params, captions, seed=0)
  np.testing.assert_array_equal(a[:2], plain[:2])


def test_an_older_checkpoints_config_gains_fields_added_since(tiny_run):
  from cinema_jax import checkpoints  # pylint: disable=g-import-not-at-top
  defaults = keyframe_config.get_config("demo")  # another variant's values, plus a field the run never had
  with defaults.unlocked():
    defaults.data.added_later = 7
  c = checkpoints.saved_config(tiny_run, defaults)
  assert c.data.added_later == 7  # from today's defaults
  assert c.data.resolution == (16, 32) and c.batch_size == 8 and c.variant == "tiny"  # from the checkpoint
  assert config_validation.to_dict(loading.saved_config(tiny_run)) == checkpoints.saved_config(tiny_run).to_dict()


def _random_params(c, seed):
  graphdef, state = nnx.split(keyframe.build(c))
  leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(state))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return graphdef, jax.tree.unflatten(treedef, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("variant", ["padded_window", "goldenmem", "noisy_context", "distilled", "x_prediction"])
def test_kv_cached_denoising_equals_the_uncached(model, variant):
  c, graphdef, params = model
  new = np.array([False, True, False])  # pair 0 is context, 1 new, 2 a padding slot
  if variant == "goldenmem":
    c = config_validation.replace(c, {"data.memory_levels": "goldenmem", "data.goldenmem.group_size": 1})
    new = np.array([False, False, True])
  elif variant == "noisy_context":
    c = config_validation.replace(c, {"sample.context_t": (0.05, 0.25)})
  elif variant == "distilled":
    c = config_validation.replace(c, {"model.guidance_embed": True})
    graphdef, params = _random_params(c, 2)
  elif variant == "x_prediction":
    c = config_validation.replace(c, {"objective.prediction": "x"})
  s = keyframe_sampler.Sampler(c, graphdef)
  plan = keyframe.memory_plan(c, 3)
  grids = tuple(g.grid for g in plan) if plan else (s.grid,)
  sizes = [(g.num_pairs, g.grid[0] * g.grid[1]) for g in plan] if plan else [(3, s.grid[0] * s.grid[1])]
  rng = np.random.default_rng(0)
  xs = tuple(rng.uniform(-1, 1, (2, n, t, 3 * c.model.patch ** 2)).astype(np.float32) for n, t in sizes)
  text = {k: np.stack([v, v[::-1]]) for k, v in s.text(CAPTIONS[:3]).items()}
  keys = jax.numpy.stack([jax.random.key(0), jax.random.key(1)])
  run = lambda cached: s._denoise(params, xs, text, new, True, grids, cached, keys, 3.0)  # pylint: disable=protected-access
  plain, cached = run(False), run(True)
  for a, b in zip(plain, cached):
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)
  j = int(np.argmax(new)) - sum(x.shape[1] for x in xs[:-1])
  assert np.abs(plain[-1][:, j] - xs[-1][:, j]).max() > 0.1  # the new pair was denoised ...
  assert not np.allclose(plain[-1][0, j], plain[-1][1, j], atol=1e-2)  # ... per window


def test_kv_cached_keyframes_equal_the_uncached_and_batching_changes_nothing(model):
  c, graphdef, params = model
  s = keyframe_sampler.Sampler(c, graphdef)
  cached = s.keyframes(params, CAPTIONS, seed=5)
  c = config_validation.replace(c, {"sample.kv_cache": False})
  plain = keyframe_sampler.Sampler(c, graphdef).keyframes(params, CAPTIONS, seed=5)
  assert np.abs(cached.astype(int) - plain.astype(int)).max() <= 1  # fp32 rounding at most
  # Storylines sampled together (different lengths, split over 2 devices) are each what they are alone.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
  batch = s.keyframes_batch(params, [CAPTIONS, CAPTIONS[::-1][:3]], seeds=[5, 6],
                            sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  alone = s.keyframes(params, CAPTIONS[::-1][:3], seed=6)
  assert batch[0].shape == (4, 16, 32, 3) and batch[1].shape == (3, 16, 32, 3)
  assert np.abs(batch[0].astype(int) - cached.astype(int)).max() <= 1
  assert np.abs(batch[1].astype(int) - alone.astype(int)).max() <= 1
