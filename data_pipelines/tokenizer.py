"""Byte-level tokenizer for the toy world's captions: UTF-8 bytes shifted by one, 0 is padding."""

from __future__ import annotations

import numpy as np

PAD_ID = 0
VOCAB_SIZE = 257


def encode(text: str, max_len: int) -> tuple[np.ndarray, np.ndarray, bool]:
  """(ids int32 [max_len], mask bool [max_len], truncated): UTF-8 bytes + 1, right-padded with 0."""
  data = text.encode("utf-8")
  truncated = len(data) > max_len
  data = data[:max_len]
  ids = np.zeros(max_len, np.int32)
  ids[:len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + 1
  mask = np.zeros(max_len, bool)
  mask[:len(data)] = True
  return ids, mask, truncated


def decode(ids: np.ndarray) -> str:
  ids = np.asarray(ids)
  return bytes((ids[ids != PAD_ID] - 1).astype(np.uint8).tolist()).decode("utf-8", errors="replace")
