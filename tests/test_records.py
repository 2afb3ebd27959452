"""Shot records: round trips, the dataset contract, atomic writes and errors that name the record."""

import os
import shutil

import ml_dtypes
import msgpack
import numpy as np
import pytest

from cinema_jax import errors
from data_pipelines import records


def _shot(movie: str, k: int, *, latent=False, embed=False, frames=False, hw=(8, 16)) -> records.Shot:
  rng = np.random.default_rng(k)
  image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
  return records.Shot(
      movie_id=movie,
      shot_index=k,
      caption=f"Shot {k} of {movie}. <Mia> waves.",
      keyframe_png=None if latent else records.encode_png(image),
      keyframe_latent=rng.normal(size=(2, 4, 16)).astype(ml_dtypes.bfloat16) if latent else None,
      frames_png=records.encode_png(np.concatenate([image, image[::-1]])) if frames else None,
      t5=rng.normal(size=(5, 12)).astype(np.float32) if embed else None,
      clip_pooled=rng.normal(size=(6,)).astype(np.float32) if embed else None,
      image_embedding=rng.normal(size=(6,)).astype(np.float16) if embed else None,
      meta={"fps": 24.0, "start_s": k * 2.0, "truth": {"chars": ["Mia"]}},
  )


def _movies(n_movies=3, n_shots=4, **kw):
  return [[_shot(f"m{m}", k, **kw) for k in range(n_shots)] for m in range(n_movies)]


def _assert_same(a: records.Shot, b: records.Shot):
  assert (a.movie_id, a.shot_index, a.caption, a.meta) == (b.movie_id, b.shot_index, b.caption, b.meta)
  assert (a.keyframe_png, a.frames_png) == (b.keyframe_png, b.frames_png)
  for name in ("keyframe_latent", "t5", "clip_pooled", "image_embedding"):
    x, y = getattr(a, name), getattr(b, name)
    assert (x is None) == (y is None), name
    if x is not None:
      assert x.dtype == y.dtype
      np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kind", [dict(frames=True), dict(latent=True, embed=True), dict(embed=True)])
def test_round_trip(tmp_path, kind):
  movies = _movies(**kind)
  index = records.write_dataset(str(tmp_path / "ds"), movies, num_shards=2,
                                num_frames=2 if kind.get("frames") else 0, info={"source": "test"})
  reader = records.ShotReader(str(tmp_path / "ds"))
  assert len(reader) == 12 and index.num_records == 12
  assert reader.index.info == {"source": "test"}
  for m, shots in enumerate(movies):
    assert reader.index.movies[m]["movie_id"] == f"m{m}"
    for want, got in zip(shots, reader.movie_shots(m)):
      _assert_same(want, got)
  if kind.get("latent"):
    assert reader.index.latent_shape == [2, 4, 16] and reader.index.resolution is None
    assert reader.index.embeddings == {"t5": [-1, 12], "clip_pooled": [6], "image_embedding": [6]}  # any length
  else:
    shot, keyframe, frames = reader.read_pixels(reader.index.movies[1]["records"][2])
    np.testing.assert_array_equal(keyframe, records.decode_png(movies[1][2].keyframe_png))
    if kind.get("frames"):
      assert frames.shape == (2, 8, 16, 3)
      np.testing.assert_array_equal(frames[1], keyframe[::-1])


def test_reader_survives_pickling(tmp_path):
  import pickle  # pylint: disable=g-import-not-at-top
  records.write_dataset(str(tmp_path / "ds"), _movies())
  reader = records.ShotReader(str(tmp_path / "ds"))
  reader.read(3)  # opens a shard reader, which must not travel
  clone = pickle.loads(pickle.dumps(reader))
  _assert_same(clone.read(5), reader.read(5))


def test_writer_rejects_inconsistent_datasets(tmp_path):
  mixed = [[_shot("a", 0), _shot("a", 1, latent=True)]]
  with pytest.raises(ValueError, match="a shot 1: mixes PNG and latent keyframes"):
    records.write_dataset(str(tmp_path / "x"), mixed)
  sizes = [[_shot("a", 0), _shot("a", 1, hw=(8, 8))]]
  with pytest.raises(ValueError, match=r"a shot 1: keyframe resolution \[8, 8\], dataset has \[8, 16\]"):
    records.write_dataset(str(tmp_path / "x"), sizes)
  embeds = [[_shot("a", 0, embed=True), _shot("a", 1)]]
  with pytest.raises(ValueError, match="a shot 1: t5 shape None, dataset has"):
    records.write_dataset(str(tmp_path / "x"), embeds)
  order = [[_shot("a", 1)]]
  with pytest.raises(ValueError, match="shot_index 1 at position 0"):
    records.write_dataset(str(tmp_path / "x"), order)
  with pytest.raises(ValueError, match="empty caption"):
    records.write_dataset(str(tmp_path / "x"), [[records.Shot("a", 0, "", keyframe_png=_shot("a", 0).keyframe_png)]])
  assert os.listdir(tmp_path) == []  # nothing half-written is left behind


def test_interrupted_write_leaves_no_dataset(tmp_path):
  def movies():
    yield [_shot("a", 0)]
    raise KeyboardInterrupt  # the process dies mid-write

  with pytest.raises(KeyboardInterrupt):
    records.write_dataset(str(tmp_path / "ds"), movies())
  assert os.listdir(tmp_path) == []
  with pytest.raises(errors.DataError, match="the folder does not exist"):
    records.ShotReader(str(tmp_path / "ds"))


