"""The trainer: sharded step == unsharded step, bitwise resume across processes, non-finite guard,
start-up validation."""

import functools
import glob
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from cinema_jax import checkpoints
from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import input_space
from cinema_jax import sharding
from cinema_jax.models import keyframe
from cinema_jax.training import loop
from cinema_jax.training import train_step
from configs import keyframe as keyframe_config
from data_pipelines import pipeline
from data_pipelines import precompute

from conftest import LATENT_TINY
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**kw):
  c = keyframe_config.get_config("tiny")
  c.update(kw)
  return c


MESHES = {  # (data, fsdp, context, tensor) on the 8 fake devices
    "data": (8, 1, 1, 1), "fsdp": (1, 8, 1, 1), "tensor": (1, 1, 1, 8), "context": (1, 1, 8, 1),
    "mixed": (2, 1, 2, 2),
}


@functools.cache
def _case(memory: str, toy_train: str, latents: str = ""):
  """(config, batch, 1-device (state, losses)) of 3 steps of the tiny model on the shared toy data (as
  the latents of the dataset `latents`, when given)."""
  c = _tiny(batch_size=8)
  c.data.toy.num_frames = 2  # the shared toy fixture has 2 frames per shot
  c.data.memory_levels = memory
  c.data.goldenmem.group_size = 1  # 3 pairs at 3 levels: 1x2, 2x4 and 4x8 tokens
  if latents:
    c.model.update(LATENT_TINY)
    c.data.goldenmem.resize = "latents"  # on device, in the step
  groups = keyframe.pipeline_image_groups(c)
  assert memory == "none" or latents or groups == ((1, (4, 8)), (1, (8, 16)), (1, (16, 32)))
  batch = next(pipeline.make_pipeline(c.data, latents or toy_train, batch_size=8, image_groups=groups).iterator())
  assert any(k.startswith(input_space.of(c).image_key) for k in batch)  # image, or image_g0, ... by level
  return c, batch, helpers.run_steps(c, helpers.mesh(1, 1, 1, 1, jax.devices()[:1]), batch, 3)


@pytest.fixture(scope="module")
def toy_latents(toy_train, toy_autoencoder, tmp_path_factory) -> str:
  dst = str(tmp_path_factory.mktemp("latents") / "train")
  precompute.run(toy_train, dst, precompute.load_encoders(toy_autoencoder, "", ""), log=lambda msg: None)
  return dst


@pytest.mark.parametrize("memory,mesh", [("none", m) for m in MESHES] + [("goldenmem", "mixed")])
def test_sharded_steps_equal_the_unsharded_steps(toy_train, memory, mesh):
  c, batch, (one, one_losses) = _case(memory, toy_train)
  _check_sharded_equals_unsharded(c, batch, one, one_losses, mesh)


@pytest.mark.parametrize("memory", ["none", "goldenmem"])
def test_sharded_steps_on_toy_latents_equal_the_unsharded_steps(toy_train, toy_latents, memory):
  c, batch, (one, one_losses) = _case(memory, toy_train, toy_latents)
  _check_sharded_equals_unsharded(c, batch, one, one_losses, "mixed")


