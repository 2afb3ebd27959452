"""What the training loop does when the world misbehaves: preemption, non-finite steps, failed saves.

  Preemption      SIGTERM or Ctrl-C (SIGINT) in one process, or JAX's preemption sync point (several:
                  every process must stop at the same step, which only the coordination service can
                  agree on) asks the loop to save at the next step boundary, wait for the save to
                  commit, and return; the train command then exits 0 (SIGTERM, a preemption) or
                  INTERRUPTED_EXIT_CODE (SIGINT). A second SIGINT stops the process at once, without a
                  save: the last committed checkpoint stays whole (Orbax commits by renaming).
  NonFiniteGuard  config.nonfinite.policy: "stop" at the first step whose loss, gradient or update is
                  not finite (the step itself already left the state unchanged), naming the step and
                  the quantity; or "skip" such steps, counting them, and stop after
                  config.nonfinite.max_consecutive in a row.
  save errors     config.checkpoint.on_save_error: "stop" with a message that names the step and the
                  last complete checkpoint, or "retry" at the next checkpoint step (the final save
                  must succeed). Orbax deletes old steps only after a newer one is committed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from absl import logging
import jax

from cinema_jax import errors

NONFINITE_POLICIES = ("stop", "skip")
SAVE_ERROR_POLICIES = ("stop", "retry")
# The step reports the first non-finite quantity as a code (0: none), in this order.
NONFINITE_QUANTITIES = ("loss", "gradient", "update")
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: what shells report for a Ctrl-C


class Preemption:
  """A context manager whose `requested(step)` says whether to stop at this step boundary."""

  def __init__(self):
    self._signalled = threading.Event()
    self._previous = {}
    self.signal: str | None = None  # the name of the signal that asked to stop (None: the sync point)

  def __enter__(self) -> "Preemption":
    # Several processes: JAX's preemption service owns SIGTERM and agrees on the step (requested()).
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _on_signal(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if signum == signal.SIGINT and self._signalled.is_set():  # a second Ctrl-C: stop now
      sys.stderr.write("error: a second SIGINT: stopped at once, without a save; the last committed checkpoint "
                       "is whole\n")
      sys.stderr.flush()
      os._exit(INTERRUPTED_EXIT_CODE)  # pylint: disable=protected-access
    self.signal = signal.Signals(signum).name
    logging.warning("%s: saving a checkpoint at the next step boundary, then exiting%s", self.signal,
                    " (Ctrl-C again stops at once, without a save)" if signum == signal.SIGINT else "")
    self._signalled.set()

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax._src import distributed  # pylint: disable=g-import-not-at-top
      if distributed.global_state.preemption_sync_manager is not None:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled.is_set()


class NonFiniteGuard:
  """Checks each step's fetched metrics against config.nonfinite."""

  def __init__(self, policy: str, max_consecutive: int):
    self.policy, self.max_consecutive = policy, max_consecutive
    self.skipped = self.consecutive = 0

  def check(self, step: int, m: dict[str, float], last_saved: int | None) -> dict[str, float]:
    """The step's metrics without its non-finite code; raises errors.TrainingError when the run must stop."""
    code = int(m.pop("nonfinite"))
    if not code:
      self.consecutive = 0
      return m
    what = (f"non-finite {NONFINITE_QUANTITIES[code - 1]} at step {step} (loss {m['loss']}, grad norm "
            f"{m['grad_norm']})")
    saved = f"step {last_saved}" if last_saved is not None else "none"
    if self.policy == "stop":
      raise errors.TrainingError(f"{what}; stopped without applying it. The last checkpoint ({saved}) is "
                                 "untouched (a resume verifies it).")
    self.skipped += 1
    self.consecutive += 1
    if self.consecutive >= self.max_consecutive:
      raise errors.TrainingError(f"{what}: {self.consecutive} steps in a row skipped (config.nonfinite."
                                 f"max_consecutive={self.max_consecutive}), {self.skipped} in all; stopped. The last "
                                 f"checkpoint ({saved}) is untouched (a resume verifies it).")
    logging.warning("%s: update skipped (%d in a row, %d in all)", what, self.consecutive, self.skipped)
    return m
