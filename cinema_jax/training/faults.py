"""What the training loop does when the world misbehaves: preemption, non-finite steps, failed saves.

  Preemption      SIGTERM (one process) or JAX's preemption sync point (several: every process must
                  stop at the same step, which only the coordination service can agree on) asks the
                  loop to save at the next step boundary, wait for the save to commit, and return.
  NonFiniteGuard  config.nonfinite.policy: "stop" at the first step whose loss, gradient or update is
                  not finite (the step itself already left the state unchanged), naming the step and
                  the quantity; or "skip" such steps, counting them, and stop after
                  config.nonfinite.max_consecutive in a row.
  save errors     config.checkpoint.on_save_error: "stop" with a message that names the step and the
                  last complete checkpoint, or "retry" at the next checkpoint step (the final save
                  must succeed). Orbax deletes old steps only after a newer one is committed.
"""

from __future__ import annotations

import signal
import threading

from absl import logging
import jax

from cinema_jax import errors

NONFINITE_POLICIES = ("stop", "skip")
SAVE_ERROR_POLICIES = ("stop", "retry")
# The step reports the first non-finite quantity as a code (0: none), in this order.
NONFINITE_QUANTITIES = ("loss", "gradient", "update")


class Preemption:
  """A context manager whose `requested(step)` says whether to stop at this step boundary."""

  def __init__(self):
    self._signalled = threading.Event()
    self._previous = None

  def __enter__(self) -> "Preemption":
    # Several processes: JAX's preemption service owns SIGTERM and agrees on the step (requested()).
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:  # pylint: disable=unused-argument
    logging.warning("SIGTERM: saving a checkpoint at the next step boundary, then exiting")
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
      raise errors.TrainingError(f"{what}; stopped without applying it. The last checkpoint ({saved}) is intact.")
    self.skipped += 1
    self.consecutive += 1
    if self.consecutive >= self.max_consecutive:
      raise errors.TrainingError(f"{what}: {self.consecutive} steps in a row skipped (config.nonfinite."
                                 f"max_consecutive={self.max_consecutive}), {self.skipped} in all; stopped. The last "
                                 f"checkpoint ({saved}) is intact.")
    logging.warning("%s: update skipped (%d in a row, %d in all)", what, self.consecutive, self.skipped)
    return m