def _check_sharded_equals_unsharded(c, batch, one, one_losses, mesh):
  assert len(jax.devices()) == 8
  hlo = []
  eight, eight_losses = helpers.run_steps(c, helpers.mesh(*MESHES[mesh], jax.devices()), batch, 3, hlo)
  if mesh == "context":
    assert "collective-permute" in hlo[0]  # ring attention: key/value chunks travel around the ring
  qkv = eight["params"]["dit"]["double_blocks"]["img_attn"]["qkv"]["kernel"]
  if mesh == "mixed":  # the big parameters really are split over fsdp and tensor
    assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert qkv.addressable_shards[0].data.shape == (qkv.shape[0], qkv.shape[1], qkv.shape[2] // 2)
  if mesh == "fsdp":
    assert qkv.addressable_shards[0].data.shape == (qkv.shape[0], qkv.shape[1] // 8, qkv.shape[2])
  mu = eight["opt_state"][1][0].mu["dit"]["double_blocks"]["img_attn"]["qkv"]["kernel"]
  assert mu.sharding.spec == qkv.sharding.spec  # optimizer state follows its parameter
  np.testing.assert_allclose(eight_losses, one_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(eight["params"]), jax.tree.leaves(one["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert one_losses[2] != one_losses[1] != one_losses[0]  # the steps really changed the parameters


def test_offloaded_optimizer_state_stays_in_host_memory_and_trains_the_same(toy_train):
  c, batch, (one, one_losses) = _case("none", toy_train)
  c = c.copy_and_resolve_references()
  c.optimizer.offload = True
  state, losses = helpers.run_steps(c, helpers.mesh(*MESHES["mixed"], jax.devices()), batch, 3)
  mu = state["opt_state"][1][0].mu["dit"]["double_blocks"]["img_attn"]["qkv"]["kernel"]
  assert (mu.sharding.memory_kind == "pinned_host"
          and state["params"]["dit"]["img_in"]["kernel"].sharding.memory_kind == "device")
  np.testing.assert_allclose(losses, one_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(one)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_goldenmem_resizes_on_device_as_the_pipeline_does(toy_train):
  c = _tiny(batch_size=4)
  c.data.toy.num_frames = 2
  c.data.memory_levels = "goldenmem"
  c.data.goldenmem.group_size = 1
  piped = next(pipeline.make_pipeline(c.data, toy_train, batch_size=4,
                                      image_groups=keyframe.pipeline_image_groups(c)).iterator())
  full = next(pipeline.make_pipeline(c.data, toy_train, batch_size=4).iterator())
  tokens, grids = keyframe.image_tokens(c, piped)
  c.data.goldenmem.resize = "latents"  # the step resizes the full-resolution input itself
  assert keyframe.pipeline_image_groups(c) is None
  on_device, device_grids = keyframe.image_tokens(c, full)
  assert grids == device_grids == ((1, 2), (2, 4), (4, 8))
  for a, b in zip(tokens, on_device):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1.01 / 127.5)  # the pipeline's frames are rounded to uint8


def _train(workdir, steps, extra=(), config="configs/keyframe.py:tiny"):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
  # async saves, as real runs use: the resume test then also checks that what they commit is whole
  cmd = [sys.executable, "-m", "cinema_jax.train", f"--config={config}", f"--workdir={workdir}",
         f"--config.total_steps={steps}", "--config.checkpoint.every_steps=2", "--config.checkpoint.async_save=True",
         *extra]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=600)


def _final_state(workdir, step):
  c = checkpoints.saved_config(workdir)
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  setup = train_step.make_setup(c, mesh)
  mngr = checkpoints.manager(workdir, read_only=True)
  assert mngr.latest_step() == step
  with jax.set_mesh(mesh):
    return checkpoints.restore(mngr, step, setup.abstract_state)


@pytest.mark.parametrize("space", ["pixels", "latents"])
def test_restarted_run_is_bitwise_identical_to_an_uninterrupted_one(tmp_path, space, request):
  extra = []
  if space == "latents":  # the trainer pre-computes the toy world's latents with the autoencoder first
    extra = [f"--config.data.toy.autoencoder={request.getfixturevalue('toy_autoencoder')}",
             *(f"--config.model.{k}={v}" for k, v in LATENT_TINY.items())]
  whole = _train(tmp_path / "whole", 6, extra)
  assert whole.returncode == 0, whole.stderr[-3000:]
  assert ("pre-computing the toy world's latents" in whole.stderr) == (space == "latents")
  # a quiet console: the project's lines, no library INFO (Orbax's options, JAX's backend probing)
  info_from = {m.group(1) for m in re.finditer(r"^I\d{4} [\d:.]+ +\d+ (\S+):\d+\]", whole.stderr, re.M)}
  ours = {os.path.basename(p) for d in ("cinema_jax", "data_pipelines")
          for p in glob.glob(f"{REPO}/{d}/**/*.py", recursive=True)}
  assert "loop.py" in info_from and info_from <= ours, info_from - ours
  first = _train(tmp_path / "split", 6, ["--stop_at_step=3", *extra])  # saves at 2 and 3, then the process exits
  assert first.returncode == 0, first.stderr[-3000:]
  second = _train(tmp_path / "split", 6, extra)  # a new process resumes from step 3
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming from step 3" in second.stderr
  a, b = _final_state(tmp_path / "whole", 6), _final_state(tmp_path / "split", 6)
  assert int(a["step"]) == int(b["step"]) == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  if space == "pixels":  # a pixel-space run continued with a latent config: one line, what to pass instead
    other = _train(tmp_path / "whole", 8,
                   [f"--config.data.toy.autoencoder={request.getfixturevalue('toy_autoencoder')}",
                    *(f"--config.model.{k}={v}" for k, v in LATENT_TINY.items())])
    assert other.returncode != 0
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'whole'} holds a checkpoint of another model: model.image_channels=3 there, 4 in this "
        "config, model.patch=4 there, 2 in this config, model.vae_downsample=1 there, 2 in this config; train into "
        "a new --workdir, or continue that run with --config.model.image_channels=3 --config.model.patch=4 "
        "--config.model.vae_downsample=1 --config.data.toy.autoencoder=''")


def test_curriculum_resumes_across_a_stage_boundary(tmp_path):
  """1 pair for steps 1-3, then 3 pairs for 4-6: stopping at the boundary and inside stage 2 changes nothing."""
  stages = ["--config.curriculum.pairs=(1, 3)", "--config.curriculum.steps=(3, 3)"]
  whole = _train(tmp_path / "whole", 6, stages)
  assert whole.returncode == 0, whole.stderr[-3000:]
  assert "steps 1-3: 1 pairs" in whole.stderr and "steps 4-6: 3 pairs" in whole.stderr
  for stop in ("--stop_at_step=3", "--stop_at_step=4", None):
    part = _train(tmp_path / "split", 6, stages + ([stop] if stop else []))
    assert part.returncode == 0, part.stderr[-3000:]
  assert "resuming from step 4" in part.stderr
  a, b = _final_state(tmp_path / "whole", 6), _final_state(tmp_path / "split", 6)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  c = _tiny()
  c.curriculum.update(pairs=(1, 2), steps=(2, 2))
  with pytest.raises(errors.ConfigError, match=r"config.curriculum.pairs=\(1, 2\) ends at 2 pairs, "
                     r"config.data.num_pairs is 3"):
    config_validation.load(c)
  c.curriculum.update(pairs=(1, 3), steps=(2, 1))
  with pytest.raises(errors.ConfigError, match=r"config.curriculum.steps=\(2, 1\) sum to 3, config.total_steps is 4"):
    config_validation.load(c)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
  c = _tiny(batch_size=8, total_steps=2)  # 8 fake devices: data-parallel 8
  helpers.train(c, str(tmp_path))
  before = _final_state(tmp_path, 2)
  bad = _tiny(batch_size=8, total_steps=4)
  bad.optimizer.lr = float("nan")  # every update is NaN from step 3 on
  with pytest.raises(errors.TrainingError, match=r"non-finite update at step 3 .* The last checkpoint "
                     r"\(step 2\) is untouched \(a resume verifies it\)"):
    helpers.train(bad, str(tmp_path))
  after = _final_state(tmp_path, 2)
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.isfinite(np.asarray(x, np.float64)).all()


def test_startup_validation_is_one_line(tmp_path):
  three = _tiny()
  three.mesh.data = 3
  with pytest.raises(errors.MeshError, match=r"needs 3 devices, there are 8"):
    loop.train_and_evaluate(config_validation.load(three), str(tmp_path))
  with pytest.raises(errors.ConfigError, match=r"config.batch_size=2: not a multiple of the data-parallel size 8"):
    loop.train_and_evaluate(config_validation.load(_tiny()), str(tmp_path))
  with pytest.raises(errors.ConfigError, match=r"config.data.path is empty: variant 'flux_dev' reads"):
    config_validation.load(keyframe_config.get_config())
  bad = _tiny()
  bad.model.axes_dim = (4, 4, 4)
  with pytest.raises(errors.ConfigError, match=r"config.model.axes_dim=\(4, 4, 4\) sums to 12, the head dim is 16"):
    config_validation.load(bad)
  for section, value, expected in (
      ("sample", {"num_steps": 0}, r"config.sample.num_steps=0: expected an int >= 1$"),
      ("optimizer", {"ema_decay": 1.5}, r"config.optimizer.ema_decay=1.5: expected a number in \[0.0, 1.0\]$"),
      ("sample", {"guidance": -0.5}, r"config.sample.guidance=-0.5: expected a number >= 0$")):
    bad = _tiny()
    bad[section].update(value)
    with pytest.raises(errors.ConfigError, match=expected):
      config_validation.load(bad)
  with pytest.raises(errors.MeshError, match="at most one axis may be -1"):
    sharding.mesh_shape(config_validation.Mesh(data=-1, fsdp=-1, context=1, tensor=1), 8)
  assert sharding.mesh_shape(config_validation.Mesh(data=2, fsdp=-1, context=1, tensor=2), 8) == (2, 2, 1, 2)


@pytest.mark.parametrize("override,message", [
    ("--config.model.hiden=3", 'bad config override (--config.model.hiden=3): '),
    ("--config.batch_size=abc", "flag --config.batch_size=abc: invalid literal for int()"),
])
def test_bad_overrides_are_one_line_errors(tmp_path, override, message):
  done = subprocess.run([sys.executable, "-m", "cinema_jax.train", "--config=configs/keyframe.py:tiny",
                         f"--workdir={tmp_path}", override], cwd=REPO, capture_output=True, text=True, check=False)
  assert done.returncode == 1
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, done.stderr[-2000:]
  assert "Traceback" not in done.stderr


def test_bfloat16_compute_keeps_float32_parameters(toy_train):
  c, batch, (_, fp32_losses) = _case("none", toy_train)
  c = c.copy_and_resolve_references()
  c.model.dtype = "bfloat16"
  state, losses = helpers.run_steps(c, helpers.mesh(1, 1, 1, 1, jax.devices()[:1]), batch, 3)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state["params"]))
  assert all(np.isfinite(losses)) and losses[2] != losses[0]
  # steps 1-2 see the zero-initialised output layer (step 1's learning rate is 0 in warm-up): the same
  # loss in any precision. Step 3 runs a trained network: close to fp32, but not equal.
  assert abs(losses[2] - fp32_losses[2]) < 0.05 * fp32_losses[2]
  assert losses[2] != fp32_losses[2]


