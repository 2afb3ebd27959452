"""Starting JAX's multi-controller runtime: one process per host (or per GPU), all running the same program.

  python -m cinema_jax.train ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  python -m cinema_jax.train ... --distributed=auto       # TPU pods, SLURM, ...: JAX finds the cluster

Nothing to pass for one process. A process that dies stops sending heartbeats; after
--heartbeat_timeout_s the coordination service fails the others, and a collective that was waiting on
the dead process fails at once (its connection resets). `collective_failure` turns either into one
line and an immediate exit, instead of a hang or a wait in shutdown barriers. On CPU the processes
talk through gloo.
"""

from __future__ import annotations

import os
import sys

import jax

from cinema_jax import errors


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
               auto: bool = False, heartbeat_timeout_s: int = 100) -> None:
  """jax.distributed.initialize from explicit flags, from the cluster's environment (auto), or not at all."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(x is not None for x in explicit):
    if any(x is None for x in explicit):
      raise errors.DistributedError("--coordinator_address, --num_processes and --process_id go together; got "
                                    f"{coordinator_address!r}, {num_processes!r}, {process_id!r}")
    if not 0 <= process_id < num_processes:
      raise errors.DistributedError(f"--process_id={process_id}: expected 0 <= id < --num_processes={num_processes}")
    if num_processes == 1:
      return
  elif not auto:
    return
  # Cross-process collectives on the CPU backend (tests, CPU clusters); other backends ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if auto:
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)
  else:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)


# What a failed collective or barrier says; Orbax re-raises some of them as other types (ValueError).
_PEER_FAILURE = ("Gloo", "heartbeat", "Barrier failed", "coordination service", "Connection reset", "NCCL")


def collective_failure(e: BaseException) -> None:
  """Exits this process at once with one line when `e` is a failed cross-process collective."""
  text = str(e)
  if jax.process_count() > 1 and (isinstance(e, jax.errors.JaxRuntimeError) or any(k in text for k in _PEER_FAILURE)):
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    print(f"error: process {jax.process_index()} of {jax.process_count()}: a cross-process operation failed, "
          f"another process has probably died ({first[:300]}); checkpoints committed so far are whole",
          file=sys.stderr, flush=True)
    os._exit(1)  # not sys.exit: shutdown would wait in barriers for the dead process
