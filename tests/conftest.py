"""Test setup: 8 fake CPU devices (before JAX initialises) and small shared toy datasets."""

import os
import tempfile

# Must happen before anything imports jax: sharded code is tested on 8 CPU devices.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA cache for this test run's processes (both pytest workers and the training and
# sampling subprocesses they start, which inherit it): many tests compile the same tiny step.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"cinema_jax_xla_{_RUN}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from data_pipelines import toy_movies  # pylint: disable=g-import-not-at-top,wrong-import-position
from data_pipelines import toy_world  # pylint: disable=g-import-not-at-top,wrong-import-position

# grain reads absl flags; under pytest nobody parses them.
flags.FLAGS.mark_as_parsed()

TINY_WORLD = toy_world.WorldConfig(height=16, width=32, num_frames=2, min_shots=8, max_shots=20)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> str:
  """A small toy-movie dataset (12 training movies, 2 storylines), built once per session."""
  out = str(tmp_path_factory.mktemp("toy") / "data")
  toy_movies.build(out, num_movies=12, seed=7, world=TINY_WORLD, num_storylines=2, num_shards=3)
  return out


@pytest.fixture(scope="session")
def toy_train(toy_root) -> str:
  return os.path.join(toy_root, "train")


def replace_record(dataset: str, shard: str, position: int, data: bytes) -> None:
  """Rewrites one record of a shard in place (to make corrupt data)."""
  path = os.path.join(dataset, shard)
  reader = array_record_module.ArrayRecordReader(path)
  raw = reader.read_all()
  reader.close()
  raw[position] = data
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for r in raw:
    writer.write(r)
  writer.close()


@pytest.fixture(name="replace_record")
def replace_record_fixture():
  return replace_record


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
  """A workdir of the tiny keyframe config trained 4 steps (EMA decay 0.5), built once per session."""
  from cinema_jax import trainer  # pylint: disable=g-import-not-at-top
  from configs import keyframe as keyframe_config  # pylint: disable=g-import-not-at-top
  c = keyframe_config.get_config("tiny")
  c.update(batch_size=8, total_steps=4)  # 8 fake devices in this process
  c.optimizer.ema_decay = 0.5
  workdir = str(tmp_path_factory.mktemp("tiny_run") / "run")
  trainer.train_and_evaluate(c, workdir)
  return workdir
