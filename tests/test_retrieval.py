"""Context retrieval: flashbacks find their scene, one code path for the pipeline and the sampler."""

import numpy as np
import pytest

from cinema_jax import retrieval
from data_pipelines import toy_world


def _names(shot):
  return {c["name"] for c in shot["characters"]}


def test_retrieval_puts_a_flashbacks_matching_shots_first():
  world = toy_world.WorldConfig()
  flashbacks = matching_best = opening_found = opening_recent = 0
  for m in range(200):
    shots = toy_world.make_movie(0, m, world)["shots"]
    ks = [k for k, s in enumerate(shots) if s["flashback_of_scene"] is not None]
    if not ks:
      continue
    k, flashbacks = ks[0], flashbacks + 1
    emb = np.stack([retrieval.words_embedding(s["caption"]) for s in shots])
    chosen = retrieval.select("text", k, 4, query=emb[k], history=emb[:k])
    best = shots[chosen[-1]]  # the most relevant sits last, next to the new shot
    matching_best += best["location"]["name"] == shots[k]["location"]["name"] and bool(_names(best) & _names(shots[k]))
    opening_found += any(shots[i]["scene"] == 0 for i in chosen)
    opening_recent += any(shots[i]["scene"] == 0 for i in retrieval.select("chronological", k, 4))
  assert flashbacks > 50
  assert matching_best == flashbacks  # same place and someone of the same cast, every time
  assert opening_found >= 0.9 * flashbacks and opening_recent <= 0.1 * flashbacks


def test_select_orders_and_limits():
  np.testing.assert_array_equal(retrieval.select("chronological", 10, 3), [7, 8, 9])
  np.testing.assert_array_equal(retrieval.select("chronological", 2, 5), [0, 1])
  assert retrieval.select("text", 0, 3, query=np.ones(4), history=np.zeros((0, 4))).size == 0
  history = np.eye(4)[[0, 1, 2, 0]]  # shots 0 and 3 say the same thing
  query = np.array([1.0, 0.2, 0.0, 0.0])
  np.testing.assert_array_equal(retrieval.select("text", 4, 3, query=query, history=history), [1, 0, 3])
  # recency 1: only position counts, which is the chronological order
  np.testing.assert_array_equal(retrieval.select("text", 4, 3, query=query, history=history, recency=1.0), [1, 2, 3])
  with pytest.raises(ValueError, match="context order 'clip'"):
    retrieval.select("clip", 4, 3)
  with pytest.raises(ValueError, match="needs a query embedding and 4 history embeddings"):
    retrieval.select("text", 4, 3)


def test_words_embedding_ignores_framing_and_action_words():
  a = retrieval.words_embedding("Wide shot in the forest. Mia jumps.")
  b = retrieval.words_embedding("Close shot in the forest. Mia walks to the left.")
  np.testing.assert_allclose(a, b)
  assert float(a @ retrieval.words_embedding("Close shot in the desert. Tom jumps.")) == 0.0
