"""--compile_only: the step compiles for a mesh on abstract inputs; the batch spec is the pipeline's."""

import os
import re
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest

from cinema_jax import aot
from configs import keyframe as keyframe_config
from data_pipelines import pipeline
from cinema_jax.models import keyframe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("memory", ["none", "goldenmem"])
def test_batch_spec_is_what_the_pipeline_yields(toy_train, memory):
  c = keyframe_config.get_config("tiny")
  c.data.toy.num_frames = 2  # the shared toy fixture
  c.data.memory_levels = memory
  c.data.goldenmem.group_size = 1
  batch = next(pipeline.make_pipeline(c.data, toy_train, batch_size=c.batch_size,
                                      image_groups=keyframe.pipeline_image_groups(c)).iterator())
  assert {k: (v.shape, v.dtype) for k, v in aot.batch_spec(c).items()} == {
      k: (v.shape, v.dtype) for k, v in batch.items()}


def test_compile_only_command_on_a_pod_sized_fake_mesh():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  r = subprocess.run([sys.executable, "-m", "cinema_jax.train", "--config=configs/keyframe.py:tiny", "--compile_only",
                      "--fake_devices=64", "--config.batch_size=16", "--config.mesh.data=4", "--config.mesh.fsdp=-1",
                      "--config.mesh.tensor=2", "--config.mesh.context=2"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "compiled the training step for 64 x cpu (mesh data=4 x fsdp=4 x context=2 x tensor=2)" in r.stdout
  c = keyframe_config.get_config("tiny")
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(keyframe.abstract(c))))
  assert re.search(rf"parameters +{params / 1e3:.3g} K ", r.stdout), (params, r.stdout)
  assert re.search(r"FLOPs per step +[0-9.]+ [MGT]FLOP \(analytic", r.stdout), r.stdout
  # the train state (fp32 params, Adam's moments, EMA) is split 4 x 2 ways: arguments well under a device's share
  state = float(re.search(r"\(([0-9.]+) MiB of train state", r.stdout).group(1))
  args = re.search(r"arguments ([0-9.]+) (KiB|MiB)", r.stdout)
  assert float(args.group(1)) / (1024 if args.group(2) == "KiB" else 1) < state / 4, r.stdout
  assert re.search(r"temporaries [0-9.]+ [KMG]iB", r.stdout), r.stdout


def test_topology_names_are_checked_before_libtpu_sees_them():
  with pytest.raises(ValueError, match="v5e slices are 2D"):
    aot.topology_devices("v5e:4x4x4")  # libtpu would abort the process on this one
  with pytest.raises(ValueError, match="expected GENERATION:AxB"):
    aot.topology_devices("v5p-128")
