"""Context retrieval: which earlier shots a new shot sees, and in what order (paper: "Context retrieval").

One function, `select`, serves the pipeline (training windows) and the sampler (the generated history):
it scores every earlier shot against the new one, keeps the top k, and orders them by ascending score,
so the most relevant context sits next to the new shot (GoldenMem keeps the newest slots at full
resolution). Orders (config.data.context_order):
  chronological  the k most recent shots, oldest first (no retrieval)
  text           caption to caption similarity (text to text)
  image          the new caption against the earlier keyframes (text to image, the paper's best), in
                 a contrastive image/text space: CLIP on real data (the records' pre-computed embeddings,
                 cinema_jax.encoders.ClipEmbedding while sampling), ToyCLIP (cinema_jax.toy_clip) in the toy world
Scores mix similarity with recency: (1 - recency) * similarity + recency * (position / count).

Caption embeddings for "text" in the toy world: `words`, a hashed bag of words without stop words
(names and places carry the meaning in toy captions); real data uses CLIP text embeddings.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

ORDERS = ("chronological", "text", "image")
WORDS_DIM = 512
_STOP = frozenset("a an the in at on of to and shot wide medium close is are walks stands still comes closer "
                  "away jumps left right".split())


def words_embedding(caption: str, dim: int = WORDS_DIM) -> np.ndarray:
  """float32 [dim], unit norm: a hashed bag of the caption's content words (stable across processes)."""
  v = np.zeros(dim, np.float32)
  for w in re.findall(r"[a-z]+", caption.lower()):
    if w not in _STOP:
      v[int.from_bytes(hashlib.blake2s(w.encode(), digest_size=4).digest(), "little") % dim] += 1.0
  n = np.linalg.norm(v)
  return v / n if n else v


def scores(query_D: np.ndarray, history_KD: np.ndarray, recency: float = 0.0) -> np.ndarray:
  """float [K]: cosine similarity of each earlier shot to the query, mixed with recency."""
  k = len(history_KD)
  if k == 0:
    return np.zeros(0, np.float32)
  h = history_KD / np.maximum(np.linalg.norm(history_KD, axis=-1, keepdims=True), 1e-12)
  q = query_D / max(float(np.linalg.norm(query_D)), 1e-12)
  sim = h @ q
  return (1 - recency) * sim + recency * (np.arange(1, k + 1) / k)


def select(order: str, count: int, k: int, *, query=None, history=None, recency: float = 0.0) -> np.ndarray:
  """Indices (into the `count` earlier shots, 0 = oldest) of the context of a new shot, at most k.

  chronological: the k most recent, oldest first. text / image: the top k by score (query [D]
  against history [count, D]), ordered by ascending score (ties: older first), the best last.
  """
  if order not in ORDERS:
    raise ValueError(f"context order {order!r}: expected one of {ORDERS}")
  k = min(k, count)
  if k <= 0:
    return np.zeros(0, np.int64)
  if order == "chronological":
    return np.arange(count - k, count)
  if query is None or history is None or len(history) != count:
    raise ValueError(f"context order {order!r} needs a query embedding and {count} history embeddings")
  s = scores(np.asarray(query, np.float32), np.asarray(history, np.float32), recency)
  top = np.argsort(-s, kind="stable")[:k]  # best first; stable: older first among equals
  return top[np.argsort(s[top], kind="stable")]
