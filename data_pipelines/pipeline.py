"""The interleaved grain pipeline: shot records -> batches of P (caption, keyframe) pairs of one movie.

  windows (WindowPlan, random access, one slice per JAX process)
    -> load + decode each window's P records, tokenise captions, normalise images   [grain workers]
    -> context order (retrieval); GoldenMem: frames of each level group resized      [grain workers]
    -> skip-or-raise on bad records, batch                                          [this process]

Deterministic from the seed for any worker count; the iterator's state (a grain DatasetIterator)
is saved with Orbax (grain.checkpoint.CheckpointSave) and resumes at exactly the next batch.

An example (all numpy, P = num_pairs):
  image        float32 [P, H, W, 3] in [-1, 1]  (PNG keyframes)  | latent float32 [P, h, w, C]
               with GoldenMem resizing in pixel space instead: image_g0, image_g1, ... float32
               [n_g, h_g, w_g, 3], one per level group, oldest first (the caller's image_groups)
  text_tokens  int32 [P, L] word tokens, text_mask bool [P, L]    (text_source="tokens")
  text_states  float32 [P, L, D], text_mask, text_pooled [P, D]   (text_source="precomputed")
  image_embedding float32 [P, D]   when the records carry one
  frames       float32 [P, F, H, W, 3] when load_frames
  movie int32 [], shot_index int32 [P], stride int32 []
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
import grain
import numpy as np

from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import goldenmem
from cinema_jax import retrieval
from data_pipelines import records
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import windows

Example = dict[str, Any]
_BAD = "_bad_record"
_PIXELS = ("image", "frames")  # uint8 keys (and image_g*) normalised to float32 [-1, 1] once per batch


def normalise(pixels: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  out = pixels.astype(np.float32)
  out *= 1 / 127.5
  out -= 1.0
  return out


_PER_PAIR = ("image", "latent", "frames", "frame_latents", "text_tokens", "text_mask", "text_states", "text_pooled",
             "image_embedding", "shot_index")


def check_batch_size(batch_size: int, process_count: int = 1) -> None:
  """The data section's own fields are checked when the config is loaded (config_validation.Data); what is
  left is how the global batch splits over the processes."""
  if not (isinstance(batch_size, int) and batch_size >= 1 and batch_size % process_count == 0):
    raise errors.ConfigError(f"config.batch_size={batch_size!r}: expected a positive multiple of the {process_count} "
                             "JAX processes")


@dataclasses.dataclass
class LoadWindow(grain.transforms.Map):
  """Reads and decodes the P records of a window into one example (runs in grain workers)."""

  reader: records.ShotReader
  text_source: str
  text_len: int
  tokenizer: tokenizer_lib.Tokenizer | None
  load_frames: bool
  skip_bad: bool
  context_order: str
  recency: float = 0.0
  text_convention: str = "masked"
  image_groups: tuple[tuple[int, tuple[int, int]], ...] | None = None  # (pairs, (h, w) pixels) per group

  def map(self, window: dict[str, Any]) -> Example:
    try:
      ex = self._load(window)
    except errors.BadRecordError as e:
      if not self.skip_bad:
        raise
      return {_BAD: str(e)}
    if self.context_order != "chronological":
      ex = self._retrieve(ex)
    if self.image_groups:  # GoldenMem in pixel space: each level group's frames at its size
      if "image" not in ex:
        raise errors.BadRecordError(f"{self.reader.path}: GoldenMem resizes pixels, the records hold latents")
      for g, frames in enumerate(goldenmem.group_frames(ex.pop("image"), self.image_groups)):
        ex[f"image_g{g}"] = frames
    return ex

  def _retrieve(self, ex: Example) -> Example:
    """Reorders the context pairs (all but the last) by retrieval score against the last pair."""
    query, history = ex.pop("_query"), ex.pop("_history")
    p = len(history)
    ctx = retrieval.select(self.context_order, p - 1, p - 1, query=query, history=history[:-1],
                           recency=self.recency)
    perm = np.concatenate([ctx, [p - 1]])
    return {k: (v[perm] if k in _PER_PAIR else v) for k, v in ex.items()}

  def _load(self, window: dict[str, Any]) -> Example:
    movie = self.reader.index.movies[window["movie"]]
    cols: dict[str, list[np.ndarray]] = {}
    for k in window["shots"]:
      record = movie["records"][k]
      shot, keyframe, frames = self.reader.read_pixels(record, frames=self.load_frames)
      if shot.movie_id != movie["movie_id"] or shot.shot_index != k:
        raise errors.BadRecordError(
            f"{self.reader.where(record)}: is {shot.movie_id} shot {shot.shot_index}, the index says "
            f"{movie['movie_id']} shot {k}")
      if keyframe is not None:
        cols.setdefault("image", []).append(keyframe)  # uint8 until batched: 4x less to move between processes
      else:
        cols.setdefault("latent", []).append(np.asarray(shot.keyframe_latent, np.float32))
      if self.load_frames and shot.frame_latents is not None:
        cols.setdefault("frame_latents", []).append(np.asarray(shot.frame_latents, np.float32))
      elif self.load_frames:
        if frames is None:
          raise errors.BadRecordError(f"{self.reader.where(record)}: load_frames is set but the dataset "
                                      "stores no frames")
        cols.setdefault("frames", []).append(frames)
      if self.text_source == "tokens":
        cols.setdefault("_captions", []).append(shot.caption)
      else:
        if shot.t5 is None or shot.clip_pooled is None:
          raise errors.BadRecordError(f"{self.reader.where(record)}: text_source='precomputed' but the "
                                      "record has no t5/clip_pooled")
        states = np.zeros((self.text_len, shot.t5.shape[-1]), np.float32)
        n = min(self.text_len, len(shot.t5))
        if self.text_convention == "flux":  # every position of the padded caption, none masked
          if len(shot.t5) != self.text_len:
            raise errors.BadRecordError(f"{self.reader.where(record)}: text_convention='flux' needs T5 states of "
                                        f"all {self.text_len} positions, the record holds {len(shot.t5)}")
          n = self.text_len
        states[:n] = shot.t5[:n]
        cols.setdefault("text_states", []).append(states)
        cols.setdefault("text_mask", []).append(np.arange(self.text_len) < n)
        cols.setdefault("text_pooled", []).append(np.asarray(shot.clip_pooled, np.float32))
      if shot.image_embedding is not None:
        cols.setdefault("image_embedding", []).append(np.asarray(shot.image_embedding, np.float32))
      if shot.text_embedding is not None and self.context_order == "image":
        cols.setdefault("_text_embedding", []).append(np.asarray(shot.text_embedding, np.float32))
      if self.context_order == "text":
        cols.setdefault("_history", []).append(retrieval.words_embedding(shot.caption))
    captions = cols.pop("_captions", None)
    ex = {k: np.stack(v) for k, v in cols.items()}
    if captions is not None:
      ex["text_tokens"], ex["text_mask"] = self.tokenizer(captions)
    if self.context_order == "text":
      ex["_query"] = ex["_history"][-1]
    elif self.context_order == "image":  # the records' CLIP (or ToyCLIP) embeddings
      if "_text_embedding" not in ex or len(ex.get("image_embedding", ())) != len(window["shots"]):
        raise errors.BadRecordError(f"{self.reader.path}: context_order='image' needs every record's "
                                    "image_embedding and text_embedding")
      ex["_query"], ex["_history"] = ex.pop("_text_embedding")[-1], ex["image_embedding"]
    ex["movie"] = np.int32(window["movie"])
    ex["shot_index"] = np.asarray(window["shots"], np.int32)
    ex["stride"] = np.int32(window["stride"])
    return ex


class BatchIterDataset(grain.IterDataset):
  """Drops examples whose records were bad (counting them, failing past a fraction) and batches."""

  def __init__(self, parent: grain.IterDataset, batch_size: int, skip_bad: bool, max_bad_fraction: float,
               min_seen: int):
    super().__init__(parent)
    self.batch_size, self.skip_bad = batch_size, skip_bad
    self.max_bad_fraction, self.min_seen = max_bad_fraction, min_seen

  def __iter__(self) -> "BatchIterator":
    return BatchIterator(self._parent.__iter__(), self)


class BatchIterator(grain.DatasetIterator):
  """Batches of `batch_size` good examples; `seen` and `skipped` count examples (windows)."""

  def __init__(self, parent: grain.DatasetIterator, spec: BatchIterDataset):
    super().__init__(parent)
    self._spec = spec
    self.seen = 0
    self.skipped = 0

  def __next__(self) -> Example:
    batch: list[Example] = []
    while len(batch) < self._spec.batch_size:
      ex = next(self._parent)
      self.seen += 1
      if _BAD in ex:
        self.skipped += 1
        logging.warning("skipped a window with a bad record (%d of %d so far): %s", self.skipped, self.seen,
                        ex[_BAD])
        if (self.seen >= self._spec.min_seen and self.skipped > self._spec.max_bad_fraction * self.seen):
          raise errors.DataError(
              f"{self.skipped} of {self.seen} examples had bad records, more than "
              f"config.data.max_bad_fraction={self._spec.max_bad_fraction}; last: {ex[_BAD]}")
        continue
      batch.append(ex)
    out = {k: np.stack([ex[k] for ex in batch]) for k in batch[0]}
    for k in out:
      if k in _PIXELS or k.startswith("image_g"):
        out[k] = normalise(out[k])
    return out

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "seen": self.seen, "skipped": self.skipped}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self.seen, self.skipped = int(state["seen"]), int(state["skipped"])


@dataclasses.dataclass
class Pipeline:
  """A built pipeline: `iterator()` gives a checkpointable iterator of per-process batches."""

  dataset: grain.IterDataset
  plan: windows.WindowPlan
  reader: records.ShotReader
  batch_size: int  # per process

  def iterator(self) -> BatchIterator:
    return iter(self.dataset)


class ProcessShare:
  """One process's windows: its contiguous share of every global batch.

  Global batch s is windows [s*B, (s+1)*B) of the plan whatever the number of processes, and process
  p of N holds rows [p*B/N, (p+1)*B/N) of it, as jax.make_array_from_process_local_data lays them out:
  the same run on 1 or on N processes sees the same batches, row for row.
  """

  def __init__(self, plan, batch_size: int, process_index: int, process_count: int):
    self.plan, self.global_batch = plan, batch_size
    self.local_batch = batch_size // process_count
    self.offset = process_index * self.local_batch
    self.num_batches = len(plan) // batch_size

  def __len__(self) -> int:
    return self.num_batches * self.local_batch

  def __getitem__(self, i: int):
    step, row = divmod(int(i), self.local_batch)
    return self.plan[step * self.global_batch + self.offset + row]


def text_tokenizer(c: config_validation.Data, path: str) -> tokenizer_lib.Tokenizer:
  """The tokenizer of data config c for the dataset at path (tokenizer.for_data), or a one-line ConfigError."""
  try:
    return tokenizer_lib.for_data(c, path)
  except (FileNotFoundError, ValueError) as e:
    raise errors.ConfigError(f"config.data.tokenizer={c.tokenizer!r}: {e}; give a tokenizer.json "
                             "(--config.data.tokenizer=...)") from None


def make_pipeline(c: config_validation.Data, path: str, *, batch_size: int, process_index: int = 0,
                  process_count: int = 1, image_groups=None, first_batch: int = 0) -> Pipeline:
  """The pipeline of config section `c` (data) over the dataset at `path`, `batch_size` examples a step
  over all processes. image_groups: GoldenMem's (pairs, (height, width) pixels) per level group, oldest
  first, when frames are resized in pixel space (the model config knows the token grid).

  Process `process_index` of `process_count` gets its rows of each global batch (ProcessShare), so
  processes see disjoint windows and together all of them. first_batch: start at that global batch
  (a resume whose saved iterator state belongs to another number of processes).
  """
  check_batch_size(batch_size, process_count)
  reader = records.ShotReader(path)
  if c.context_order == "image" and not {"image_embedding", "text_embedding"} <= set(reader.index.embeddings):
    raise errors.ConfigError(f"config.data.context_order='image': {path} holds no CLIP image and caption embeddings; "
                             "pre-compute them (data_pipelines.precompute --clip_vision=<a whole CLIP model>; the toy "
                             "world's ToyCLIP embeddings: precompute.toy_embeddings, which the train command runs)")
  if reader.index.resolution is not None and list(reader.index.resolution) != list(c.resolution):
    raise errors.ConfigError(f"config.data.resolution={tuple(c.resolution)}: {path} holds "
                             f"{reader.index.resolution[0]}x{reader.index.resolution[1]} keyframes")
  if c.text_source == "precomputed" and not {"t5", "clip_pooled"} <= set(reader.index.embeddings):
    raise errors.ConfigError(f"config.data.text_source='precomputed' but {path} has no t5/clip_pooled embeddings")
  if c.text_source == "precomputed":
    made = reader.index.info.get("text_convention", "masked"), reader.index.info.get("text_len")
    if made[0] != c.text_convention or (c.text_convention == "flux" and made[1] != c.text_len):
      raise errors.ConfigError(f"config.data.text_convention={c.text_convention!r} (text_len {c.text_len}) but {path} "
                               f"was pre-computed with {made[0]!r} (text_len {made[1]}): rerun data_pipelines."
                               f"precompute with --text_convention={c.text_convention} --t5_len={c.text_len}")
  tok = text_tokenizer(c, path) if c.text_source == "tokens" else None
  if c.load_frames and not reader.index.num_frames:
    how = (" per-frame latents (record schema 1 had none): make them from its pixel dataset with python -m "
           "data_pipelines.precompute --src=PIXELS --dst=... --frames" if reader.index.latent_shape else " frames")
    raise errors.ConfigError(f"config.data.load_frames=True but {path} stores no{how}")
  try:
    plan = windows.WindowPlan([m["num_shots"] for m in reader.index.movies], c.num_pairs,
                              max_stride=c.max_stride, max_overlap=c.max_overlap, seed=c.seed,
                              num_epochs=c.num_epochs)
  except ValueError as e:
    raise errors.DataError(f"{path}: {e} (config.data.num_pairs={c.num_pairs})") from None
  ds = grain.MapDataset.source(ProcessShare(plan, batch_size, process_index, process_count))[first_batch * (
      batch_size // process_count):]
  ds = ds.map(LoadWindow(reader=reader, text_source=c.text_source, text_len=c.text_len, tokenizer=tok,
                         load_frames=c.load_frames, skip_bad=c.bad_records == "skip",
                         context_order=c.context_order, recency=float(c.retrieval.recency),
                         text_convention=c.text_convention,
                         image_groups=tuple((int(n), tuple(size)) for n, size in image_groups or ()) or None))
  it = ds.to_iter_dataset()
  if c.worker_count > 0:
    it = it.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
        num_workers=c.worker_count, per_worker_buffer_size=c.worker_buffer_size))
  batch_size //= process_count
  it = BatchIterDataset(it, batch_size, c.bad_records == "skip", c.max_bad_fraction, c.bad_records_min_seen)
  return Pipeline(dataset=it, plan=plan, reader=reader, batch_size=batch_size)
