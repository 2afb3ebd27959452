"""data_pipelines/precompute.py: latents and text/image embeddings from small random FLUX-architecture
encoders (diffusers / transformers checkpoints made here), sharded over processes, resumable, in either
text convention, and the output trains a tiny FLUX-layout keyframe model end to end."""

import os

import numpy as np
import pytest

from cinema_jax import errors
from data_pipelines import pipeline
from data_pipelines import precompute
from data_pipelines import records

from conftest import FLUX_T5_LEN
from conftest import LATENT_TINY


@pytest.fixture(scope="module")
def encoders(flux_folders):
  f = flux_folders
  return precompute.load_encoders(f["vae"], f["text_encoder_2"], f["text_encoder"], f["clip"], t5_len=FLUX_T5_LEN)


def test_two_processes_resume_and_assemble_the_dataset(encoders, toy_train, tmp_path):
  dst = str(tmp_path / "latents")
  assert not precompute.run(toy_train, dst, encoders, process_id=0, num_processes=2)  # process 1 not done yet
  work = dst + ".work"
  done = {f: os.stat(os.path.join(work, f)).st_mtime_ns for f in os.listdir(work)}
  assert done and not os.path.exists(dst)
  assert not precompute.run(toy_train, dst, encoders, process_id=0, num_processes=2)  # a rerun redoes nothing
  assert {f: os.stat(os.path.join(work, f)).st_mtime_ns for f in os.listdir(work)} == done
  assert precompute.run(toy_train, dst, encoders, process_id=1, num_processes=2)  # the last one assembles
  assert not os.path.exists(work)

  src, out = records.ShotReader(toy_train), records.ShotReader(dst)
  assert len(out) == len(src) and out.index.latent_shape == [8, 16, 16]
  assert out.index.embeddings == {"t5": [-1, 32], "clip_pooled": [24], "image_embedding": [12], "text_embedding": [12]}
  assert out.index.info["text_convention"] == "flux" and out.index.info["text_len"] == FLUX_T5_LEN
  movie = src.index.movies[3]
  shot, pixels, _ = src.read_pixels(movie["records"][1], frames=False)
  got = out.read(out.index.movies[3]["records"][1])
  assert got.caption == shot.caption and got.keyframe_png is None
  np.testing.assert_allclose(got.keyframe_latent, encoders.latents(pixels[None])[0], rtol=1e-5, atol=1e-6)
  # FLUX's convention: T5 ran on the padded caption without a mask, and every position is kept
  states, mask = encoders.text.t5_states([shot.caption])
  assert mask.all() and got.t5.shape == (FLUX_T5_LEN, 32)
  np.testing.assert_allclose(got.t5, states[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.clip_pooled, encoders.text.pooled([shot.caption])[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.image_embedding, encoders.image_embeddings(pixels[None])[0], rtol=1e-5, atol=1e-6)
  # a whole CLIP model given: the caption in the same space, for retrieval by image
  np.testing.assert_allclose(got.text_embedding, encoders.retrieval.texts([shot.caption])[0], rtol=1e-5, atol=1e-6)


def test_the_masked_convention_keeps_each_captions_own_tokens(encoders):
  encoders.text.convention = "masked"
  try:
    captions = ["A short one.", "A longer caption: <Mia> at the lake."]
    states, _ = encoders.text_records(captions)
  finally:
    encoders.text.convention = "flux"
  ids, mask = encoders.text.t5_tokenizer(captions)
  assert [len(s) for s in states] == [int(m.sum()) for m in mask] and len(states[0]) < len(states[1]) < FLUX_T5_LEN
  flux_states, _ = encoders.text_records(captions)
  assert [len(s) for s in flux_states] == [FLUX_T5_LEN] * 2
  assert not np.allclose(flux_states[0][:len(states[0])], states[0], atol=1e-4)  # unmasked T5 sees the padding


@pytest.mark.xdist_group(name="flux_run")  # one worker builds the fixture
def test_precomputed_records_train_a_flux_layout_keyframe_model(flux_run, flux_config):
  # recorded: the zero-initialised output layer's loss (conftest.flux_run trained it)
  assert flux_run["metrics"]["loss"] == pytest.approx(1.24582, rel=1e-4)
  c = flux_config(path=flux_run["data"], text_convention="masked")
  # records made the FLUX way do not feed a model trained the masked way
  with pytest.raises(errors.ConfigError, match="text_convention='masked'.*pre-computed with 'flux'"):
    pipeline.make_pipeline(c.data, flux_run["data"], batch_size=8)


def test_the_toy_world_on_latents_keeps_its_captions_as_word_tokens(toy_train, tmp_path):
  """A toy autoencoder as --vae and no T5/CLIP: latents and frame latents, captions that the toy model's own
  text encoder tokenises (the toy world's tokenizer.json comes along), and a keyframe loss on them."""
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from cinema_jax.training import autoencoder  # pylint: disable=import-outside-toplevel
  from cinema_jax.models import keyframe  # pylint: disable=import-outside-toplevel
  from cinema_jax.models import vae  # pylint: disable=import-outside-toplevel
  from configs import keyframe as keyframe_config  # pylint: disable=import-outside-toplevel
  from data_pipelines import tokenizer  # pylint: disable=import-outside-toplevel
  ae = vae.AutoencoderKL(vae.VAEConfig(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                                       norm_num_groups=4, scaling_factor=0.5, shift_factor=0.1), nnx.Rngs(0))
  folder = autoencoder.save(ae, str(tmp_path / "vae"))
  with pytest.raises(ValueError, match="--t5 and --clip go together"):
    precompute.load_encoders(folder, "t5", "")
  dst = str(tmp_path / "latents")
  assert precompute.run(toy_train, dst, precompute.load_encoders(folder, "", ""), frames=True)
  out, src = records.ShotReader(dst), records.ShotReader(toy_train)
  assert out.index.latent_shape == [8, 16, 4] and out.index.num_frames == src.index.num_frames
  assert set(out.index.embeddings) == set() and "text_convention" not in out.index.info
  assert open(tokenizer.beside(dst)).read() == open(tokenizer.beside(toy_train)).read()
  got = out.read(out.index.movies[1]["records"][2])
  shot, pixels, frames = src.read_pixels(src.index.movies[1]["records"][2])
  assert got.caption == shot.caption and got.t5 is None
  np.testing.assert_allclose(got.frame_latents[0], got.keyframe_latent, atol=1e-6)  # frame 0 is the keyframe
  np.testing.assert_allclose(got.frame_latents, np.asarray(ae.latents(frames / 127.5 - 1.0)), rtol=1e-5, atol=1e-5)

  c = keyframe_config.get_config("tiny")
  c.data.update(path=dst, num_pairs=3)
  c.model.update(vae_downsample=2, image_channels=4, patch=4)  # the same 4x8 token grid
  batch = next(pipeline.make_pipeline(c.data, dst, batch_size=2).iterator())
  assert batch["latent"].shape == (2, 3, 8, 16, 4) and batch["text_tokens"].shape == (2, 3, c.data.text_len)
  loss, _ = keyframe.loss(c, keyframe.build(c), jax.tree.map(jax.numpy.asarray, batch), jax.random.key(0))
  assert float(loss) == pytest.approx(1.08071, rel=1e-4)  # recorded: the zero-initialised output layer's loss
  from cinema_jax.training import loop  # pylint: disable=import-outside-toplevel
  loop._check_latents(c, dst)  # pylint: disable=protected-access
  c.model.image_channels = 16  # FLUX's VAE: not these latents
  with pytest.raises(errors.ConfigError, match="holds 8x16 latents of 4 channels.*reads 8x16x16"):
    loop._check_latents(c, dst)  # pylint: disable=protected-access


def test_toy_latents_for_retrieval_by_image_carry_toyclips_embeddings(tmp_path, toy_autoencoder):
  """context_order "image" on the toy autoencoder's latents: the records carry ToyCLIP's embeddings of each
  pixel keyframe and caption (as CLIP's on real data), so the pipeline reads them instead of embedding."""
  from cinema_jax import toy_clip  # pylint: disable=import-outside-toplevel
  from configs import keyframe as keyframe_config  # pylint: disable=import-outside-toplevel
  from data_pipelines import toy_dataset  # pylint: disable=import-outside-toplevel
  c = keyframe_config.get_config("tiny")
  c.data.update(context_order="image")
  c.data.toy.autoencoder = toy_autoencoder
  c.model.update(LATENT_TINY)
  work = str(tmp_path / "work")
  dst = precompute.toy_latents(c.data, work, log=lambda msg: None)
  clip = toy_clip.load(os.path.join(work, toy_clip.FILENAME))  # trained on the pixel world on the way
  out, src = records.ShotReader(dst), records.ShotReader(toy_dataset.train_path(c.data, work))
  assert {"image_embedding", "text_embedding"} <= set(out.index.embeddings)
  r = 3
  got, (shot, pixels, _) = (out.read(out.index.movies[0]["records"][r]),
                            src.read_pixels(src.index.movies[0]["records"][r]))
  np.testing.assert_allclose(got.image_embedding, clip.images(pixels[None])[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.text_embedding, clip.texts([shot.caption])[0], rtol=1e-5, atol=1e-6)
  batch = next(pipeline.make_pipeline(c.data, dst, batch_size=2).iterator())  # no ToyCLIP file given
  assert batch["latent"].shape == (2, c.data.num_pairs, 8, 16, 4)


def test_a_rerun_with_other_settings_is_refused_and_overwrite_makes_it_again(toy_train, tmp_path):
  keep = precompute.Encoders(vae=None, text=None, clip_vision=None, retrieval=None)  # the records as they are
  run = lambda dst, vae, **kw: precompute.run(toy_train, str(dst), keep, settings={"vae": vae}, log=lambda m: None,
                                              **kw)
  dst = tmp_path / "out"
  assert run(dst, "A") and run(dst, "A")  # the second: complete, the same settings
  with pytest.raises(errors.DataError, match=r"^--dst=.*out holds latents made with other settings \(vae='A' "
                     r"there, 'B' now\); give another --dst, or --overwrite"):
    run(dst, "B")
  assert records.Index.load(str(dst)).info["precompute_settings"]["vae"] == "A"  # untouched
  assert run(dst, "B", overwrite=True)
  assert records.Index.load(str(dst)).info["precompute_settings"]["vae"] == "B"
  # half done by one process with A: another process with B would mix two encodings in one dataset
  half = tmp_path / "half"
  assert not run(half, "A", process_id=0, num_processes=2)
  with pytest.raises(errors.DataError, match=r"half.work holds movies encoded with other settings"):
    run(half, "B", process_id=1, num_processes=2)
  assert run(half, "A", process_id=1, num_processes=2)
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("mine")
  with pytest.raises(errors.DataError, match=r"holds other files \(notes.txt\), not a dataset this command wrote"):
    run(mine, "A", overwrite=True)
  assert (mine / "notes.txt").read_text() == "mine"
