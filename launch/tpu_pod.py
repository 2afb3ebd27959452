"""Runs one command on every worker of a Cloud TPU VM pod slice, through `gcloud ... tpu-vm ssh --worker=all`.

  python -m launch.tpu_pod --tpu=NAME --zone=ZONE [--project=P] [--setup] [--env KEY=VALUE ...] [--dry_run] -- \
      python -m cinema_jax.train --config=configs/keyframe.py --workdir=gs://BUCKET/run1 --distributed

Each worker runs `cd WORKDIR_ON_VM && [export KEY=VALUE && ...] CMD` (WORKDIR_ON_VM: --workdir_on_vm, by
default ~/ and this checkout's folder name). The checkout must already be there on every worker, e.g.
`gcloud compute tpus tpu-vm scp --recurse . NAME:~/ --worker=all --zone=ZONE`, or a git clone.
--setup first installs it there (`pip install -e '.[tpu]'`, a gcloud call of its own). The trainer needs
--distributed and nothing else: JAX finds the pod's workers itself. The workdir should be a bucket
(gs://...) that every worker can reach, not a VM's local disk.

Prints each gcloud command (`+ ...`) before running it; --dry_run only prints. The exit status is the
first failing gcloud call's (gcloud exits non-zero when a worker's command does).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys

REPO_DIR_NAME = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The TPU extra, not plain `.`: otherwise pip installs the CPU jaxlib and the trainer silently runs on CPU.
SETUP_COMMAND = ["pip", "install", "-e", ".[tpu]"]


def quote_path(path: str) -> str:
  # shlex.quote would put `~` in quotes, where the remote shell no longer expands it.
  if path == "~":
    return path
  if path.startswith("~/"):
    return "~/" + shlex.quote(path[2:])
  return shlex.quote(path)


def remote_command(workdir: str, env: list[tuple[str, str]], cmd: list[str]) -> str:
  parts = [f"cd {quote_path(workdir)}"] + [f"export {k}={shlex.quote(v)}" for k, v in env] + [shlex.join(cmd)]
  return " && ".join(parts)


def gcloud_command(tpu: str, zone: str, project: str | None, remote: str) -> list[str]:
  project_args = ["--project", project] if project else []
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, "--zone", zone, *project_args,
          "--worker=all", "--command", remote]


def parse_env(items: list[str], parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
  env = []
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      parser.error(f"--env {item!r}: expected KEY=VALUE with KEY a shell variable name")
    env.append((key, value))
  return env


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tpu", required=True, help="the TPU VM (pod slice) name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default=None, help="default: gcloud's configured project")
  parser.add_argument("--workdir_on_vm", default=f"~/{REPO_DIR_NAME}", help="the checkout on each worker (%(default)s)")
  parser.add_argument("--setup", action="store_true", help="first `pip install -e '.[tpu]'` on every worker")
  parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                      help="exported on every worker before the command and the setup (repeatable)")
  parser.add_argument("--dry_run", action="store_true", help="print the gcloud commands, run nothing")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
  args = parser.parse_args(argv)
  cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not cmd:
    parser.error("expected -- COMMAND")
  env = parse_env(args.env, parser)

  calls = [gcloud_command(args.tpu, args.zone, args.project, remote_command(args.workdir_on_vm, env, c))
           for c in ([SETUP_COMMAND] if args.setup else []) + [cmd]]
  if not args.dry_run and shutil.which("gcloud") is None:
    print("tpu_pod launcher: error: gcloud is not on PATH (install the Google Cloud CLI, or use --dry_run)",
          file=sys.stderr)
    return 2
  for call in calls:
    print(f"+ {shlex.join(call)}", flush=True)
    if args.dry_run:
      continue
    status = subprocess.run(call, check=False).returncode
    if status:
      # No point running the trainer on workers where the setup failed.
      print(f"tpu_pod launcher: gcloud exited with {status}", file=sys.stderr, flush=True)
      return status
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
