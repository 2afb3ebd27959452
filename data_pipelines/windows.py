"""Dynamic strided sampling of shot windows (the paper's training-sequence sampler).

An example is P shots of one movie taken with a stride s: shots (a, a+s, ..., a+(P-1)s). Each epoch
every movie draws a stride from the strides that fit and fresh offsets, so the same movie yields
different sequences from epoch to epoch. Within an epoch, the windows of one movie share at most
floor(max_overlap * P) shots with each other:

- for stride s the shots split into s residue classes (c, c+s, c+2s, ...), which share nothing;
- inside a class, windows start at least q = P - floor(max_overlap * P) class positions apart, so
  two windows of a class share at most P - q shots; the starts are drawn at random among all the
  placements of that many windows.

Each movie contributes the same number of windows every epoch (the fewest that any fitting stride
yields), so an epoch has a fixed length and example i is found in O(1): epoch i // L, slot i % L.
"""

from __future__ import annotations

import math
import sys

import numpy as np


def class_step(num_pairs: int, max_overlap: float) -> int:
  return num_pairs - math.floor(max_overlap * num_pairs)


def family_size(num_shots: int, num_pairs: int, stride: int, step: int) -> int:
  """How many windows stride `stride` yields from a movie of `num_shots` shots."""
  total = 0
  for c in range(stride):
    length = len(range(c, num_shots, stride))
    if length >= num_pairs:
      total += (length - num_pairs) // step + 1
  return total


def _family(num_shots: int, num_pairs: int, stride: int, step: int, rng: np.random.Generator) -> np.ndarray:
  """All windows of one stride, offsets drawn from rng: int32 [n, P] shot indices."""
  out = []
  pair = np.arange(num_pairs)
  for c in range(stride):
    length = len(range(c, num_shots, stride))
    if length < num_pairs:
      continue
    count = (length - num_pairs) // step + 1
    # Starts a_j = c_j + j * (step - 1) with c_0 < c_1 < ... drawn uniformly: consecutive windows are
    # at least `step` apart and every spacing that fits the class is possible.
    room = length - num_pairs - (count - 1) * (step - 1) + 1
    starts = np.sort(rng.choice(room, size=count, replace=False)) + np.arange(count) * (step - 1)
    for a in starts:
      out.append(c + (a + pair) * stride)
  return np.asarray(out, np.int32).reshape(-1, num_pairs)


class WindowPlan:
  """The windows of every epoch, for movies of the given lengths; deterministic from `seed`."""

  def __init__(self, num_shots: list[int], num_pairs: int, *, max_stride: int = 4,
               max_overlap: float = 0.25, seed: int = 0, num_epochs: int | None = None):
    if num_pairs < 1 or max_stride < 1 or not 0 <= max_overlap < 1:
      raise ValueError(f"bad window spec: num_pairs={num_pairs}, max_stride={max_stride}, "
                       f"max_overlap={max_overlap}")
    self.num_shots = [int(n) for n in num_shots]
    self.num_pairs, self.max_stride, self.seed, self.num_epochs = num_pairs, max_stride, seed, num_epochs
    self.max_overlap = max_overlap
    self.step = class_step(num_pairs, max_overlap)
    self.strides: list[list[int]] = []  # per movie, the strides that yield windows
    self.quota = np.zeros(len(self.num_shots), np.int64)  # per movie, windows per epoch
    for m, n in enumerate(self.num_shots):
      sizes = {s: family_size(n, num_pairs, s, self.step) for s in range(1, max_stride + 1)}
      fits = [s for s, k in sizes.items() if k > 0]
      self.strides.append(fits)
      self.quota[m] = min(sizes[s] for s in fits) if fits else 0
    self.epoch_length = int(self.quota.sum())
    self._epochs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if self.epoch_length == 0:
      raise ValueError(f"no movie has the {num_pairs} shots a window needs (longest: "
                       f"{max(self.num_shots, default=0)})")

  @property
  def num_movies_used(self) -> int:
    return int((self.quota > 0).sum())

  def __len__(self) -> int:
    return sys.maxsize if self.num_epochs is None else self.epoch_length * self.num_epochs

  def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(movie int32 [L], shots int32 [L, P], stride int32 [L]) of one epoch, in shuffled order."""
    if epoch not in self._epochs:
      if len(self._epochs) >= 4:  # readers move forward: keep the few most recent epochs
        self._epochs.pop(next(iter(self._epochs)))
      self._epochs[epoch] = self._plan(epoch)
    return self._epochs[epoch]

  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    movies, shots, strides = [], [], []
    for m, n in enumerate(self.num_shots):
      if not self.quota[m]:
        continue
      rng = np.random.default_rng([self.seed, epoch, m])
      stride = self.strides[m][rng.integers(len(self.strides[m]))]
      family = _family(n, self.num_pairs, stride, self.step, rng)
      keep = family[np.sort(rng.permutation(len(family))[:self.quota[m]])]
      movies.append(np.full(len(keep), m, np.int32))
      shots.append(keep)
      strides.append(np.full(len(keep), stride, np.int32))
    order = np.random.default_rng([self.seed, epoch]).permutation(self.epoch_length)
    return (np.concatenate(movies)[order], np.concatenate(shots)[order], np.concatenate(strides)[order])

  def __getitem__(self, i: int) -> dict[str, np.ndarray | int]:
    if not 0 <= i < len(self):
      raise IndexError(f"window {i} out of range [0, {len(self)})")
    e, j = divmod(int(i), self.epoch_length)
    movies, shots, strides = self.epoch(e)
    return {"movie": int(movies[j]), "shots": shots[j], "stride": int(strides[j]), "epoch": e}
