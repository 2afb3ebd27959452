"""Dynamic strided sampling: the overlap bound, determinism, fixed epoch length, varying strides."""

import math

import numpy as np
import pytest

from data_pipelines import windows


@pytest.mark.parametrize("num_pairs,max_overlap", [(8, 0.25), (16, 0.25), (4, 0.25), (5, 0.0), (8, 0.5)])
def test_windows_of_a_movie_overlap_at_most_the_bound(num_pairs, max_overlap):
  rng = np.random.default_rng(num_pairs)
  lengths = rng.integers(num_pairs, 70, size=40).tolist() + [num_pairs, 3]
  plan = windows.WindowPlan(lengths, num_pairs, max_stride=4, max_overlap=max_overlap, seed=1)
  bound = math.floor(max_overlap * num_pairs)
  for epoch in range(4):
    movies, shots, strides = plan.epoch(epoch)
    assert len(movies) == plan.epoch_length
    for m in np.unique(movies):
      mine = shots[movies == m]
      assert len(mine) == plan.quota[m]
      for w, s in zip(mine, strides[movies == m]):
        assert w.min() >= 0 and w.max() < lengths[m]
        assert (np.diff(w) == s).all()  # one stride per window
      sets = [set(w.tolist()) for w in mine]
      for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
          assert len(sets[i] & sets[j]) <= bound, (epoch, m, mine[i], mine[j])
  assert plan.quota[-1] == 0  # too short for a window: never sampled
  assert plan.quota[-2] == 1


def test_sixteen_of_thirty_two_yields_several_strides_and_offsets():
  plan = windows.WindowPlan([32], 16, max_stride=4, seed=0)
  assert plan.strides[0] == [1, 2]
  seen = {tuple(plan.epoch(e)[1][0]) for e in range(40)}
  assert len(seen) > 6  # offsets and strides change across epochs
  assert {int(plan.epoch(e)[2][0]) for e in range(40)} == {1, 2}


def test_deterministic_from_seed_and_indexable():
  lengths = [9, 20, 33, 64, 12]
  a = windows.WindowPlan(lengths, 8, seed=3)
  b = windows.WindowPlan(lengths, 8, seed=3)
  c = windows.WindowPlan(lengths, 8, seed=4)
  for e in range(3):
    for x, y in zip(a.epoch(e), b.epoch(e)):
      np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(a.epoch(0), c.epoch(0)))
  assert any(not np.array_equal(x, y) for x, y in zip(a.epoch(0), a.epoch(1)))
  L = a.epoch_length
  w = a[2 * L + 3]
  assert w["epoch"] == 2 and w["movie"] == a.epoch(2)[0][3]
  np.testing.assert_array_equal(w["shots"], a.epoch(2)[1][3])


def test_epochs_and_errors():
  plan = windows.WindowPlan([10, 20], 8, num_epochs=2)
  assert len(plan) == 2 * plan.epoch_length
  with pytest.raises(IndexError):
    plan[len(plan)]
  assert len(windows.WindowPlan([10], 8)) > 10**15  # repeats forever
  with pytest.raises(ValueError, match="no movie has the 8 shots a window needs"):
    windows.WindowPlan([3, 7], 8)
  with pytest.raises(ValueError, match="bad window spec"):
    windows.WindowPlan([10], 8, max_overlap=1.0)


def test_strided_windows_reach_every_placement():
  # Over epochs, the windows of a movie take every placement the overlap bound allows: for 16 of 32
  # shots, two contiguous windows 12 or more apart (15 placements); strides add stride-2 windows.
  contiguous = windows.WindowPlan([32], 16, max_stride=1, seed=0)
  placements = {tuple(sorted(int(w[0]) for w in contiguous.epoch(e)[1])) for e in range(300)}
  assert placements == {(a, b) for a in range(17) for b in range(17) if b - a >= 12}
  strided = windows.WindowPlan([32], 16, max_stride=2, seed=0)
  seen = {tuple(w.tolist()) for e in range(300) for w in strided.epoch(e)[1]}
  assert {tuple(range(0, 32, 2)), tuple(range(1, 32, 2))} < seen
  assert {tuple(range(a, a + 16)) for a in (0, 4, 12, 16)} < seen
