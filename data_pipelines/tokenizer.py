"""Captions -> token ids through a tokenizer.json (the `tokenizers` package).

One class reads T5's, CLIP's and the toy world's word-level tokenizer (data_pipelines.toy_world
writes it: one token a word, so a name is one token wherever it appears). The pipeline tokenises
captions with it for models that run their own text encoder; cinema_jax.encoders for T5 and CLIP.
"""

from __future__ import annotations

import os

from absl import logging
import numpy as np

FILE = "tokenizer.json"


class Tokenizer:
  """texts -> (ids [B, L] int32, mask [B, L] bool), truncated and padded to max_len, with the special
  tokens the file's post-processor adds. Picklable (grain workers): it carries the file's JSON."""

  def __init__(self, path: str, max_len: int, pad_token: str | None = None, *, json_str: str | None = None):
    self.path, self.max_len, self._pad_token = path, max_len, pad_token
    self._reported_cut = False
    if json_str is None:
      try:
        with open(path, encoding="utf-8") as f:
          json_str = f.read()
      except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from None
    self._json, self._tok = json_str, None
    self.tok  # pylint: disable=pointless-statement  (a broken file fails here, not in a grain worker)

  @classmethod
  def from_str(cls, json_str: str, max_len: int, name: str) -> "Tokenizer":
    return cls(name, max_len, json_str=json_str)

  @property
  def tok(self):
    if self._tok is None:
      from tokenizers import Tokenizer as HFTokenizer  # pylint: disable=import-outside-toplevel
      try:
        tok = HFTokenizer.from_str(self._json)
      except Exception as e:  # the tokenizers package raises plain Exceptions for malformed files
        raise ValueError(f"{self.path}: not a readable tokenizer.json ({e})") from None
      pad = self._pad_token or next(
          (t for t in ("<pad>", "<|endoftext|>", "[PAD]") if tok.token_to_id(t) is not None), None)
      if pad is None:
        raise ValueError(f"{self.path}: no padding token (<pad>, <|endoftext|>, [PAD]); pass pad_token")
      tok.enable_truncation(self.max_len)
      tok.enable_padding(length=self.max_len, pad_id=tok.token_to_id(pad), pad_token=pad)
      self._tok = tok
    return self._tok

  def __getstate__(self):
    return {**self.__dict__, "_tok": None}

  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size()

  def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    out = self.tok.encode_batch(list(texts))
    cut = [i for i, e in enumerate(out) if e.overflowing]
    if cut and not self._reported_cut:  # once per tokenizer (per process): a caption cut is said, not silent
      self._reported_cut = True
      logging.warning("%s: a caption is longer than its %d tokens and was cut (%d of %d here; the first: %r); "
                      "this is said once per process", self.path, self.max_len, len(cut), len(out),
                      texts[cut[0]][:120])
    return (np.array([e.ids for e in out], np.int32), np.array([e.attention_mask for e in out], bool))

  def decode(self, ids: np.ndarray) -> str:
    return self.tok.decode([int(i) for i in ids])

  def truncates(self, text: str) -> bool:
    return len(self.tok.encode(text).overflowing) > 0


def beside(dataset: str) -> str:
  """The tokenizer.json of a dataset folder (records), or of its parent (the toy world's root)."""
  for folder in (dataset, os.path.dirname(os.path.abspath(dataset).rstrip("/"))):
    if os.path.exists(os.path.join(folder, FILE)):
      return os.path.join(folder, FILE)
  raise FileNotFoundError(f"{dataset}: no {FILE} there or in its parent folder (the toy world writes one: "
                          "python -m data_pipelines.toy_movies)")


def for_data(data_config, path: str = "") -> Tokenizer:
  """The tokenizer of a data config (text_source "tokens"): config.data.tokenizer; else the one beside
  the dataset at `path` (or config.data.path); else, for the toy world (no path, or a dataset its
  generator wrote), the toy world's (a function of its tables)."""
  c, path = data_config, path or data_config.path
  if c.tokenizer:
    return Tokenizer(c.tokenizer, c.text_len)
  if path:
    try:
      return Tokenizer(beside(path), c.text_len)
    except FileNotFoundError:
      from data_pipelines import records  # pylint: disable=import-outside-toplevel
      if records.ShotReader(path).index.info.get("generator") != "toy_movies":
        raise
  from data_pipelines import toy_world  # pylint: disable=import-outside-toplevel
  return Tokenizer.from_str(toy_world.tokenizer_json(), c.text_len, "the toy world's tokenizer")
