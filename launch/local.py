"""Starts N copies of a command on this machine, each a process of one multi-process job.

  python -m launch.local --processes=2 --devices_per_process=2 [--coordinator] -- \
      python -m cinema_jax.sample --workdir=DIR --storylines=FILE --outdir=OUT

Process i gets `--process_id=i --num_processes=N` appended (and `--coordinator_address=localhost:PORT`
with --coordinator, for commands that start JAX's distributed runtime, like cinema_jax.train), and
runs on M fake CPU devices (XLA_FLAGS). Prints what it runs. If a process fails, the others are
stopped; the exit status is the first failure's (0 when all succeed). What a pod or cluster launcher
does per host, on loopback: used by the tests and for trying multi-process runs on one machine.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time

import portpicker


def commands(cmd: list[str], processes: int, coordinator: bool) -> list[list[str]]:
  extra = [f"--coordinator_address=localhost:{portpicker.pick_unused_port()}"] if coordinator else []
  return [cmd + extra + [f"--process_id={i}", f"--num_processes={processes}"] for i in range(processes)]


def environment(devices_per_process: int) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
  return env


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--coordinator", action="store_true", help="append --coordinator_address (JAX distributed)")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
  args = parser.parse_args(argv)
  cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not cmd or args.processes < 1 or args.devices_per_process < 1:
    parser.error("expected --processes >= 1, --devices_per_process >= 1 and -- COMMAND")
  env = environment(args.devices_per_process)
  procs = []
  for c in commands(cmd, args.processes, args.coordinator):
    print(f"+ XLA_FLAGS={shlex.quote(env['XLA_FLAGS'])} {shlex.join(c)}", flush=True)
    procs.append(subprocess.Popen(c, env=env))

  def stop(*_):
    for p in procs:
      if p.poll() is None:
        p.terminate()

  signal.signal(signal.SIGTERM, stop)
  status = 0
  while None in [p.poll() for p in procs]:  # a list, not any(): every process is polled each time
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if failed and not status:
      status = failed[0]
      print(f"local launcher: a process exited with {status}; stopping the others", file=sys.stderr, flush=True)
      stop()
    time.sleep(0.2)
  return status or next((p.returncode for p in procs if p.returncode), 0)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
