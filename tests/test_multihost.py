"""Multi-process training on loopback (launch/local.py): 2 processes x 2 devices train like 1 process x
4 devices, and the checkpoint resumes in 1 process on another mesh."""

import os
import re
import subprocess
import sys

import jax
import numpy as np

from cinema_jax import checkpoints
from cinema_jax import config_validation
from cinema_jax import sharding
from cinema_jax.training import train_step
from configs import keyframe as keyframe_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, "-m", "cinema_jax.train", "--config=configs/keyframe.py:tiny", "--config.total_steps=4",
         "--config.batch_size=4", "--config.log.every_steps=1", "--config.log.sample_every_steps=0",
         "--config.checkpoint.every_steps=3", "--config.checkpoint.async_save=False",
         "--config.data.toy.num_frames=2"]  # the shared toy fixture's


def _launch(processes: int, devices: int, data: str, workdir, *extra) -> str:
  cmd = [sys.executable, "-m", "launch.local", f"--processes={processes}", f"--devices_per_process={devices}",
         "--coordinator", "--", *TRAIN, f"--config.data.path={data}", f"--workdir={workdir}", *extra]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  return r.stderr


def _losses(log: str) -> dict[int, float]:
  return {int(s): float(x) for s, x in re.findall(r"step (\d+): loss ([0-9.]+)", log)}


def test_two_processes_train_like_one_and_resume_on_one_process_and_another_mesh(toy_train, tmp_path):
  one = _launch(1, 4, toy_train, tmp_path / "one")  # mesh data=4 in one process
  # data=4 as 2 hosts x 2 devices: mesh.dcn puts the host boundary on the data axis (a hybrid mesh)
  two = _launch(2, 2, toy_train, tmp_path / "two", "--config.mesh.data=-1", "--config.mesh.dcn.data=2",
                "--stop_at_step=3")
  ref, got = _losses(one), _losses(two)
  assert sorted(got) == [1, 2, 3] and sorted(ref) == [1, 2, 3, 4], (one[-2000:], two[-2000:])
  np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [ref[s] for s in (1, 2, 3)], rtol=1e-5)

  # Step 3's state restores onto another mesh (fsdp=2, tensor=2 in this process) ...
  c = keyframe_config.get_config("tiny")
  mesh = sharding.make_mesh(config_validation.Mesh(data=1, fsdp=2, context=1, tensor=2), jax.devices()[:4])
  setup = train_step.make_setup(c, mesh)
  states = [checkpoints.restore(checkpoints.manager(str(tmp_path / w), read_only=True), 3, setup.abstract_state)
            for w in ("one", "two")]
  qkv = states[1]["params"]["dit"]["double_blocks"]["img_attn"]["qkv"]["kernel"]
  assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  for a, b in zip(jax.tree.leaves(states[1]), jax.tree.leaves(states[0])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

  # ... and the run continues in one process on 2 devices with fsdp: step 4 as in the 1-process run.
  resumed = _launch(1, 2, toy_train, tmp_path / "two", "--config.mesh.data=1", "--config.mesh.fsdp=2")
  assert "resuming from step 3" in resumed and "saved by another number of processes" in resumed
  np.testing.assert_allclose(_losses(resumed)[4], ref[4], rtol=1e-5)
