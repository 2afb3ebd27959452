"""Shot records: the on-disk format shared by toy and real movies (schema version 2; 1 is read too).

A dataset is a directory:

  index.json                        the movie index; written last, so its presence means "complete"
  shots-00000-of-00004.array_record one msgpack-encoded record per shot (ArrayRecord, group_size:1)
  ...

Record fields (msgpack map, schema 2):
  schema          int, 2 (schema 1: the same fields without frame_latents and text_embedding)
  movie_id        str
  shot_index      int, position of the shot in its movie (0-based, dense)
  caption         str, non-empty (a shot without a caption is not written)
  keyframe_png    bytes, RGB PNG [H, W, 3]                      } exactly one of the two
  keyframe_latent array float32/bfloat16 [h, w, C] (pre-computed) }
  frames_png      bytes, optional: the shot's F frames stacked vertically in one RGB PNG [F*H, W, 3]
                  (beside a PNG keyframe)
  frame_latents   array, optional [F, h, w, C]: the same frames as VAE latents (beside a latent keyframe)
  t5              array, optional [L, D] text token states (pre-computed; L: the caption's own tokens)
  clip_pooled     array, optional [D] pooled text vector (pre-computed)
  image_embedding array, optional [D] image embedding for retrieval (pre-computed: CLIP's image tower)
  text_embedding  array, optional [D] the caption's embedding in the same CLIP space (text tower + projection)
  meta            map, JSON-able: fps, start/end seconds, source, and for the toy world the ground truth

Arrays are maps {"dtype": str, "shape": [..], "data": bytes} (C order).

index.json holds the dataset-wide contract that every record is checked against ("resolution",
"num_frames", "latent_shape", embedding shapes; -1 for the caption-dependent T5 length), the shards with their
record counts, and per movie the global record indices of its shots in shot order. A global index counts
records across shards in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
from typing import Any, Iterable, Iterator

import msgpack
import numpy as np
from PIL import Image

from cinema_jax import errors

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
INDEX_FILE = "index.json"
_ARRAY_FIELDS = ("keyframe_latent", "frame_latents", "t5", "clip_pooled", "image_embedding", "text_embedding")
_OPTIONAL_BYTES = ("keyframe_png", "frames_png")
_DTYPES = ("uint8", "float16", "float32", "bfloat16")


# ----------------------------------------------------------------------------------------- encoding


def encode_png(image_HWC: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image_HWC, np.uint8)).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as im:
    if im.mode != "RGB":
      raise ValueError(f"PNG mode is {im.mode}, expected RGB")
    return np.asarray(im)


def _pack_array(x: np.ndarray) -> dict[str, Any]:
  x = np.ascontiguousarray(x)
  if x.dtype.name not in _DTYPES:
    raise ValueError(f"unsupported array dtype {x.dtype}; supported: {_DTYPES}")
  return {"dtype": x.dtype.name, "shape": list(x.shape), "data": x.tobytes()}


def _unpack_array(d: Any) -> np.ndarray:
  if not isinstance(d, dict) or set(d) != {"dtype", "shape", "data"}:
    raise ValueError("array field is not a {dtype, shape, data} map")
  if d["dtype"] not in _DTYPES:
    raise ValueError(f"array dtype {d['dtype']!r} not in {_DTYPES}")
  if d["dtype"] == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    dtype = np.dtype(ml_dtypes.bfloat16)
  else:
    dtype = np.dtype(d["dtype"])
  shape = tuple(int(s) for s in d["shape"])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(d["data"]) != expected:
    raise ValueError(f"array data has {len(d['data'])} bytes, shape {shape} {dtype} needs {expected}")
  return np.frombuffer(d["data"], dtype).reshape(shape)


@dataclasses.dataclass
class Shot:
  """One decoded shot record. Images stay encoded (PNG bytes) until the pipeline needs pixels."""

  movie_id: str
  shot_index: int
  caption: str
  keyframe_png: bytes | None = None
  keyframe_latent: np.ndarray | None = None
  frames_png: bytes | None = None
  frame_latents: np.ndarray | None = None
  t5: np.ndarray | None = None
  clip_pooled: np.ndarray | None = None
  image_embedding: np.ndarray | None = None
  text_embedding: np.ndarray | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_bytes(self) -> bytes:
    if (self.keyframe_png is None) == (self.keyframe_latent is None):
      raise ValueError(f"{self.movie_id} shot {self.shot_index}: give exactly one of keyframe_png, keyframe_latent")
    if not self.caption:
      raise ValueError(f"{self.movie_id} shot {self.shot_index}: empty caption")
    rec: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "movie_id": self.movie_id,
        "shot_index": int(self.shot_index),
        "caption": self.caption,
        "meta": self.meta,
    }
    for name in _OPTIONAL_BYTES:
      if getattr(self, name) is not None:
        rec[name] = bytes(getattr(self, name))
    for name in _ARRAY_FIELDS:
      if getattr(self, name) is not None:
        rec[name] = _pack_array(getattr(self, name))
    return msgpack.packb(rec, use_bin_type=True)

  @classmethod
  def from_bytes(cls, data: bytes) -> "Shot":
    """Parses a record; raises ValueError saying what is wrong (callers add where)."""
    try:
      rec = msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated types for truncated/garbled input
      raise ValueError(f"not a msgpack record ({type(e).__name__}: {e})") from None
    if not isinstance(rec, dict):
      raise ValueError("record is not a map")
    if rec.get("schema") not in READABLE_SCHEMAS:
      raise ValueError(f"schema version {rec.get('schema')!r}, this reader knows {READABLE_SCHEMAS}")
    for key, typ in (("movie_id", str), ("shot_index", int), ("meta", dict)):
      if not isinstance(rec.get(key), typ):
        raise ValueError(f"field {key!r} missing or not {typ.__name__}")
    caption = rec.get("caption")
    if not isinstance(caption, str) or not caption.strip():
      raise ValueError("missing or empty caption")
    shot = cls(movie_id=rec["movie_id"], shot_index=rec["shot_index"], caption=caption, meta=rec["meta"])
    for name in _OPTIONAL_BYTES:
      if name in rec:
        if not isinstance(rec[name], bytes):
          raise ValueError(f"field {name!r} is not bytes")
        setattr(shot, name, rec[name])
    for name in _ARRAY_FIELDS:
      if name in rec:
        try:
          setattr(shot, name, _unpack_array(rec[name]))
        except ValueError as e:
          raise ValueError(f"field {name!r}: {e}") from None
    if (shot.keyframe_png is None) == (shot.keyframe_latent is None):
      raise ValueError("needs exactly one of keyframe_png, keyframe_latent")
    return shot


# -------------------------------------------------------------------------------------------- index


@dataclasses.dataclass
class Index:
  """The movie index of a dataset directory."""

  shards: list[dict[str, Any]]  # [{"path": file name, "num_records": n}]
  movies: list[dict[str, Any]]  # [{"movie_id", "num_shots", "records": [global index per shot]}]
  resolution: list[int] | None = None  # [H, W] of keyframes (PNG); None when keyframes are latents
  num_frames: int = 0  # frames per shot in frames_png; 0: no frames
  latent_shape: list[int] | None = None  # [h, w, C] when keyframes are latents
  embeddings: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # field -> shape
  info: dict[str, Any] = dataclasses.field(default_factory=dict)  # provenance, e.g. the toy world's knobs
  schema: int = SCHEMA_VERSION

  @property
  def num_records(self) -> int:
    return sum(s["num_records"] for s in self.shards)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1)

  @classmethod
  def load(cls, path: str) -> "Index":
    index_path = os.path.join(path, INDEX_FILE)
    if not os.path.isdir(path):
      raise errors.DataError(f"no dataset at {path}: " + ("a file, not a dataset folder" if os.path.exists(path) else
                                                          "the folder does not exist"))
    if not os.path.exists(index_path):
      raise errors.DataError(f"no dataset at {path}: {INDEX_FILE} is missing (not a shot-record dataset, or an "
                             "unfinished write)")
    try:
      with open(index_path) as f:
        raw = json.load(f)
      index = cls(**raw)
    except (json.JSONDecodeError, TypeError) as e:
      raise errors.DataError(f"{index_path}: not a valid movie index ({e})") from None
    if index.schema not in READABLE_SCHEMAS:
      raise errors.DataError(f"{index_path}: schema version {index.schema}, this reader knows {READABLE_SCHEMAS}")
    total = index.num_records
    for m in index.movies:
      recs = m.get("records", [])
      if len(recs) != m.get("num_shots") or any(not 0 <= r < total for r in recs):
        raise errors.DataError(f"{index_path}: movie {m.get('movie_id')!r} has inconsistent records")
    return index


# ------------------------------------------------------------------------------------------- writer


def _shard_name(i: int, n: int) -> str:
  return f"shots-{i:05d}-of-{n:05d}.array_record"


@contextlib.contextmanager
def staged_folder(out_dir: str, overwrite: bool, overwrite_hint: str = "pass overwrite") -> Iterator[str]:
  """A staging folder beside out_dir, filled in the `with` block and renamed into place only when the block
  completes: a crash or error leaves no directory that a reader takes as whole (the staging one is
  removed). An existing out_dir is a one-line DataError unless overwrite."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise errors.DataError(f"{out_dir} already exists ({overwrite_hint} to replace it)")
  staging = f"{out_dir}.partial-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  try:
    yield staging
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  if os.path.exists(out_dir) and overwrite:
    shutil.rmtree(out_dir)
  try:
    os.rename(staging, out_dir)
  except OSError:  # another process finished the same build first
    shutil.rmtree(staging, ignore_errors=True)
    raise errors.DataError(f"{out_dir} appeared while it was being built") from None


