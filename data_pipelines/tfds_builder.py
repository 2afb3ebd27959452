"""Shot records (records.py) as a TensorFlow Datasets dataset for `tfds.data_source`, without TensorFlow.

  from data_pipelines import tfds_builder  # the import registers the builder "shot_records" with tfds
  tfds_builder.prepare("/data/toy", "/data/tfds")  # every ROOT/<split>/index.json becomes a split
  source = tfds.data_source("shot_records", data_dir="/data/tfds", split="train")
  # or: tfds_builder.prepare(...).as_data_source("train")
  ex = source[i]  # record i of ROOT/train: {"movie_id": bytes, "shot_index": int, "caption": bytes,
                  #   "keyframe": uint8 [H, W, 3], "frames": uint8 [F, H, W, 3] (only when the records
                  #   have frames), "record": int (= i), "meta": bytes, json.loads gives the record's meta}

Registration happens when this module is imported (tfds registers a builder class when it is defined),
so a fresh process imports data_pipelines.tfds_builder before tfds.data_source("shot_records", ...).
(Without the import tfds falls back to a generic read-only builder: a prepared copy still reads, but a
missing one gets tfds's DatasetNotFoundError instead of a DataError that says to run prepare().)
In tfds's NumPy (no-TF) mode, Text features decode to bytes and scalars to Python ints.

A data_dir holds the copy of one records root. prepare() reuses an existing copy while the records'
index.json files are unchanged and rebuilds it when they changed (the copy is a cache of the records).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from cinema_jax import errors
from data_pipelines import records

NAME = "shot_records"
_METADATA_FILE = "metadata.json"  # where tfds stores DatasetInfo.metadata in the prepared directory


def find_splits(records_root: str) -> dict[str, str]:
  """{split name: dataset directory} for every subdirectory of records_root that holds an index.json."""
  root = os.path.abspath(records_root)
  if not os.path.isdir(root):
    raise errors.DataError(f"no records root at {root}: the directory does not exist")
  # \w+ is what tfds accepts as a split name; it also skips a writer's staging dir (train.partial-123).
  splits = {d: os.path.join(root, d) for d in sorted(os.listdir(root))
            if re.fullmatch(r"\w+", d) and os.path.isfile(os.path.join(root, d, records.INDEX_FILE))}
  if not splits:
    raise errors.DataError(f"records root {root} has no split: no subdirectory holds an {records.INDEX_FILE}")
  return splits


def _contract(splits: dict[str, str]) -> tuple[int, int, int, str]:
  """(height, width, num_frames, fingerprint): one feature spec serves all splits, so they must agree."""
  shapes, digest = {}, hashlib.sha256()
  for name, path in splits.items():
    index = records.Index.load(path)
    if index.resolution is None:
      raise errors.DataError(f"{path}: keyframes are latents; the tfds builder handles PNG keyframes only")
    shapes[name] = (*index.resolution, index.num_frames)
    with open(os.path.join(path, records.INDEX_FILE), "rb") as f:
      digest.update(name.encode() + b"\0" + f.read() + b"\0")
  if len(set(shapes.values())) > 1:
    raise errors.DataError(f"splits disagree on (height, width, num_frames): {shapes}")
  return (*next(iter(shapes.values())), digest.hexdigest())


class ShotRecords(tfds.core.GeneratorBasedBuilder):
  """The shot records of one records root; source[i] of a split is record i of its records dataset."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Shot-record schema 1: caption, keyframe, frames, meta."}
  # No checksums file to find: this builder downloads nothing, and looking for one beside the module
  # imports importlib_resources, which tfds 4.9.10 uses but does not depend on (tensorflow/datasets#11212).
  code_path = None

  def __init__(self, *, records_root: str | None = None, **kwargs):
    # records_root=None is for reading a prepared copy: its features.json supplies the features.
    self._root = records_root and os.path.abspath(records_root)
    super().__init__(file_format="array_record", **kwargs)
    self._original_state["records_root"] = self._root  # tfds pickles a builder as its __init__ arguments

  def _info(self) -> tfds.core.DatasetInfo:
    if self._root is None:
      if not (self.data_path / "features.json").exists():
        raise errors.DataError(f"no {NAME} prepared in {self.data_path}: run "
                               "data_pipelines.tfds_builder.prepare(records_root, data_dir) first")
      # features=None makes tfds rebuild them from the prepared copy's features.json.
      return tfds.core.DatasetInfo(builder=self, features=None, disable_shuffling=True)
    h, w, num_frames, fingerprint = _contract(find_splits(self._root))
    features: dict[str, Any] = {
        "movie_id": tfds.features.Text(),
        "shot_index": tfds.features.Scalar(np.int32),
        "caption": tfds.features.Text(),
        # Image, fed the record's PNG bytes as they are: tfds encodes only a numpy image with TF
        # (tf.image.encode_png), while bytes pass through untouched and decode with PIL/OpenCV.
        "keyframe": tfds.features.Image(shape=(h, w, 3), dtype=np.uint8, encoding_format="png"),
        "record": tfds.features.Scalar(np.int64),
        "meta": tfds.features.Text(),  # JSON: meta is a free-form nested map, no fixed feature spec fits
    }
    if num_frames:
      # Tensor, not Sequence(Image): Sequence decodes to a list of arrays in no-TF mode, and tfds
      # would need TF to encode numpy frames as images. zlib: raw frames are F*H*W*3 bytes a record.
      features["frames"] = tfds.features.Tensor(shape=(num_frames, h, w, 3), dtype=np.uint8,
                                                encoding=tfds.features.Encoding.ZLIB)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Shot records of {self._root}.",
        features=tfds.features.FeaturesDict(features),
        # Kept in record order so that source[i] is record i; shuffling is the loader's job.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(records_root=self._root, fingerprint=fingerprint),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the records are local files
    return {name: self._generate_examples(path) for name, path in find_splits(self._root).items()}

  def _generate_examples(self, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = records.ShotReader(path)
    try:
      for i in range(len(reader)):
        # read_pixels although the keyframe is stored as PNG bytes: it checks the PNG's size against
        # the index, which a pass-through would not, and decodes the frame strip.
        shot, _, frames = reader.read_pixels(i)
        example = {"movie_id": shot.movie_id, "shot_index": shot.shot_index, "caption": shot.caption,
                   "keyframe": shot.keyframe_png, "record": i, "meta": json.dumps(shot.meta, sort_keys=True)}
        if frames is not None:
          example["frames"] = frames
        yield i, example  # the record index: unique and deterministic, and the write order
    finally:
      reader.close()


def _stored_fingerprint(builder: ShotRecords) -> str | None:
  # The file, not builder.info.metadata: once a builder has read a prepared copy, its metadata is that
  # copy's (tfds lets the stored values win over _info()'s), and a regeneration would write them again.
  path = os.path.join(os.fspath(builder.data_path), _METADATA_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("fingerprint")


def prepare(records_root: str, data_dir: str) -> ShotRecords:
  """Writes (or reuses) the tfds copy of the records under data_dir and returns its builder."""
  builder = ShotRecords(records_root=records_root, data_dir=data_dir)
  if builder.is_prepared() and _stored_fingerprint(builder) != _contract(find_splits(records_root))[3]:
    # The records changed since the copy was made. Delete it and start from a builder that has not read
    # it, for the reason in _stored_fingerprint (tfds's FORCE_REDOWNLOAD would keep the old metadata).
    shutil.rmtree(builder.data_path)
    builder = ShotRecords(records_root=records_root, data_dir=data_dir)
  builder.download_and_prepare()
  return builder
