"""The interleaved grain pipeline: content, determinism, sharding, resume, bad data, config errors."""

import os
import shutil
import subprocess
import sys

import grain
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import goldenmem
from cinema_jax import retrieval
from configs import data as data_config
from data_pipelines import pipeline
from data_pipelines import records
from data_pipelines import tokenizer


def _config(**overrides):
  c = data_config.get_config()
  c.num_pairs = 4
  c.text_len = 48
  c.seed = 5
  c.resolution = (16, 32)
  c.update(overrides)
  return config_validation.load_section(config_validation.Data, c)  # the typed section the pipeline reads


def _pipe(c, path, batch_size=3, **kw) -> pipeline.Pipeline:
  return pipeline.make_pipeline(c, path, batch_size=batch_size, **kw)


def _captions(path: str, batch: dict, b: int) -> list[str]:
  """The captions of example b's pairs, in the batch's order, read from the records."""
  reader = records.ShotReader(path)
  movie = reader.index.movies[batch["movie"][b]]
  return [reader.read(movie["records"][k]).caption for k in batch["shot_index"][b]]


def _take(p: pipeline.Pipeline, n: int, it=None):
  it = it or p.iterator()
  out = [next(it) for _ in range(n)]
  return out, it


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_examples_hold_the_windows_records(toy_train):
  p = _pipe(_config(), toy_train)
  (batch,), _ = _take(p, 1)
  assert batch["image"].shape == (3, 4, 16, 32, 3) and batch["image"].dtype == np.float32
  assert batch["text_tokens"].shape == (3, 4, 48) and batch["text_mask"].dtype == bool
  tok = tokenizer.Tokenizer(tokenizer.beside(toy_train), 48)  # the toy world's word tokens
  reader = records.ShotReader(toy_train)
  for b in range(3):
    movie = reader.index.movies[batch["movie"][b]]
    shots = batch["shot_index"][b]
    assert (np.diff(shots) == batch["stride"][b]).all()
    for i, k in enumerate(shots):
      shot, keyframe, _ = reader.read_pixels(movie["records"][k])
      np.testing.assert_allclose(batch["image"][b, i], keyframe / 127.5 - 1.0, atol=1e-6)
      ids, mask = tok([shot.caption])
      np.testing.assert_array_equal(batch["text_tokens"][b, i], ids[0])
      np.testing.assert_array_equal(batch["text_mask"][b, i], mask[0])
      assert 0 < mask.sum() < len(shot.caption.split()) * 2  # a token a word (and one a comma or stop)


def test_goldenmem_groups_come_resized_in_pixel_space(toy_train):
  c = _config(memory_levels="goldenmem")
  groups = ((2, (4, 8)), (1, (8, 16)), (1, (16, 32)))  # oldest first
  (plain,), _ = _take(_pipe(_config(), toy_train), 1)
  (batch,), _ = _take(_pipe(c, toy_train, image_groups=groups), 1)
  assert "image" not in batch and [batch[f"image_g{i}"].shape for i in range(3)] == [
      (3, 2, 4, 8, 3), (3, 1, 8, 16, 3), (3, 1, 16, 32, 3)]
  np.testing.assert_array_equal(batch["shot_index"], plain["shot_index"])
  u8 = np.rint((plain["image"] + 1.0) * 127.5).astype(np.uint8)
  for b in range(3):
    np.testing.assert_allclose(batch["image_g0"][b], goldenmem.resize_frames(u8[b, :2], (4, 8)) / 127.5 - 1.0,
                               atol=1e-6)
  np.testing.assert_allclose(batch["image_g2"], plain["image"][:, 3:], atol=1e-6)


def test_text_retrieval_reorders_the_context(toy_train):
  (plain,), _ = _take(_pipe(_config(), toy_train), 1)
  (batch,), _ = _take(_pipe(_config(context_order="text"), toy_train), 1)
  assert batch.keys() == plain.keys()
  np.testing.assert_array_equal(batch["shot_index"][:, -1], plain["shot_index"][:, -1])  # the new shot stays last
  for b in range(3):
    assert sorted(batch["shot_index"][b]) == sorted(plain["shot_index"][b])
    i = list(plain["shot_index"][b]).index(batch["shot_index"][b][0])  # pairs move whole
    np.testing.assert_array_equal(batch["image"][b, 0], plain["image"][b, i])
    np.testing.assert_array_equal(batch["text_tokens"][b, 0], plain["text_tokens"][b, i])
    emb = [retrieval.words_embedding(cap) for cap in _captions(toy_train, batch, b)]
    sims = [float(e @ emb[-1]) for e in emb[:-1]]
    assert sims == sorted(sims)  # ascending: the most similar context next to the new shot


