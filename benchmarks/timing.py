"""Timing shared by the benchmarks: medians of blocking calls, alternated so drift hits all alike."""

from __future__ import annotations

import statistics
import time


def median_times(fns: dict, steps: int, warmup: int) -> dict[str, float]:
  """Median seconds per call of each blocking fn; calls alternate so machine drift hits all alike."""
  for f in fns.values():
    for _ in range(warmup):
      f()
  times = {k: [] for k in fns}
  for _ in range(steps):
    for k, f in fns.items():
      start = time.perf_counter()
      f()
      times[k].append(time.perf_counter() - start)
  return {k: statistics.median(v) for k, v in times.items()}
