"""--compile_only: the step compiles for a mesh on abstract inputs; the batch spec is the pipeline's."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cinema_jax import batch_format
from cinema_jax import errors
from cinema_jax.models import keyframe
from cinema_jax.training import aot
from configs import keyframe as keyframe_config
from data_pipelines import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("memory", ["none", "goldenmem"])
def test_batch_spec_is_what_the_pipeline_yields(toy_train, memory):
  c = keyframe_config.get_config("tiny")
  c.data.toy.num_frames = 2  # the shared toy fixture
  c.data.memory_levels = memory
  c.data.goldenmem.group_size = 1
  batch = next(pipeline.make_pipeline(c.data, toy_train, batch_size=c.batch_size,
                                      image_groups=keyframe.pipeline_image_groups(c)).iterator())
  assert {k: (v.shape, v.dtype) for k, v in batch_format.spec(c).items()} == {
      k: (v.shape, v.dtype) for k, v in batch.items()}
  batch_format.check(batch, batch_format.spec(c), toy_train)


def test_a_batch_unlike_the_spec_is_a_one_line_error():
  spec = batch_format.spec(keyframe_config.get_config("tiny"))
  batch = {k: np.zeros(v.shape, v.dtype) for k, v in spec.items()}
  batch_format.check({**batch, "image_embedding": np.zeros((2, 3))}, spec, "DATA")  # extra keys may come along
  short = dict(batch, text_mask=batch["text_mask"][:, :, :-1])
  b, p, L = spec["text_mask"].shape
  with pytest.raises(errors.DataError, match=rf"^DATA: batch\['text_mask'\] is bool\[{b}, {p}, {L - 1}\], the config "
                     rf"expects bool\[{b}, {p}, {L}\]$"):
    batch_format.check(short, spec, "DATA")
  with pytest.raises(errors.DataError, match=r"^DATA: batch\['movie'\] is float32"):
    batch_format.check(dict(batch, movie=batch["movie"].astype(np.float32)), spec, "DATA")
  with pytest.raises(errors.DataError, match=r"^DATA: the batch has no stride; the config expects"):
    batch_format.check({k: v for k, v in batch.items() if k != "stride"}, spec, "DATA")

def test_compile_only_compiles_flux_dev_for_a_pod_sized_mesh():
  # FLUX.1-dev size on 64 fake CPU devices (fsdp 16 x tensor 4): nothing is allocated, no data read
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  # at 128 text tokens a pair (flux_dev trains on FLUX.1-dev's 512): the same program, a quarter of the text
  r = subprocess.run([sys.executable, "-m", "cinema_jax.train", "--config=configs/keyframe.py", "--compile_only",
                      "--fake_devices=64", "--config.mesh.tensor=4", "--config.data.text_len=128"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "compiled the training step for 64 x cpu (mesh data=1 x fsdp=16 x context=1 x tensor=4)" in r.stdout
  assert re.search(r"parameters +11.9 G \(177 GiB of train state", r.stdout), r.stdout  # 11,901,408,320
  assert re.search(r"FLOPs per step +9.73 PFLOP \(analytic", r.stdout), r.stdout
  # the 177 GiB of fp32 params, Adam moments and EMA split 64 ways: ~2.8 GiB of arguments per device
  args = float(re.search(r"arguments ([0-9.]+) GiB", r.stdout).group(1))
  assert 177 / 64 <= args < 177 / 32, r.stdout
  assert re.search(r"temporaries [0-9.]+ GiB", r.stdout), r.stdout


def test_topology_names_are_checked_before_libtpu_sees_them():
  with pytest.raises(ValueError, match="v5e slices are 2D"):
    aot.topology_devices("v5e:4x4x4")  # libtpu would abort the process on this one
  with pytest.raises(ValueError, match="expected GENERATION:AxB"):
    aot.topology_devices("v5p-128")
