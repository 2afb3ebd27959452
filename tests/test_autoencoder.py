"""The toy autoencoder: FLUX's AutoencoderKL module trained by the framework, exported as diffusers lays it out."""

import json
import os
import re
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cinema_jax import encoders
from cinema_jax import errors
from cinema_jax.eval import reconstruction
from cinema_jax.models import vae
from cinema_jax.training import autoencoder
from configs import autoencoder as autoencoder_config
from configs import keyframe as keyframe_config
from data_pipelines import precompute
from data_pipelines import toy_render
from data_pipelines import toy_world

SMALL = vae.VAEConfig(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                      scaling_factor=0.7, shift_factor=0.2)


def test_chunked_kernel_gradient_equals_autodiff():
  model = vae.AutoencoderKL(SMALL, nnx.Rngs(0))
  chunked = vae.AutoencoderKL(vae.VAEConfig(**{**SMALL.__dict__, "kernel_grad_chunk": 2}), nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (5, 16, 32, 3), minval=-1, maxval=1)  # 5: a ragged last chunk

  def loss(m):
    return jnp.mean(m.decoder(m.encode(x)[0]) ** 2)

  (la, ga), (lb, gb) = nnx.value_and_grad(loss)(model), nnx.value_and_grad(loss)(chunked)
  np.testing.assert_allclose(lb, la, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


def test_saved_folder_loads_as_flux_vae_does(tmp_path):
  model = vae.AutoencoderKL(SMALL, nnx.Rngs(3))
  out = autoencoder.save(model, str(tmp_path / "vae"))
  assert sorted(os.listdir(out)) == ["config.json", autoencoder.WEIGHTS_FILE]
  cfg = json.load(open(os.path.join(out, "config.json")))
  assert (cfg["scaling_factor"], cfg["shift_factor"], cfg["latent_channels"]) == (0.7, 0.2, 4)
  loaded = encoders.load_vae(out)
  x = jax.random.uniform(jax.random.key(2), (2, 16, 32, 3), minval=-1, maxval=1)
  np.testing.assert_array_equal(loaded.latents(x), model.latents(x))
  z = model.latents(x)
  np.testing.assert_array_equal(loaded.decode(z), model.decode(z))
  autoencoder.save(model, out)  # over an existing folder: replaced whole
  assert sorted(os.listdir(tmp_path)) == ["vae"]


def test_latent_statistics_normalise():
  model = vae.AutoencoderKL(SMALL, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 16, 32, 3), dtype=np.uint8)
  shift, scale = autoencoder.latent_statistics(model, images, batch=5)
  cal = vae.AutoencoderKL(vae.VAEConfig(**{**SMALL.__dict__, "scaling_factor": scale, "shift_factor": shift}),
                          nnx.Rngs(0))
  z = np.asarray(cal.latents(jnp.asarray(images, jnp.float32) / 127.5 - 1))
  assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4


def test_edge_weights_mark_colour_edges():
  x = np.zeros((1, 8, 8, 3), np.float32)
  x[0, 3:5, 3:5] = 1.0  # a 2x2 sprite on a flat background
  w = np.asarray(autoencoder.edge_weights(jnp.asarray(x), 4.0))[0, ..., 0]
  assert w[0, 0] == 1.0 and w[7, 7] == 1.0  # far from the sprite
  assert (w[2:6, 2:6] == 5.0).all()  # the sprite and its ring


def test_corner_weights_mark_sprites_not_the_horizon():
  x = np.zeros((1, 12, 12, 3), np.float32)
  x[0, 8:] = 0.5  # a straight horizon: colour changes one way only
  x[0, 2:5, 2:5] = 1.0  # a 3x3 sprite in the sky
  w = np.asarray(autoencoder.corner_weights(jnp.asarray(x), 4.0))[0, ..., 0]
  assert (w[6:10] == 1.0).all()  # along the horizon
  assert w[1, 1] == w[5, 5] == w[3, 3] == 5.0  # the sprite's corners and the pixels beside both edges
  assert w[0, 10] == 1.0