def test_overwrite_replaces_only_when_asked(tmp_path):
  records.write_dataset(str(tmp_path / "ds"), _movies(1, 2))
  with pytest.raises(errors.DataError, match="already exists"):
    records.write_dataset(str(tmp_path / "ds"), _movies(2, 2))
  records.write_dataset(str(tmp_path / "ds"), _movies(2, 2), overwrite=True)
  assert len(records.ShotReader(str(tmp_path / "ds"))) == 4


def test_missing_paths_are_one_line_errors(tmp_path):
  with pytest.raises(errors.DataError) as e:
    records.ShotReader(str(tmp_path / "nope"))
  assert str(e.value) == f"no dataset at {tmp_path / 'nope'}: the folder does not exist"
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.DataError, match="index.json is missing"):
    records.ShotReader(str(tmp_path / "empty"))
  records.write_dataset(str(tmp_path / "ds"), _movies(), num_shards=2)
  os.remove(tmp_path / "ds" / "shots-00001-of-00002.array_record")
  with pytest.raises(errors.DataError,
                     match="shard shots-00001-of-00002.array_record listed in index.json is missing"):
    records.ShotReader(str(tmp_path / "ds"))
  (tmp_path / "ds" / "index.json").write_text("{not json")
  with pytest.raises(errors.DataError, match="not a valid movie index"):
    records.ShotReader(str(tmp_path / "ds"))


# ------------------------------------------------------------------------------------------ bad data


SHARD = "shots-00000-of-00002.array_record"


def _corrupt(tmp_path, mutate, replace_record) -> records.ShotReader:
  ds = str(tmp_path / "ds")
  if not os.path.exists(ds):
    records.write_dataset(ds, _movies(), num_shards=2)
  reader = records.ShotReader(ds)
  rec = msgpack.unpackb(reader.read_bytes(1))
  replace_record(ds, SHARD, 1, mutate(rec, reader.read_bytes(1)))
  return records.ShotReader(ds)


def _pack(rec):
  return msgpack.packb(rec, use_bin_type=True)


def _with(rec, **kw):
  rec = dict(rec)
  for k, v in kw.items():
    if v is None:
      rec.pop(k, None)
    else:
      rec[k] = v
  return rec


BAD_CASES = {
    "truncated": (lambda rec, raw: raw[: len(raw) // 2], "not a msgpack record"),
    "missing caption": (lambda rec, raw: _pack(_with(rec, caption=None)), "missing or empty caption"),
    "empty caption": (lambda rec, raw: _pack(_with(rec, caption="  ")), "missing or empty caption"),
    "undecodable image": (lambda rec, raw: _pack(_with(rec, keyframe_png=b"\x89PNG garbage")), "undecodable keyframe"),
    "wrong image size": (
        lambda rec, raw: _pack(_with(rec, keyframe_png=records.encode_png(np.zeros((4, 4, 3), np.uint8)))),
        "keyframe is 4x4, dataset has 8x16"),
    "wrong dtype": (
        lambda rec, raw: _pack(_with(rec, t5={"dtype": "int64", "shape": [1], "data": b"\0" * 8})),
        "field 't5': array dtype 'int64'"),
    "wrong byte count": (
        lambda rec, raw: _pack(_with(rec, t5={"dtype": "float32", "shape": [5, 12], "data": b"\0" * 8})),
        "array data has 8 bytes"),
    "wrong schema": (lambda rec, raw: _pack(_with(rec, schema=99)), "schema version 99"),
    "no keyframe": (lambda rec, raw: _pack(_with(rec, keyframe_png=None)), "needs exactly one of"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record_errors_name_shard_and_record(tmp_path, case, replace_record):
  mutate, message = BAD_CASES[case]
  reader = _corrupt(tmp_path, mutate, replace_record)
  bad = 1  # shard 0 holds movies 0 and 2; its record 1 is global record 1
  with pytest.raises(errors.BadRecordError) as e:
    reader.read_pixels(bad)
  assert str(e.value).startswith(f"{tmp_path / 'ds' / SHARD} record 1: "), str(e.value)
  assert message in str(e.value)
  assert "\n" not in str(e.value)
  reader.read_pixels(0)  # neighbours are fine
  reader.read_pixels(2)


def test_wrong_embedding_shape_is_reported(tmp_path, replace_record):
  ds = str(tmp_path / "ds")
  records.write_dataset(ds, _movies(embed=True), num_shards=2)
  reader = records.ShotReader(ds)
  rec = msgpack.unpackb(reader.read_bytes(1))
  rec["clip_pooled"] = {"dtype": "float32", "shape": [7], "data": b"\0" * 28}
  replace_record(ds, SHARD, 1, _pack(rec))
  with pytest.raises(errors.BadRecordError, match=rf"{SHARD} record 1: clip_pooled shape \[7\], dataset has \[6\]"):
    records.ShotReader(ds).read(1)


@pytest.mark.parametrize("keep", [0.5, 0.0])  # truncated, empty
def test_a_truncated_or_empty_shard_is_reported_when_the_dataset_is_opened(tmp_path, keep):
  ds = tmp_path / "ds"
  records.write_dataset(str(ds), _movies(), num_shards=2)
  path = ds / SHARD
  path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
  with pytest.raises(errors.BadRecordError, match=rf"^{path}: (cannot open shard|shard holds)"):
    records.ShotReader(str(ds))  # before any record is read
  shutil.rmtree(ds)
