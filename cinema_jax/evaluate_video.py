"""The toy-cinema benchmark for shot videos: the video model against holding the keyframe still.

  python -m cinema_jax.evaluate_video --video_workdir=VDIR --storylines=toy|FILE --out=REPORT_DIR
      [--workdir=KEYFRAME_DIR] [--max_storylines=N] [--max_shots=K] [--num_steps=S] [--guidance=G] [--seed=S]

Every held-out shot is judged (cinema_jax/eval/video_metrics.py: keyframe adherence, motion matching
the scripted action, temporal smoothness) in these rows:
  video model, real keyframes       shots generated from the real renders' first frames (the video
                                    stage alone)
  video model, generated keyframes  with --workdir: the keyframe model's keyframes, then the video
                                    model (the whole pipeline)
  hold the keyframe still           the baseline: every frame is the real keyframe
  real shots (reference)            the renders themselves
The ground truth is storylines_truth.jsonl beside FILE; its scripts must have the video model's frames
per shot (--storylines=toy: the video model's own toy world). Writes report.json and report.md.
"""

import sys

from absl import app
from absl import flags

from cinema_jax import cli
from cinema_jax import errors
from cinema_jax.eval import video_benchmark


def _define_flags() -> dict:
  return {
      "video_workdir": flags.DEFINE_string("video_workdir", None, "The video model's workdir.", required=True),
      "workdir": flags.DEFINE_string("workdir", None, "A keyframe model's workdir: also score the whole pipeline."),
      "storylines": flags.DEFINE_string("storylines", "toy", "Storylines JSONL (truth beside it), or 'toy': the "
                                        "held-out storylines of the video model's toy world."),
      "out": flags.DEFINE_string("out", None, "Report directory.", required=True),
      "max_storylines": flags.DEFINE_integer("max_storylines", 0, "Use the first N storylines (0: all).",
                                             lower_bound=0),
      "max_shots": flags.DEFINE_integer("max_shots", 8, "Shots per storyline (0: all).", lower_bound=0),
      "num_steps": flags.DEFINE_integer("num_steps", None, "Euler steps (default: the configs').", lower_bound=1),
      "guidance": flags.DEFINE_float("guidance", None, "CFG scale (default: the configs').", lower_bound=0.0),
      "seed": flags.DEFINE_integer("seed", 0, "Sampling seed; storyline i uses seed + i."),
  }


def main(argv, f: dict) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  v = {k: flag.value for k, flag in f.items()}
  try:
    video_benchmark.run(v)
  except (errors.CheckpointError, errors.DataError, FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, _flags), flags_parser=cli.parse_flags)