def test_image_retrieval_orders_the_context_by_caption_to_keyframe_similarity(toy_train, tmp_path):
  from cinema_jax import toy_clip  # pylint: disable=g-import-not-at-top
  from data_pipelines import precompute  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError,
                     match="context_order='image': .* holds no CLIP image and caption embeddings"):
    _pipe(_config(context_order="image"), toy_train)
  clip = toy_clip.fit_dataset(toy_train, steps=50)
  embedded = str(tmp_path / "embedded")  # the pixels as they are, with ToyCLIP's embeddings (as prepare makes them)
  precompute.run(toy_train, embedded, precompute.Encoders(vae=None, text=None, clip_vision=None, retrieval=clip),
                 log=lambda msg: None)
  (plain,), _ = _take(_pipe(_config(), toy_train), 1)
  (batch,), _ = _take(_pipe(_config(context_order="image"), embedded), 1)
  assert batch.keys() == plain.keys() | {"image_embedding"}
  np.testing.assert_array_equal(batch["shot_index"][:, -1], plain["shot_index"][:, -1])
  reordered = 0
  for b in range(3):
    assert sorted(batch["shot_index"][b]) == sorted(plain["shot_index"][b])
    i = list(plain["shot_index"][b]).index(batch["shot_index"][b][0])
    np.testing.assert_array_equal(batch["image"][b, 0], plain["image"][b, i])  # the keyframes stay pixels
    query = clip.texts(_captions(toy_train, batch, b)[-1:])[0]
    u8 = np.rint((batch["image"][b, :-1] + 1.0) * 127.5).astype(np.uint8)
    np.testing.assert_allclose(batch["image_embedding"][b, :-1], clip.images(u8), atol=1e-5)
    sims = clip.images(u8) @ query
    assert (np.diff(sims) >= -1e-5).all(), sims  # ascending: the keyframe most like the new caption sits next to it
    reordered += not np.array_equal(batch["shot_index"][b], plain["shot_index"][b])
  assert reordered


def test_frames_are_loaded_when_asked(toy_train):
  p = _pipe(_config(load_frames=True), toy_train)
  (batch,), _ = _take(p, 1)
  assert batch["frames"].shape == (3, 4, 2, 16, 32, 3)
  np.testing.assert_array_equal(batch["frames"][:, :, 0], batch["image"])  # frame 0 is the keyframe


def test_same_seed_same_batches_for_any_worker_count(toy_train):
  a, _ = _take(_pipe(_config(), toy_train), 4)
  b, _ = _take(_pipe(_config(), toy_train), 4)
  _assert_batches_equal(a, b)
  c, it = _take(_pipe(_config(worker_count=2), toy_train), 4)
  it.close()
  _assert_batches_equal(a, c)
  d, _ = _take(_pipe(_config(seed=6), toy_train), 4)
  assert not all(np.array_equal(x["shot_index"], y["shot_index"]) for x, y in zip(a, d))


def _epoch_windows(p: pipeline.Pipeline) -> list[tuple]:
  out = []
  for batch in p.iterator():
    out += [(int(m), tuple(s.tolist())) for m, s in zip(batch["movie"], batch["shot_index"])]
  return out


