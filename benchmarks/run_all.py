"""The performance suite: every benchmark, one after the other, into one Markdown report.

  python -m benchmarks.run_all [--out=runs/benchmarks.md] [--only=train_step,sampling] [--quick]

Each benchmark runs in its own process (its own flags and compilation), with the command printed
above its table, so any row can be re-run alone. The figures go to BENCHMARKS.md by hand, with the
machine and commit this report names. --quick runs the smoke-test sizes where a benchmark has them
(checks that the suite works; the figures mean nothing).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags

from cinema_jax import cli

# (name, module arguments, what it measures); the suite of issue 11, then the robustness ones.
SUITE = (
    ("train_step", [], "train step tokens/s and MFU (demo, wide); cinema_jax vs diffusers FLUX, fwd+bwd and fwd"),
    ("pair_attention", [], "pair-by-pair double-stream attention vs a masked full attention, 8/16/32 pairs"),
    ("goldenmem", [], "GoldenMem step time and memory vs full-resolution context, 8/16/32/48 pairs"),
    ("sampling", [], "sampling, KV cache vs none, 8/16/32 pairs, 28 steps, s per keyframe"),
    ("data", [], "toy rendering, pipeline windows/s, and the demo pipeline vs its train step's consumption"),
    ("compile_time", [], "compile time of the train step vs depth (scanned layers)"),
    ("long_attention", [], "blockwise attention vs the XLA reference, time and memory, 1K to 32K tokens"),
    ("autoencoder_step", [], "the toy autoencoder's train step: XLA's convolution kernel gradient vs chunked"),
    ("checkpoint_save", [], "each save's checksums of the state vs the save and the train step (demo, wide)"),
)
QUICK_ARGS = {"train_step": ["--quick"], "pair_attention": ["--quick", "--pairs=4"],
              "goldenmem": ["--pairs=8", "--budget_pairs=8", "--max_pairs=16"],
              "sampling": ["--quick", "--pairs=3", "--repeats=1"], "data": ["--num_batches=8"],
              "compile_time": ["--quick"], "long_attention": ["--quick"], "autoencoder_step": ["--quick"],
              "checkpoint_save": ["--quick"]}

_OUT = flags.DEFINE_string("out", "runs/benchmarks.md", "The report (Markdown).")
_ONLY = flags.DEFINE_list("only", [], "Run only these benchmarks (names: " + ", ".join(s[0] for s in SUITE) + ").")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke-test sizes: checks the suite, measures nothing.")


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  names = [s[0] for s in SUITE]
  unknown = set(_ONLY.value) - set(names)
  if unknown:
    sys.exit(f"error: --only: unknown benchmarks {sorted(unknown)}; known: {', '.join(names)}")
  lines = [f"# Performance suite, {datetime.date.today()}", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; commit "
           f"{_commit()}{'; --quick: smoke-test sizes, not figures' if _QUICK.value else ''}.", ""]
  failed = []
  for name, args, what in SUITE:
    if _ONLY.value and name not in _ONLY.value:
      continue
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *args, *(QUICK_ARGS.get(name, []) if _QUICK.value else [])]
    shown = " ".join(["python", *cmd[1:]])
    print(f"== {name}: {shown}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    out = done.stdout.strip()
    lines += [f"## {name}: {what}", "", f"`{shown}` ({seconds:.0f} s)", "", out, ""]
    if done.returncode:
      failed.append(name)
      lines += ["FAILED:", "```", done.stderr.strip()[-3000:], "```", ""]
    print(out + ("\nFAILED:\n" + done.stderr[-3000:] if done.returncode else ""), flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"report: {_OUT.value}")
  if failed:
    sys.exit(f"error: {', '.join(failed)} failed (their errors are in the report)")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
