"""Runs a command with a fault that no flag or file can cause, for the hostile-input suite (tests/hostile.py):

    python -m tests.hostile_inject async_commit cinema_jax.train --config=... --workdir=...

async_commit: every asynchronous checkpoint commit fails in Orbax's background thread, as a full disk or a
lost filesystem would make it fail after the step's arrays were handed over.
"""

import runpy
import sys


def _failing_commit(*args, **kwargs):
  del args, kwargs
  raise OSError(28, "No space left on device (injected by tests.hostile_inject)")


FAULTS = {"async_commit": ("orbax.checkpoint._src.checkpointers.async_checkpointer", "_on_commit_callback",
                           _failing_commit)}


def main() -> None:
  if len(sys.argv) < 3 or sys.argv[1] not in FAULTS:
    sys.exit(f"usage: python -m tests.hostile_inject {{{'|'.join(FAULTS)}}} MODULE [ARGS...]")
  fault, module, *args = sys.argv[1:]
  where, name, replacement = FAULTS[fault]
  target = __import__(where, fromlist=[name])
  if not hasattr(target, name):  # an Orbax upgrade moved it: say so rather than run without the fault
    sys.exit(f"error: {where}.{name} is gone; update tests/hostile_inject.py for this Orbax version")
  setattr(target, name, replacement)
  sys.argv = [module, *args]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