def test_processes_get_disjoint_windows_that_cover_the_epoch(toy_train):
  parts = []
  for process in range(4):
    p = _pipe(_config(num_epochs=1), batch_size=4, path=toy_train, process_index=process,
              process_count=4)
    assert p.batch_size == 1
    parts.append(_epoch_windows(p))
  movies, shots, _ = p.plan.epoch(0)
  expected = [(int(m), tuple(s.tolist())) for m, s in zip(movies, shots)]
  flat = [w for part in parts for w in part]
  assert sorted(flat) == sorted(expected)  # complete, and no window twice
  assert len(set(flat)) == len(flat)
  assert max(map(len, parts)) - min(map(len, parts)) <= 1
  # each global batch is the 1-process batch, row for row (process p holds rows 2p, 2p+1 of 4): what
  # a step sees does not depend on the number of processes
  halves = [_epoch_windows(_pipe(_config(num_epochs=1), batch_size=4, path=toy_train, process_index=i,
                                 process_count=2)) for i in range(2)]
  joined = [w for step in range(len(halves[0]) // 2) for h in halves for w in h[2 * step:2 * step + 2]]
  assert joined == _epoch_windows(_pipe(_config(num_epochs=1), batch_size=4, path=toy_train))


@pytest.mark.parametrize("workers", [0, 2])
def test_orbax_checkpoint_resumes_at_exactly_the_next_batch(toy_train, tmp_path, workers):
  c = _config(worker_count=workers)
  p = _pipe(c, toy_train)
  _, it = _take(p, 3)
  manager = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  manager.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected, _ = _take(p, 4, it)  # what an uninterrupted run sees next
  it.close()

  fresh = _pipe(c, toy_train).iterator()
  manager = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  manager.restore(manager.latest_step(), args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  resumed, _ = _take(p, 4, fresh)
  fresh.close()
  _assert_batches_equal(expected, resumed)
  assert fresh.seen == 7 * 3


def test_precomputed_text_and_latents_pass_through(tmp_path):
  rng = np.random.default_rng(0)
  movies = []
  for m in range(2):
    movies.append([records.Shot(
        movie_id=f"real-{m}", shot_index=k, caption=f"<Ann> in shot {k}.",
        keyframe_latent=rng.normal(size=(2, 4, 16)).astype(ml_dtypes.bfloat16),
        t5=rng.normal(size=(7 + k % 3, 10)).astype(np.float32),
        clip_pooled=rng.normal(size=(6,)).astype(np.float32),
        image_embedding=rng.normal(size=(5,)).astype(np.float32)) for k in range(9)])
  # t5 lengths vary per shot: the dataset contract fixes the first shape, so give all the same length
  for shots in movies:
    for s in shots:
      s.t5 = s.t5[:7]
  records.write_dataset(str(tmp_path / "ds"), movies)
  p = _pipe(_config(text_source="precomputed", text_len=8), str(tmp_path / "ds"), batch_size=2)
  (batch,), _ = _take(p, 1)
  assert batch["latent"].shape == (2, 4, 2, 4, 16) and batch["latent"].dtype == np.float32
  assert batch["text_states"].shape == (2, 4, 8, 10)
  assert batch["text_mask"][..., :7].all() and not batch["text_mask"][..., 7:].any()
  assert batch["text_pooled"].shape == (2, 4, 6) and batch["image_embedding"].shape == (2, 4, 5)
  reader = records.ShotReader(str(tmp_path / "ds"))
  shot = reader.read(reader.index.movies[batch["movie"][0]]["records"][batch["shot_index"][0, 0]])
  np.testing.assert_array_equal(batch["text_states"][0, 0, :7], shot.t5)
  np.testing.assert_array_equal(batch["latent"][0, 0], shot.keyframe_latent.astype(np.float32))
  assert "text_tokens" not in batch and "image" not in batch


# ------------------------------------------------------------------------------------------ bad data


@pytest.fixture(name="bad_train")
def bad_train_fixture(toy_train, tmp_path, replace_record):
  """A copy of the toy training set with record 2 of shard 1 truncated."""
  ds = str(tmp_path / "bad")
  shutil.copytree(toy_train, ds)
  reader = records.ShotReader(ds)
  shard = reader.index.shards[1]["path"]
  raw = reader.read_bytes(reader.index.shards[0]["num_records"] + 2)
  replace_record(ds, shard, 2, raw[:100])
  return ds, shard


def _windows_with_record(p: pipeline.Pipeline, record: int) -> int:
  movies, shots, _ = p.plan.epoch(0)
  recs = [p.reader.index.movies[m]["records"] for m in movies]
  return sum(record in [r[k] for k in s] for r, s in zip(recs, shots))


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_record_stops_the_run_naming_shard_and_record(bad_train, workers):
  ds, shard = bad_train
  p = _pipe(_config(num_epochs=1, worker_count=workers), ds, batch_size=1)
  with pytest.raises(Exception) as e:
    _epoch_windows(p)
  assert f"{os.path.join(ds, shard)} record 2: not a msgpack record" in str(e.value)


def test_bad_records_are_skipped_and_counted(bad_train):
  ds, _ = bad_train
  c = _config(num_epochs=1, bad_records="skip", max_bad_fraction=0.5, bad_records_min_seen=1)
  p = _pipe(c, ds, batch_size=1)
  bad = p.reader.index.shards[0]["num_records"] + 2
  expected_skips = _windows_with_record(p, bad)
  assert expected_skips > 0
  it = p.iterator()
  good = sum(1 for _ in it)
  assert it.skipped == expected_skips
  assert good + it.skipped == it.seen == p.plan.epoch_length


def test_run_fails_once_skips_pass_the_fraction(bad_train):
  ds, shard = bad_train
  c = _config(num_epochs=1, bad_records="skip", max_bad_fraction=0.0, bad_records_min_seen=1)
  with pytest.raises(errors.DataError, match=rf"1 of \d+ examples had bad records, more than "
                     rf"config.data.max_bad_fraction=0.0; last: .*{shard} record 2"):
    _epoch_windows(_pipe(c, ds, batch_size=1))


@pytest.mark.parametrize("field,value,message", [
    ("num_pairs", 0, "config.data.num_pairs=0: expected an int >= 1"),
    ("max_overlap", 1.5, "config.data.max_overlap=1.5: expected a fraction in [0, 1)"),
    ("text_source", "t5", "config.data.text_source='t5': expected one of 'tokens', 'precomputed'"),
    ("bad_records", "ignore", "config.data.bad_records='ignore': expected one of 'error', 'skip'"),
    ("context_order", "clip", "config.data.context_order='clip': expected one of 'chronological', 'text', 'image'"),
    ("worker_count", -1, "config.data.worker_count=-1: expected an int >= 0"),
    ("memory_levels", "lru", "config.data.memory_levels='lru': expected one of 'none', 'goldenmem'"),
    ("goldenmem.group_size", 0, "config.data.goldenmem.group_size=0: expected an int >= 1 or 'quarters'"),
    ("goldenmem.resize", "vae", "config.data.goldenmem.resize='vae': expected one of 'pixels', 'latents'"),
])
def test_config_errors_name_the_field(field, value, message):
  c = data_config.get_config()  # the data section checks its own fields when it is loaded
  section, _, name = field.rpartition(".")
  with c.ignore_type():
    setattr(c[section] if section else c, name, value)
  with pytest.raises(errors.ConfigError) as e:
    config_validation.load_section(config_validation.Data, c)
  assert str(e.value) == message


def test_batch_must_split_over_processes(toy_train):
  with pytest.raises(errors.ConfigError, match="config.batch_size=3: expected a positive multiple of the 2 JAX"):
    _pipe(_config(), toy_train, process_count=2)


def test_resolution_must_match_the_dataset(toy_train):
  with pytest.raises(errors.ConfigError, match=r"config.data.resolution=\(32, 64\): .* holds 16x32 keyframes"):
    _pipe(_config(resolution=(32, 64)), toy_train)


def test_dataset_without_frames_or_embeddings_is_refused_by_config(toy_train, tmp_path):
  with pytest.raises(errors.ConfigError, match="text_source='precomputed' but .* has no t5/clip_pooled"):
    _pipe(_config(text_source="precomputed"), toy_train)
  with pytest.raises(errors.DataError, match="no movie has the 40 shots"):
    _pipe(_config(num_pairs=40), toy_train)


def test_missing_data_path_is_a_one_line_error(tmp_path):
  missing = tmp_path / "nowhere"
  done = subprocess.run([sys.executable, "-m", "data_pipelines.preview", "--config=configs/keyframe.py:tiny",
                         f"--config.data.path={missing}", f"--workdir={tmp_path}"],
                        capture_output=True, text=True, check=False,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == f"error: no dataset at {missing}: the folder does not exist"
  assert "Traceback" not in done.stderr
