"""The tfds view of shot records: tfds.data_source gives what records.ShotReader gives, record for record."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cinema_jax import errors
from data_pipelines import records
from data_pipelines import tfds_builder
from data_pipelines import toy_dataset
from data_pipelines import toy_world

WORLD = toy_world.WorldConfig(height=16, width=32, num_frames=2, min_shots=8, max_shots=10)


def _toy(out, seed=0, world=WORLD):
  toy_dataset.build(str(out), num_movies=3, seed=seed, world=world, num_storylines=2, num_shards=2,
                    overwrite=True)
  return str(out)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tfds")
  root, data_dir = _toy(tmp / "toy"), str(tmp / "tfds")
  return root, data_dir, tfds_builder.prepare(root, data_dir)


def _assert_source_equals_reader(source, reader):
  assert len(source) == len(reader)
  for i in range(len(reader)):
    ex = source[i]
    shot, keyframe, frames = reader.read_pixels(i)
    assert ex["record"] == i
    assert (ex["movie_id"].decode(), ex["shot_index"], ex["caption"].decode()) == (
        shot.movie_id, shot.shot_index, shot.caption)
    assert ex["keyframe"].dtype == np.uint8 and ex["frames"].dtype == np.uint8
    np.testing.assert_array_equal(ex["keyframe"], keyframe)
    np.testing.assert_array_equal(ex["frames"], frames)
    assert json.loads(ex["meta"]) == shot.meta


def test_data_source_equals_reader(prepared):
  root, data_dir, builder = prepared
  assert set(builder.info.splits) == {"train", "eval"}
  for split in ("train", "eval"):
    reader = records.ShotReader(os.path.join(root, split))
    assert reader.index.num_frames == 2 and len(reader.index.shards) == (2 if split == "train" else 1)
    _assert_source_equals_reader(tfds.data_source(tfds_builder.NAME, data_dir=data_dir, split=split), reader)
    _assert_source_equals_reader(builder.as_data_source(split), reader)


def test_fresh_process_reads_after_import(prepared):
  root, data_dir, _ = prepared
  script = (
      "import hashlib, json, sys\n"
      "import tensorflow_datasets as tfds\n"
      "import data_pipelines.tfds_builder\n"
      f"source = tfds.data_source('shot_records', data_dir={data_dir!r}, split='eval')\n"
      "digest = lambda x: hashlib.sha256(x.tobytes()).hexdigest()\n"
      "rows = [[ex['movie_id'].decode(), ex['record'], digest(ex['keyframe']), digest(ex['frames'])]\n"
      "        for ex in (source[i] for i in range(len(source)))]\n"
      f"builder = type(tfds.builder('shot_records', data_dir={data_dir!r})).__name__\n"
      "print(json.dumps({'rows': rows, 'builder': builder, 'tensorflow': 'tensorflow' in sys.modules}))\n")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["builder"] == "ShotRecords"  # the import registered the class (not tfds's read-only fallback)
  assert not got["tensorflow"]  # decoding must not have pulled in TensorFlow
  reader = records.ShotReader(os.path.join(root, "eval"))
  want = []
  for i in range(len(reader)):
    shot, keyframe, frames = reader.read_pixels(i)
    want.append([shot.movie_id, i, hashlib.sha256(keyframe.tobytes()).hexdigest(),
                 hashlib.sha256(frames.tobytes()).hexdigest()])
  assert len(want) > 0 and got["rows"] == want


def test_prepare_reuses_copy_and_rebuilds_when_records_change(tmp_path):
  root, data_dir = _toy(tmp_path / "toy"), str(tmp_path / "tfds")
  builder = tfds_builder.prepare(root, data_dir)
  shard = next(p for p in os.listdir(builder.data_path) if p.startswith("shot_records-train"))
  stamp = os.stat(os.path.join(builder.data_path, shard)).st_mtime_ns
  assert os.stat(os.path.join(tfds_builder.prepare(root, data_dir).data_path, shard)).st_mtime_ns == stamp

  world = toy_world.WorldConfig(height=16, width=32, num_frames=3, min_shots=8, max_shots=10)
  _toy(root, seed=5, world=world)
  tfds_builder.prepare(root, data_dir)
  for split in ("train", "eval"):
    _assert_source_equals_reader(tfds.data_source(tfds_builder.NAME, data_dir=data_dir, split=split),
                                 records.ShotReader(os.path.join(root, split)))


def test_missing_root_is_a_one_line_data_error(tmp_path):
  with pytest.raises(errors.DataError, match="does not exist") as e:
    tfds_builder.prepare(str(tmp_path / "missing"), str(tmp_path / "tfds"))
  assert str(tmp_path / "missing") in str(e.value) and "\n" not in str(e.value)


def test_other_data_errors(tmp_path):
  (tmp_path / "empty" / "train").mkdir(parents=True)  # a subdirectory without index.json is no split
  with pytest.raises(errors.DataError, match="has no split"):
    tfds_builder.prepare(str(tmp_path / "empty"), str(tmp_path / "tfds"))
  with pytest.raises(errors.DataError, match="prepare"):
    tfds.data_source(tfds_builder.NAME, data_dir=str(tmp_path / "tfds"), split="train")

  # Features are shared by all splits, so splits of different resolutions cannot form one dataset.
  root = _toy(tmp_path / "mixed")
  _toy(tmp_path / "other", world=toy_world.WorldConfig(height=16, width=16, num_frames=2, min_shots=8,
                                                       max_shots=10))
  os.rename(tmp_path / "other" / "eval", tmp_path / "mixed" / "eval2")
  with pytest.raises(errors.DataError, match="disagree"):
    tfds_builder.prepare(root, str(tmp_path / "tfds"))
