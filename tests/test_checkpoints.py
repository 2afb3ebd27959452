"""Checkpoint integrity: checksums written with every save, verified by every restore; a damaged latest step is
moved aside and training resumes from the newest intact one, sampling refuses it."""

import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cinema_jax import checkpoints
from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import loading
from configs import keyframe as keyframe_config
from tests import helpers


def _tiny(total_steps):
  c = keyframe_config.get_config("tiny")
  c.update(batch_size=8, total_steps=total_steps)
  c.checkpoint.update(every_steps=2, keep=3)
  c.log.sample_every_steps = 0
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny run saved at steps 2 and 4, and the same run trained to 6 without a stop (the reference)."""
  root = tmp_path_factory.mktemp("integrity")
  helpers.train(_tiny(4), str(root / "four"))
  helpers.train(_tiny(6), str(root / "six"))
  return root / "four", helpers.state_at(str(root / "six"))


def _copy(run: pathlib.Path, tmp_path) -> pathlib.Path:
  out = tmp_path / "run"
  shutil.copytree(run, out)
  return out


def _damage(workdir: pathlib.Path, step: int, how: str) -> None:
  state = workdir / "checkpoints" / str(step) / "state"
  if how == "checksum":  # a change the restore itself cannot see: only the checksums can
    [path] = [p for p in (workdir / "checkpoints" / str(step) / "checksums").iterdir()
              if p.name != "commit_success.txt"]
    saved = json.loads(path.read_text())
    saved[sorted(saved)[0]][0] ^= 1
    path.write_text(json.dumps(saved))
  elif how == "flipped_bytes":  # 16 bytes in the middle of every data file (so also in what sampling reads)
    for data in (p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"):
      raw = bytearray(data.read_bytes())
      for i in range(len(raw) // 2, min(len(raw), len(raw) // 2 + 16)):
        raw[i] ^= 0xFF
      data.write_bytes(bytes(raw))
  elif how == "missing_manifest":
    (state / "manifest.ocdbt").unlink()


def test_the_fingerprint_sees_one_changed_element_and_not_the_mesh():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 8)), jnp.float32)
  tree = {"a": x, "b": x.astype(jnp.bfloat16), "c": jnp.arange(5), "d": x > 0, "k": jax.random.key(3)}
  base = checkpoints.fingerprint(tree)
  assert sorted(base) == ["a", "b", "c", "d", "k"]
  assert checkpoints.fingerprint(dict(tree, a=x.at[3, 4].set(jnp.nextafter(x[3, 4], 9.0)))) != base  # one ulp
  assert checkpoints.fingerprint(dict(tree, a=x[::-1])) ["a"] != base["a"]  # the same values elsewhere
  sharded = jax.device_put(x, jax.sharding.NamedSharding(helpers.mesh(8, 1, 1, 1, jax.devices()),
                                                         jax.sharding.PartitionSpec("data")))
  assert checkpoints.fingerprint(dict(tree, a=sharded)) == base  # exact integer sums: any layout, any mesh


@pytest.mark.parametrize("how", ["checksum", "flipped_bytes", "missing_manifest"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_training_resumes_from_the_previous(runs, tmp_path, how):
  four, six = runs
  workdir = _copy(four, tmp_path)
  _damage(workdir, 4, how)
  with pytest.raises(errors.CheckpointError, match=r"^checkpoint step 4 in .* (is damaged|cannot be read)"):
    loading.restore_params(str(workdir), loading.saved_config(str(workdir)))  # sampling refuses it
  lines = []
  mngr = checkpoints.manager(str(workdir))
  c = config_validation.load(_tiny(6))
  from cinema_jax import sharding  # pylint: disable=g-import-not-at-top
  from cinema_jax.training import train_step  # pylint: disable=g-import-not-at-top
  setup = train_step.make_setup(c, sharding.make_mesh(c.mesh, jax.devices()[:1]))
  step, _ = checkpoints.restore_newest_intact(mngr, setup.abstract_state, log=lines.append)
  mngr.close()
  assert step == 2 and len(lines) == 1 and "checkpoint step 4" in lines[0] and "damaged_checkpoints/4" in lines[0]
  assert (workdir / "damaged_checkpoints" / "4" / "state").is_dir()  # kept for a look, not deleted
  if how != "checksum":
    return  # (the resume itself, once)
  helpers.train(_tiny(6), str(workdir))  # resumes at 2, saves 4 and 6 again
  final = helpers.state_at(str(workdir))
  assert len(final) == len(six) and all(np.array_equal(a, b) for a, b in zip(final, six))


def test_every_checkpoint_damaged_stops_with_one_line(runs, tmp_path):
  workdir = _copy(runs[0], tmp_path)
  for step in (2, 4):
    _damage(workdir, step, "checksum")
  with pytest.raises(errors.TrainingError, match=r"no intact checkpoint in .*: steps \[4, 2\] are damaged"):
    helpers.train(_tiny(6), str(workdir))
  assert sorted(os.listdir(workdir / "damaged_checkpoints")) == ["2", "4"]


def test_the_sample_command_refuses_a_damaged_checkpoint_in_one_line(runs, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  workdir = _copy(runs[0], tmp_path)
  _damage(workdir, 4, "checksum")
  done = subprocess.run([sys.executable, "-m", "cinema_jax.sample", f"--workdir={workdir}", "--storylines=toy",
                         f"--outdir={tmp_path / 'out'}"], cwd=helpers.REPO, capture_output=True, text=True,
                        check=False, timeout=600)
  assert done.returncode == 1, done.stderr[-2000:]
  assert done.stderr.strip().splitlines()[-1].startswith("error: checkpoint step 4 in ")
  assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_sampling_reads_the_saved_dtype_verifies_it_and_then_casts(tiny_run):
  c = loading.saved_config(tiny_run)
  _, saved, _ = loading.restore_params(tiny_run, c)  # float32, as trained
  _, cast, step = loading.restore_params(tiny_run, c, dtype="bfloat16")  # as accelerators sample
  assert step == 4 and {x.dtype for x in jax.tree.leaves(cast)} == {jnp.dtype(jnp.bfloat16)}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16))),
               cast, saved)