def test_border_weights_mark_the_outer_ring():
  w = np.asarray(autoencoder.border_weights((2, 6, 8), 3.0))[0, ..., 0]
  assert w.shape == (6, 8)
  assert (w[0] == 4.0).all() and (w[-1] == 4.0).all() and (w[:, 0] == 4.0).all() and (w[:, -1] == 4.0).all()
  assert (w[1:-1, 1:-1] == 1.0).all()
  assert (np.asarray(autoencoder.border_weights((1, 6, 8), 0.0)) == 1.0).all()


def test_loss_is_weighted_l1_plus_l2_plus_gradient_plus_kl():
  c = autoencoder_config.get_config("tiny")
  a = c.model.autoencoder
  a.update(frames_per_shot=0, edge_weight=2.0, border_weight=3.0, l2_weight=5.0, gradient_weight=2.0, kl_weight=1e-3)
  model = autoencoder.build(c)
  frames = jax.random.uniform(jax.random.key(0), (1, 1, 2, 16, 32, 3), minval=-1, maxval=1)
  key = jax.random.key(1)
  total, aux = autoencoder.loss(c, model, {"frames": frames}, key)
  # the same sample by hand: the key that loss() uses for the posterior noise, then the weighted terms
  x = frames.reshape(-1, 16, 32, 3)
  mean, logvar = model.encode(x)
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.split(key)[1], mean.shape)
  e = model.decoder(z) - x
  w = autoencoder.edge_weights(x, 2.0) * autoencoder.border_weights(x.shape[:3], 3.0)
  l1, l2 = jnp.mean(w * jnp.abs(e)) / jnp.mean(w), jnp.mean(w * e ** 2) / jnp.mean(w)
  # pixel differences of the error: e[i+1] - e[i] down the rows and along the columns
  grad = 0.5 * (jnp.abs(e[:, 1:] - e[:, :-1]).mean() + jnp.abs(e[:, :, 1:] - e[:, :, :-1]).mean())
  np.testing.assert_allclose([aux["l1"], aux["l2"], aux["gradient"]], [l1, l2, grad], rtol=1e-5)
  np.testing.assert_allclose(total, l1 + 5.0 * l2 + 2.0 * grad + 1e-3 * aux["kl"], rtol=1e-6)
  assert float(grad) > 0.1 * float(l1)  # a random decoder's error is not smooth: the term is not vanishing


def test_config_errors_name_the_field():
  c = autoencoder_config.get_config("tiny")
  c.data.resolution = (17, 32)
  with pytest.raises(ValueError, match=r"config.data.resolution=\(17, 32\)"):
    autoencoder.validate(c)
  c = autoencoder_config.get_config("tiny")
  c.data.num_pairs = 2
  with pytest.raises(ValueError, match="num_pairs=1"):
    autoencoder.validate(c)
  with pytest.raises(ValueError, match="unknown variant 'big'"):
    autoencoder_config.get_config("big")


def test_judge_agreement_of_renders_and_of_a_blank():
  world = toy_world.WorldConfig()
  renders = np.stack([toy_render.render_shot(s, 32, 64)[0] for s in toy_world.make_movie(5, 0, world)["shots"][:6]])
  same = reconstruction.agreement(renders, renders)
  assert same["location"] == same["framing"] == same["characters"] == 1.0 and same["num_characters"] >= 6
  flat = np.broadcast_to(renders.mean(axis=(1, 2), keepdims=True).astype(np.uint8), renders.shape)
  assert reconstruction.agreement(renders, flat)["characters"] == 0.0


def test_reconstruction_cli_reads_an_autoencoder_folder_and_a_dataset(toy_train, toy_autoencoder, capsys):
  """python -m cinema_jax.eval.reconstruction: the judge's agreement on every frame of evenly spaced shots
  (a random autoencoder keeps no character); a missing folder is one line."""
  reconstruction.main([f"--vae={toy_autoencoder}", f"--data={toy_train}", "--frames=12"])
  out = capsys.readouterr().out.strip()
  m = re.fullmatch(r"12 frames, (\d+) characters: location ([\d.]+), framing ([\d.]+), characters ([\d.]+)", out)
  assert m and int(m[1]) > 0 and float(m[4]) < 0.5, out
  with pytest.raises(SystemExit, match="^error: .*nowhere"):
    reconstruction.main([f"--vae={toy_autoencoder}/nowhere", f"--data={toy_train}"])