def write_dataset(
    out_dir: str,
    movies: Iterable[list[Shot]],
    *,
    num_shards: int = 1,
    num_frames: int = 0,
    info: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Index:
  """Writes movies (each a list of Shot in shot order) as a dataset, atomically.

  Everything goes to a staging directory beside `out_dir` that is renamed into place once the index
  is written, so a crash leaves no directory that a reader takes as a dataset. Shots are dealt to
  shards round-robin by movie.
  """
  with staged_folder(out_dir, overwrite) as staging:
    index = _write_shards(staging, num_shards, movies, num_frames, info or {})
  return index


def _write_shards(staging: str, num_shards: int, movies: Iterable[list[Shot]], num_frames: int,
                  info: dict[str, Any]) -> Index:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  names = [_shard_name(i, num_shards) for i in range(num_shards)]
  # group_size:1 makes every record its own chunk: random access reads one record, not a group.
  writers = [array_record_module.ArrayRecordWriter(os.path.join(staging, n), "group_size:1") for n in names]
  counts = [0] * num_shards
  movie_entries = []
  contract: dict[str, Any] = {"resolution": None, "latent_shape": None, "embeddings": {}}
  try:
    for m, shots in enumerate(movies):
      s = m % num_shards
      local = []
      for k, shot in enumerate(shots):
        if shot.shot_index != k:
          raise ValueError(f"{shot.movie_id}: shot_index {shot.shot_index} at position {k}")
        _check_contract(shot, contract, num_frames)
        writers[s].write(shot.to_bytes())
        local.append((s, counts[s]))
        counts[s] += 1
      movie_entries.append((shots[0].movie_id if shots else f"movie-{m}", local))
  finally:
    for w in writers:
      w.close()
  offsets = np.concatenate([[0], np.cumsum(counts)])
  index = Index(
      shards=[{"path": n, "num_records": c} for n, c in zip(names, counts)],
      movies=[{"movie_id": mid, "num_shots": len(loc), "records": [int(offsets[s] + p) for s, p in loc]}
              for mid, loc in movie_entries],
      resolution=contract["resolution"],
      num_frames=num_frames,
      latent_shape=contract["latent_shape"],
      embeddings=contract["embeddings"],
      info=info,
  )
  tmp = os.path.join(staging, INDEX_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(index.to_json())
    f.flush()
    os.fsync(f.fileno())
  os.rename(tmp, os.path.join(staging, INDEX_FILE))
  return index


def _check_contract(shot: Shot, contract: dict[str, Any], num_frames: int) -> None:
  """All records of a dataset share keyframe kind, shape and embedding shapes (static model inputs)."""
  where = f"{shot.movie_id} shot {shot.shot_index}"
  if shot.keyframe_png is not None:
    with Image.open(io.BytesIO(shot.keyframe_png)) as im:  # reads the header only
      if im.format != "PNG" or im.mode != "RGB":
        raise ValueError(f"{where}: keyframe is {im.format} {im.mode}, expected an RGB PNG")
      key, value = "resolution", [im.height, im.width]
  else:
    key, value = "latent_shape", list(shot.keyframe_latent.shape)
  other = "latent_shape" if key == "resolution" else "resolution"
  if contract[other] is not None:
    raise ValueError(f"{where}: mixes PNG and latent keyframes in one dataset")
  if contract[key] is None:
    contract[key] = value
  elif contract[key] != value:
    raise ValueError(f"{where}: keyframe {key} {value}, dataset has {contract[key]}")
  if num_frames and key == "resolution" and shot.frames_png is None:
    raise ValueError(f"{where}: dataset has {num_frames} frames per shot, this shot has none")
  if num_frames and key == "latent_shape" and (shot.frame_latents is None or list(shot.frame_latents.shape) !=
                                               [num_frames, *contract["latent_shape"]]):
    raise ValueError(f"{where}: dataset has {num_frames} frame latents of {contract['latent_shape']} per shot, this "
                     f"shot has {None if shot.frame_latents is None else list(shot.frame_latents.shape)}")
  first = contract.setdefault("first", True)
  for name in ("t5", "clip_pooled", "image_embedding", "text_embedding"):
    arr = getattr(shot, name)
    shape = None if arr is None else list(arr.shape)
    if name == "t5" and shape is not None:
      shape = [-1, *shape[1:]]  # a caption's own token count: -1, any length
    if first:
      if shape is not None:
        contract["embeddings"][name] = shape
    elif not _fits(None if arr is None else list(arr.shape), contract["embeddings"].get(name)):
      raise ValueError(f"{where}: {name} shape {shape}, dataset has {contract['embeddings'].get(name)}")
  contract["first"] = False


def _fits(shape: list[int] | None, contract: list[int] | None) -> bool:
  """shape matches the contract's, where -1 in the contract allows any size."""
  if shape is None or contract is None:
    return shape == contract
  return len(shape) == len(contract) and all(c in (-1, s) for s, c in zip(shape, contract))


# ------------------------------------------------------------------------------------------- reader


class ShotReader:
  """Random access to the records of a dataset by global index, with errors that name the shard.

  Picklable (grain workers get a copy and open their own readers).
  """

  def __init__(self, path: str):
    self.path = os.path.abspath(path)
    self.index = Index.load(self.path)
    self._offsets = np.concatenate([[0], np.cumsum([s["num_records"] for s in self.index.shards])])
    for s in self.index.shards:
      p = os.path.join(self.path, s["path"])
      if not os.path.exists(p):
        raise errors.DataError(f"dataset {self.path}: shard {s['path']} listed in {INDEX_FILE} is missing")
    self._readers: dict[int, Any] = {}
    # Every shard opens and holds the records the index lists, checked now: a truncated or empty shard
    # stops a run before its first step, not when a batch first reaches it.
    for shard in range(len(self.index.shards)):
      self._reader(shard)
    self.close()

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_readers"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._readers = {}

  def _shard_of(self, record: int) -> tuple[int, int]:
    """(shard number, position in the shard) of a global record index."""
    s = int(np.searchsorted(self._offsets, record, side="right") - 1)
    return s, int(record - self._offsets[s])

  def locate(self, record: int) -> tuple[str, int]:
    """(shard file, position in the shard) of a global record index."""
    s, pos = self._shard_of(record)
    return self.index.shards[s]["path"], pos

  def _reader(self, shard: int):
    if shard not in self._readers:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      path = os.path.join(self.path, self.index.shards[shard]["path"])
      try:
        reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
      except Exception as e:  # the C++ reader raises RuntimeError/ValueError variants
        raise errors.BadRecordError(f"{path}: cannot open shard ({e})") from None
      if reader.num_records() != self.index.shards[shard]["num_records"]:
        raise errors.BadRecordError(f"{path}: shard holds {reader.num_records()} records, "
                                    f"{INDEX_FILE} says {self.index.shards[shard]['num_records']} (truncated?)")
      self._readers[shard] = reader
    return self._readers[shard]

  def read_bytes(self, record: int) -> bytes:
    if not 0 <= record < len(self):
      raise IndexError(f"record {record} out of range [0, {len(self)})")
    s, pos = self._shard_of(record)
    try:
      return self._reader(s).read([pos])[0]
    except errors.BadRecordError:
      raise
    except Exception as e:
      raise errors.BadRecordError(f"{self.where(record)}: unreadable ({e})") from None

  def read(self, record: int) -> Shot:
    """The decoded record, checked against the dataset's contract."""
    data = self.read_bytes(record)
    try:
      shot = Shot.from_bytes(data)
      self._check(shot)
    except ValueError as e:
      name, pos = self.locate(record)
      raise errors.BadRecordError(f"{os.path.join(self.path, name)} record {pos}: {e}") from None
    return shot

  def _check(self, shot: Shot) -> None:
    ix = self.index
    if ix.latent_shape is not None:
      if shot.keyframe_latent is None or list(shot.keyframe_latent.shape) != ix.latent_shape:
        got = None if shot.keyframe_latent is None else list(shot.keyframe_latent.shape)
        raise ValueError(f"keyframe latent shape {got}, dataset has {ix.latent_shape}")
    elif shot.keyframe_png is None:
      raise ValueError("keyframe is a latent, dataset has PNG keyframes")
    for name, shape in ix.embeddings.items():
      arr = getattr(shot, name)
      if arr is None or not _fits(list(arr.shape), shape):
        raise ValueError(f"{name} shape {None if arr is None else list(arr.shape)}, dataset has {shape}")
    if ix.num_frames and shot.frames_png is None and shot.frame_latents is None:
      raise ValueError(f"no frames, dataset has {ix.num_frames} per shot")
    if ix.num_frames and shot.frame_latents is not None and list(shot.frame_latents.shape) != [ix.num_frames,
                                                                                               *ix.latent_shape]:
      raise ValueError(f"frame_latents shape {list(shot.frame_latents.shape)}, dataset has "
                       f"{[ix.num_frames, *ix.latent_shape]}")

  def where(self, record: int) -> str:
    name, pos = self.locate(record)
    return f"{os.path.join(self.path, name)} record {pos}"

  def read_pixels(self, record: int, frames: bool = True) -> tuple[Shot, np.ndarray | None, np.ndarray | None]:
    """(shot, keyframe uint8 [H, W, 3] or None for latents, frames uint8 [F, H, W, 3] or None).

    frames=False skips decoding the shot's frames (the keyframe model never needs them).
    """
    shot = self.read(record)

    def decode(data: bytes, what: str) -> np.ndarray:
      try:
        return decode_png(data)
      except Exception as e:  # PIL raises many types for corrupt images (OSError, SyntaxError, ...)
        raise errors.BadRecordError(f"{self.where(record)}: undecodable {what} ({e})") from None

    keyframe, want_frames, frames = None, frames, None
    if shot.keyframe_png is not None:
      keyframe = decode(shot.keyframe_png, "keyframe")
      if list(keyframe.shape[:2]) != self.index.resolution:
        raise errors.BadRecordError(f"{self.where(record)}: keyframe is {keyframe.shape[0]}x{keyframe.shape[1]}, "
                                    f"dataset has {self.index.resolution[0]}x{self.index.resolution[1]}")
    if self.index.num_frames and want_frames and shot.keyframe_png is not None:  # latent frames: shot.frame_latents
      strip = decode(shot.frames_png, "frames")
      h, w = self.index.resolution or keyframe.shape[:2]
      if strip.shape[:2] != (self.index.num_frames * h, w):
        raise errors.BadRecordError(f"{self.where(record)}: frames strip is {strip.shape[0]}x{strip.shape[1]}, "
                                    f"expected {self.index.num_frames} frames of {h}x{w}")
      frames = strip.reshape(self.index.num_frames, h, w, 3)
    return shot, keyframe, frames

  def movie_shots(self, movie: int) -> Iterator[Shot]:
    for r in self.index.movies[movie]["records"]:
      yield self.read(r)

  def close(self) -> None:
    for r in self._readers.values():
      r.close()
    self._readers = {}
