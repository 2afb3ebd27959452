"""Sampling FLUX-layout models: against diffusers' FluxPipeline (tiny random components made in the
session's flux_folders), from a training workdir that reads parameters only, from a converted FLUX
checkpoint through the sample command, and the VAE's tiled decode against diffusers'."""

import json
import os
import shutil
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from cinema_jax import encoders
from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import loading
from cinema_jax import retrieval
from cinema_jax.convert import flux
from cinema_jax.convert import mapping
from cinema_jax.sampling import keyframe_sampler

from conftest import FLUX_T5_LEN

PROMPT = "Wide shot at the lake shore. <Mia> walks left."  # shorter than the T5 length: FLUX pads it


def _rel(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _converted(folders, c) -> dict:
  """The MM-DiT parameters of flux_folders' diffusers transformer, as convert.flux imports them."""
  from cinema_jax.models import keyframe  # pylint: disable=g-import-not-at-top
  source = mapping.open_source(folders["transformer"])
  return {"dit": flux.from_diffusers({k: source.get(k) for k in source.keys()}, keyframe.configs(c)[0])}


def _text(folders, c):
  return encoders.FluxText.load(folders["text_encoder_2"], folders["text_encoder"], c.data.text_len,
                                c.data.text_convention)


def test_one_keyframe_equals_diffusers_flux_pipeline(flux_folders, flux_config):
  from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  f = flux_folders
  c = flux_config()
  c.sample.update(num_steps=6, guidance=3.5)
  c = config_validation.load(c, reads_data=False)
  text = _text(f, c)
  sampler = keyframe_sampler.Sampler(c, nnx.graphdef(loading.keyframe.abstract(c)), context_pairs=1, text=text,
                                     frames=encoders.VAEFrames.load(f["vae"]))
  params = _converted(f, c)
  ours = sampler.frames_batch(params, [[PROMPT]], seeds=[3])[0]  # [1, 8, 16, 16] latents
  assert int(text.t5_tokenizer([PROMPT])[1].sum()) < FLUX_T5_LEN  # the prompt is padded

  # The same noise: autoregressive keyframe 0 of seed 3 draws it from fold_in(key(3), 0).
  n_tok, chans = sampler.grid[0] * sampler.grid[1], 64
  noise = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(3), 0), (1, n_tok, chans)))
  tok = lambda folder, pad, n: transformers.PreTrainedTokenizerFast(
      tokenizer_file=os.path.join(f["root"], folder, "tokenizer.json"), pad_token=pad, model_max_length=n)
  pipe = FluxPipeline(
      scheduler=FlowMatchEulerDiscreteScheduler(  # FLUX.1-dev's scheduler_config.json
          base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, num_train_timesteps=1000,
          shift=3.0, use_dynamic_shifting=True),
      vae=AutoencoderKL.from_pretrained(f["vae"]).float().eval(),
      text_encoder=transformers.CLIPTextModel.from_pretrained(f["text_encoder"]).float().eval(),
      tokenizer=tok("tokenizer", "<|endoftext|>", 16),
      text_encoder_2=transformers.T5EncoderModel.from_pretrained(f["text_encoder_2"]).float().eval(),
      tokenizer_2=tok("tokenizer_2", "<pad>", FLUX_T5_LEN),
      transformer=FluxTransformer2DModel.from_pretrained(f["transformer"]).float().eval())
  final = {}
  keep = lambda p, i, t, kw: final.update(kw) or kw  # the latents after each step; the last are the final ones
  with torch.no_grad():
    want_image = pipe(PROMPT, height=16, width=32, num_inference_steps=6, guidance_scale=3.5,
                      max_sequence_length=FLUX_T5_LEN, latents=torch.from_numpy(noise.copy()), output_type="np",
                      callback_on_step_end=keep).images
  want_latents = final["latents"].numpy()
  got_latents = np.asarray(loading.keyframe.patchify(ours[None], 2))[0]
  assert _rel(got_latents, want_latents) < 1e-4, _rel(got_latents, want_latents)
  got_image = np.clip(sampler.frames.decode(ours) / 2 + 0.5, 0, 1)
  assert _rel(got_image, want_image) < 1e-4, _rel(got_image, want_image)
  assert np.abs(want_latents - noise).max() > 0.1  # it did denoise