def test_the_loop_reads_only_prepared_inputs(tmp_path):
  c = _tiny(batch_size=8, total_steps=1)  # the toy world: built by the entry point's prepare step, not here
  with pytest.raises(errors.DataError, match=r"^no toy world at .*: the training command builds it \(python -m "
                     r"cinema_jax.train --config=\.\.\. --workdir="):
    loop.train_and_evaluate(config_validation.load(c), str(tmp_path))
  assert not (tmp_path / "data").exists()  # (test_logs_metrics_and_sample_sheets trains after preparing)

def test_logs_metrics_and_sample_sheets(tmp_path):
  c = _tiny(batch_size=8, total_steps=2)
  c.log.update(tensorboard=True, sample_every_steps=2)
  c.data.context_order = "image"  # and text-to-image retrieval: ToyCLIP is trained into the workdir
  last = helpers.train(c, str(tmp_path))
  # recorded: the zero-initialised output layer's loss
  assert last["step"] == 2 and last["loss"] == pytest.approx(1.33577, rel=1e-4)
  assert (tmp_path / "toy_clip.safetensors").exists()
  for key in ("grad_norm", "lr", "step_time", "examples_per_s", "tokens_per_s", "mfu"):
    assert last[key] > 0, key
  sheet = tmp_path / "samples" / "step_0000002.png"
  assert sheet.exists() and sheet.stat().st_size > 1000
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
  tags = set()
  data = events.read_bytes()
  pos = 0
  while pos < len(data):  # TFRecord framing: length (8), crc (4), payload, crc (4)
    n = int.from_bytes(data[pos:pos + 8], "little")
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
    tags |= {v.tag for v in event.summary.value}
    pos += n + 16
  assert {"train/loss", "train/mfu", "train/tokens_per_s", "samples/storyboard"} <= tags


def test_trains_without_ema_and_with_a_guidance_embedding(tmp_path):
  c = _tiny(batch_size=8, total_steps=2)
  c.optimizer.ema_decay = 0.0
  c.model.guidance_embed = True
  c.objective.guidance = 3.5
  last = helpers.train(c, str(tmp_path))
  assert last["loss"] == pytest.approx(1.34380, rel=1e-4)  # recorded: the zero-initialised output layer's loss
  state = _final_state(tmp_path, 2)
  assert not jax.tree.leaves(state["ema"])  # no EMA copy is kept or saved
  assert "guidance_in" in state["params"]["dit"]
  assert np.abs(np.asarray(state["params"]["dit"]["guidance_in"]["in_layer"]["kernel"])).sum() > 0