def test_frames_per_shot_0_trains_on_every_frame_of_each_shot():
  batch = {"frames": jnp.arange(2 * 3 * 4 * 2 * 3, dtype=jnp.float32).reshape(2, 1, 3, 4, 2, 3)}
  every = autoencoder.batch_images(batch, 0)
  np.testing.assert_array_equal(every, batch["frames"].reshape(6, 4, 2, 3))
  some = autoencoder.batch_images(batch, 1, jax.random.key(0))
  assert some.shape == (2, 4, 2, 3)
  assert all(any((some[i] == every[3 * i + f]).all() for f in range(3)) for i in range(2))  # one of its own shot's


def test_train_cli_trains_and_exports(tmp_path):
  """configs/autoencoder.py:tiny through python -m cinema_jax.train: checkpoints, then workdir/vae."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  work = tmp_path / "ae"
  r = subprocess.run([sys.executable, "-m", "cinema_jax.train", "--config=configs/autoencoder.py:tiny",
                      f"--workdir={work}"], capture_output=True, text=True, env=env, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"precompute --vae={work / 'vae'}" in r.stdout
  frames = encoders.VAEFrames.load(str(work / "vae"))
  assert frames.downsample == 2 and frames.model.cfg.latent_channels == 4
  toy = [d for d in os.listdir(work / "data") if d.startswith("toy-")]
  images = autoencoder.calibration_frames(str(work / "data" / toy[0] / "train"))  # the frames export measured
  z = frames.encode(images)
  assert z.shape == (len(images), 8, 16, 4) and abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-3
  assert frames.decode(z).shape == images.shape


def test_a_toy_config_on_latents_prepares_them_trains_and_samples(tmp_path, toy_autoencoder):
  """configs/keyframe.py:tiny on the latents of a (random) toy autoencoder: the trainer pre-computes them
  (and says so), trains, and the sample command decodes its keyframes with the same autoencoder."""
  folder = toy_autoencoder
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  latent = ["--config.model.vae_downsample=2", "--config.model.image_channels=4", "--config.model.patch=4"]

  def train(workdir, *extra):
    return subprocess.run([sys.executable, "-m", "cinema_jax.train", "--config=configs/keyframe.py:tiny",
                           f"--workdir={workdir}", "--config.total_steps=2", *latent, *extra],
                          capture_output=True, text=True, env=env, timeout=600)

  r = train(tmp_path / "none")
  assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: config.data.path is empty")
  assert "configs/autoencoder.py:toy" in r.stderr
  r = train(tmp_path / "missing", f"--config.data.toy.autoencoder={tmp_path / 'nowhere'}")
  assert r.returncode != 0 and "no autoencoder there; train the toy autoencoder first" in r.stderr.splitlines()[-1]
  work = tmp_path / "kf"
  r = train(work, f"--config.data.toy.autoencoder={folder}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "pre-computing the toy world's latents with" in r.stderr
  out = tmp_path / "samples"
  r = subprocess.run([sys.executable, "-m", "cinema_jax.sample", f"--workdir={work}", "--storylines=toy",
                      f"--outdir={out}", "--max_shots=2", "--num_steps=2"], capture_output=True, text=True, env=env,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  (story,) = [p for p in sorted(os.listdir(out)) if p.startswith("000-")]
  import PIL.Image  # pylint: disable=import-outside-toplevel
  frame = np.asarray(PIL.Image.open(os.path.join(out, story, "keyframe_000.png")))
  assert frame.shape == (16, 32, 3)  # decoded by the toy autoencoder from 8x16 latents


def test_the_demo_without_its_autoencoder_stops_with_the_command_that_makes_it(tmp_path, monkeypatch):
  """configs/keyframe.py:demo reads runs/toy_autoencoder/vae: missing, one line names the training that
  writes exactly that folder (before any toy world is built)."""
  monkeypatch.chdir(tmp_path)
  c = keyframe_config.get_config("demo")
  with pytest.raises(errors.DataError) as e:
    precompute.train_path(c.data, str(tmp_path / "work"))
  assert str(e.value) == ("config.data.toy.autoencoder='runs/toy_autoencoder/vae': no autoencoder there; train the "
                          "toy autoencoder first: python -m cinema_jax.train --config=configs/autoencoder.py:toy "
                          "--workdir=runs/toy_autoencoder (it ends by writing runs/toy_autoencoder/vae)")
  assert not os.path.exists(tmp_path / "work")