@pytest.mark.xdist_group(name="flux_run")  # one worker builds the fixture
def test_a_flux_layout_workdir_samples_storylines_from_its_parameters_only(flux_run, flux_folders, monkeypatch):
  from cinema_jax import checkpoints, sharding  # pylint: disable=g-import-not-at-top
  from cinema_jax.training import train_step  # pylint: disable=g-import-not-at-top
  workdir, f = flux_run["workdir"], flux_folders
  c = loading.saved_config(workdir)
  assert c.data.text_convention == "flux" and c.model.text_encoder == "precomputed"
  mesh = sharding.make_mesh(c.mesh)
  with jax.set_mesh(mesh):  # the whole training state, for comparison
    full = checkpoints.restore(checkpoints.manager(workdir, read_only=True), 2,
                               train_step.make_setup(c, mesh).abstract_state)
  items = []
  restore = ocp.CheckpointManager.restore
  monkeypatch.setattr(ocp.CheckpointManager, "restore",  # what is read of the state (the checksums come too)
                      lambda self, step, args=None, **kw: ("state" in args and items.append(args["state"].item)
                                                           or restore(self, step, args=args, **kw)))
  monkeypatch.setattr(train_step, "make_setup", lambda *a: pytest.fail("sampling built the optimizer"))
  graphdef, params, step = loading.restore_params(workdir, c)
  assert step == 2 and [list(i) for i in items] == [["ema"]]  # neither the moments nor the raw copy is read
  jax.tree.map(np.testing.assert_array_equal, params, full["ema"])
  assert any(not np.allclose(e, p) for e, p in zip(jax.tree.leaves(full["ema"]), jax.tree.leaves(full["params"])))

  c = config_validation.replace(c, {"sample.encoders.vae": f["vae"], "sample.encoders.t5": f["text_encoder_2"],
                                    "sample.encoders.clip": f["text_encoder"],
                                    "sample.encoders.retrieval_clip": f["clip"],
                                    # retrieval by CLIP: the new caption against each generated keyframe
                                    "data.context_order": "image"})
  text, frames = loading.encoders_for(c)
  report = loading.memory_report(params, text, frames)
  assert all(f"{name} 0.00 GiB" in report for name in ("transformer", "T5", "CLIP", "VAE")), report
  clip = loading.retrieval_clip(c)
  assert isinstance(clip, encoders.ClipEmbedding)
  sampler = keyframe_sampler.Sampler(c, graphdef, text=text, frames=frames, clip=clip)
  seen = []
  select = retrieval.select
  monkeypatch.setattr(retrieval, "select", lambda *a, **kw: seen.append(kw) or select(*a, **kw))
  captions = ["Wide shot at the lake shore. <Mia> walks left.", "Close shot. <Mia> jumps.", "<Mia> walks away."]
  frames = sampler.frames_batch(params, [captions], seeds=[1])[0]
  keyframes = sampler.decode(frames)
  assert frames.shape == (3, 8, 16, 16) and keyframes.shape == (3, 16, 32, 3) and keyframes.dtype == np.uint8
  np.testing.assert_allclose(seen[2]["history"], clip.images(keyframes[:2]), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(seen[2]["query"], clip.texts(captions[2:])[0], rtol=1e-4, atol=1e-5)
  again = sampler.frames_batch(params, [captions[:2] + ["A different third caption."]], seeds=[1])[0]
  np.testing.assert_array_equal(again[:2], frames[:2])  # autoregressive: later captions change nothing before
  assert np.abs(again[2] - frames[2]).max() > 1e-4  # the caption steers its keyframe
  with pytest.raises(ValueError, match="makes VAE latents: give the autoencoder folder"):
    loading.encoders_for(config_validation.replace(c, {"sample.encoders.vae": ""}))


@pytest.mark.xdist_group(name="flux_run")  # one worker builds the fixture
def test_the_sample_command_runs_a_converted_flux_checkpoint(flux_run, flux_folders, tmp_path):
  f = flux_folders
  overrides = ["--config.data.resolution=(16, 32)", f"--config.data.text_len={FLUX_T5_LEN}",
               "--config.model.hidden=32", "--config.model.num_heads=2", "--config.model.depth_double=1",
               "--config.model.depth_single=1", "--config.model.axes_dim=(4, 6, 6)", "--config.model.vae_downsample=2",
               "--config.model.context_dim=32", "--config.model.vec_dim=24", "--config.model.dtype=float32",
               "--config.model.attention=xla", "--config.mesh.data=-1", "--config.mesh.fsdp=1",
               "--config.sample.num_steps=3"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  stories = tmp_path / "stories.jsonl"
  stories.write_text(json.dumps({"title": "lake", "captions": [PROMPT, "Close shot. <Mia> jumps."]}) + "\n")
  sample = [sys.executable, "-m", "cinema_jax.sample", f"--flux={flux_run['converted']}",
            "--config=configs/keyframe.py", *overrides, f"--vae={f['vae']}", f"--t5={f['text_encoder_2']}",
            f"--clip={f['text_encoder']}", f"--storylines={stories}", f"--outdir={tmp_path / 'out'}"]
  out = subprocess.run(sample, capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "parameters per device: transformer" in out.stdout and "VAE" in out.stdout
  folder = tmp_path / "out" / "000-lake"
  manifest = json.loads((folder / "manifest.json").read_text())
  assert manifest["context_pairs"] == 1 and manifest["flux"] == flux_run["converted"]
  assert sorted(p for p in os.listdir(folder) if p.startswith("keyframe")) == ["keyframe_000.png", "keyframe_001.png"]


def test_tiled_vae_decode_equals_diffusers_tiled_decode(flux_folders):
  from diffusers import AutoencoderKL  # pylint: disable=g-import-not-at-top
  ref = AutoencoderKL.from_pretrained(flux_folders["vae"]).float().eval()
  latents = np.random.default_rng(0).standard_normal((1, 10, 14, 16)).astype(np.float32)
  frames = encoders.VAEFrames.load(flux_folders["vae"], tile=4)
  ref.enable_tiling()  # tiles of 4 latent pixels, as ours
  ref.tile_sample_min_size, ref.tile_latent_min_size, ref.tile_overlap_factor = 8, 4, 0.25
  cfg = frames.model.cfg
  z = torch.from_numpy(latents.transpose(0, 3, 1, 2) / cfg.scaling_factor + cfg.shift_factor)
  with torch.no_grad():
    want = ref.decode(z).sample.numpy().transpose(0, 2, 3, 1)
  got = frames.decode(latents)
  assert got.shape == want.shape == (1, 20, 28, 3)
  assert _rel(got, want) < 1e-5, _rel(got, want)
  whole = encoders.VAEFrames(frames.model).decode(latents)  # GroupNorm sees each tile alone: tiling is not exact
  assert _rel(got, whole) > 1e-3


def test_encoders_sharded_over_the_mesh_or_on_the_host_give_the_same_states(flux_folders, flux_config):
  from cinema_jax import sharding  # pylint: disable=g-import-not-at-top
  c = flux_config()
  captions = [PROMPT, "Close shot. <Mia> jumps."]
  alone = _text(flux_folders, c)(captions)
  mesh = sharding.make_mesh(c.mesh)
  sharded = encoders.FluxText.load(flux_folders["text_encoder_2"], flux_folders["text_encoder"], c.data.text_len,
                                   mesh=mesh)
  emb = sharded.t5.shared.embedding.get_value()
  assert len(emb.sharding.device_set) == 8 and emb.addressable_shards[0].data.size == emb.size // 8
  host = encoders.FluxText.load(flux_folders["text_encoder_2"], flux_folders["text_encoder"], c.data.text_len,
                                mesh=mesh, t5_on_host=True)
  assert host.t5.shared.embedding.get_value().devices() == {jax.devices("cpu")[0]}
  for text in (sharded, host):
    got = text(captions)
    for k in alone:
      np.testing.assert_allclose(got[k], alone[k], rtol=1e-5, atol=1e-6)


def test_clip_embeddings_match_transformers_and_embed_a_wide_frame_as_its_two_halves(flux_folders):
  import transformers  # pylint: disable=g-import-not-at-top
  ref = transformers.CLIPModel.from_pretrained(flux_folders["clip"]).float().eval()
  ours = encoders.ClipEmbedding.load(flux_folders["clip"])
  captions = [PROMPT, "Close shot. <Mia> jumps."]
  ids, _ = ours.text_tokenizer(captions)
  frames = np.random.default_rng(0).integers(0, 256, (2, 16, 32, 3), np.uint8)  # 2:1, as keyframes are
  halves = np.concatenate([frames[:, :, :16], frames[:, :, 16:]]).astype(np.float32) / 255.0  # 16 px: no resize
  pixels = (halves - encoders.CLIP_MEAN) / encoders.CLIP_STD
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  with torch.no_grad():
    text = ref.get_text_features(input_ids=torch.from_numpy(ids.astype(np.int64)))
    image = ref.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
  text = getattr(text, "pooler_output", text).numpy()
  image = getattr(image, "pooler_output", image).numpy()
  np.testing.assert_allclose(ours.texts(captions), unit(text), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours.images(frames), unit(image[:2] + image[2:]), rtol=1e-4, atol=1e-5)


@pytest.mark.xdist_group(name="flux_run")  # one worker builds the fixture
def test_training_windows_retrieve_context_by_the_records_clip_embeddings(flux_run, flux_config, toy_train):
  from data_pipelines import pipeline, records  # pylint: disable=g-import-not-at-top
  c = flux_config(path=flux_run["data"], context_order="image", num_pairs=4)
  reader = records.ShotReader(flux_run["data"])
  assert {"image_embedding", "text_embedding"} <= set(reader.index.embeddings)  # precompute wrote both
  p = pipeline.make_pipeline(c.data, flux_run["data"], batch_size=8)
  batch = next(iter(p.dataset))
  for movie, shots in zip(batch["movie"], batch["shot_index"]):
    recs = [reader.read(reader.index.movies[movie]["records"][k]) for k in sorted(shots)]
    want = retrieval.select("image", 3, 3, query=recs[-1].text_embedding,
                            history=np.stack([r.image_embedding for r in recs[:-1]]))
    np.testing.assert_array_equal(shots, np.array(sorted(shots))[np.concatenate([want, [3]])])
  with pytest.raises(errors.ConfigError, match="holds no CLIP image and caption embeddings"):
    pipeline.make_pipeline(c.data, toy_train, batch_size=8)  # pixel records: no CLIP embeddings, no ToyCLIP given


@pytest.mark.xdist_group(name="flux_run")  # one worker builds the fixture
def test_a_latent_video_model_trains_on_frame_latents_and_makes_a_movie(flux_run, flux_folders, tmp_path):
  from cinema_jax.sampling import jobs  # pylint: disable=g-import-not-at-top
  from cinema_jax.training import loop  # pylint: disable=g-import-not-at-top
  from configs import video as video_config  # pylint: disable=g-import-not-at-top
  from data_pipelines import pipeline, records  # pylint: disable=g-import-not-at-top
  f = flux_folders
  assert records.ShotReader(flux_run["data"]).index.num_frames == 2  # precompute --frames: [2, 8, 16, 16] a shot
  c = video_config.get_config("paper")  # the paper's layout (latents, T5/CLIP, guidance embedding), tiny
  c.data.update(path=flux_run["data"], resolution=(16, 32), num_pairs=2, text_len=FLUX_T5_LEN)
  c.model.update(hidden=32, num_heads=2, depth_double=1, depth_single=1, axes_dim=(4, 6, 6), vae_downsample=2,
                 context_dim=32, vec_dim=24, dtype="float32", remat="none", attention="xla")
  c.model.video.update(num_frames=2, patch_t=1, shot_gap=1)
  c.update(total_steps=2, batch_size=8)
  c.mesh.update(data=-1, fsdp=1)
  c.checkpoint.update(async_save=False)
  c.log.update(every_steps=1, tensorboard=False)
  c.sample.update(num_steps=2, param_dtype="float32")
  metrics = loop.train_and_evaluate(config_validation.load(c), str(tmp_path / "video"))
  assert metrics["loss"] == pytest.approx(1.01593, rel=1e-4)  # recorded: the zero-initialised output layer's loss
  shots_fn, info, _ = jobs.video_stage(str(tmp_path / "video"), (16, 32), encoder_flags={
      "vae": f["vae"], "t5": f["text_encoder_2"], "clip": f["text_encoder"]})
  captions = [PROMPT, "Close shot. <Mia> jumps.", "<Mia> walks away."]  # two windows of 2 shots
  keyframes = np.random.default_rng(0).integers(0, 256, (3, 16, 32, 3), np.uint8)
  shots = shots_fn(keyframes, captions, 0)
  assert shots.shape == (3, 2, 16, 32, 3) and info["video_checkpoint_step"] == 2
  np.testing.assert_array_equal(shots[:, 0], keyframes)  # each shot opens on its keyframe
  manifest = jobs.save_storyline(str(tmp_path / "movies"), 0, {"title": "lake"}, keyframes, captions,
                                 shots=shots, video={"fps": 8.0, "scale": 1})
  assert os.path.exists(tmp_path / "movies" / manifest["dir"] / "movie.mp4")
  old = tmp_path / "schema1"  # a latent dataset from before frame latents: a one-line error says how to convert
  shutil.copytree(flux_run["data"], old)
  index = json.loads((old / records.INDEX_FILE).read_text())
  (old / records.INDEX_FILE).write_text(json.dumps({**index, "schema": 1, "num_frames": 0}))
  with pytest.raises(errors.ConfigError, match="stores no per-frame latents.*precompute --src=PIXELS"):
    pipeline.make_pipeline(c.data, str(old), batch_size=8)
