"""The toy-cinema benchmark: sample storylines at several context lengths, judge them, write a report.

  python -m cinema_jax.evaluate --workdir=DIR --storylines=FILE|toy --out=REPORT_DIR
      [--num_pairs=1,8,16,24,32] [--max_storylines=N] [--max_shots=K] [--num_steps=S] [--guidance=G]
      [--memory=none|goldenmem] [--context_order=chronological|text|image] [--context_t=a,b]
  python -m cinema_jax.evaluate --samples=DIR[,DIR...] --storylines=FILE --out=REPORT_DIR

The first form samples every storyline once per context length (1 pair: the no-memory baseline, each
shot from its caption alone; N: the last N - 1 keyframes as context, in full or GoldenMem-compressed as
the model's config (or --memory) says) into REPORT_DIR/samples/,
the second judges folders that cinema_jax.sample (or an earlier evaluate) wrote. The ground truth is
storylines_truth.jsonl beside FILE (data_pipelines.toy_movies writes both). The real renders of the same
shots are judged too, as the reference row. Writes REPORT_DIR/report.json and report.md.

With --clip_model=DIR (a whole CLIP model) every row also gets the paper's automatic proxies
(cinema_jax/eval/clip_metrics.py: CLIP text-image alignment, CLIP consistency across shots that name
the same character or place); storylines without ground truth (any real storylines) get only those.
Models on VAE latents and T5/CLIP states take the sample command's encoder flags (--vae, --t5, --clip).
"""

import sys

from absl import app
from absl import flags

from cinema_jax import cli
from cinema_jax import errors
from cinema_jax import retrieval
from cinema_jax.eval import benchmark


def _define_flags() -> dict:
  return {
      **cli.define_encoder_flags(),
      "clip_model": flags.DEFINE_string("clip_model", None, "A whole CLIP model folder: also score CLIP text-image "
                                        "alignment and consistency (the only scores for storylines without truth)."),
      "workdir": flags.DEFINE_string("workdir", None, "Training workdir to sample from (latest checkpoint)."),
      "samples": flags.DEFINE_list("samples", None, "Instead of sampling: folders of sampled storylines to judge."),
      "storylines": flags.DEFINE_string("storylines", None, "Storylines JSONL (truth beside it), or 'toy': the "
                                        "held-out storylines of the model's toy world.", required=True),
      "out": flags.DEFINE_string("out", None, "Report directory.", required=True),
      "num_pairs": flags.DEFINE_list("num_pairs", ["1", "8", "16", "24", "32"],
                                     "Context lengths to sample at (1: no memory)."),
      "max_storylines": flags.DEFINE_integer("max_storylines", 0, "Use the first N storylines (0: all).",
                                             lower_bound=0),
      "max_shots": flags.DEFINE_integer("max_shots", 32, "Keyframes per storyline (0: all).", lower_bound=0),
      "num_steps": flags.DEFINE_integer("num_steps", None, "Euler steps (default: the config's).", lower_bound=1),
      "guidance": flags.DEFINE_float("guidance", None, "CFG scale (default: the config's).", lower_bound=0.0),
      "seed": flags.DEFINE_integer("seed", 0, "Sampling seed; storyline i uses seed + i."),
      "memory": flags.DEFINE_enum("memory", None, ["none", "goldenmem"], "Context memory at sampling "
                                  "(default: the model's config.data.memory_levels)."),
      "context_order": flags.DEFINE_enum("context_order", None, list(retrieval.ORDERS), "Which earlier shots "
                                         "a new one sees (default: the config's data.context_order)."),
      "context_t": flags.DEFINE_list("context_t", None, "Re-noise context pairs to t ~ U[a, b]: 'a,b' "
                                     "(default: the config's sample.context_t)."),
      "raw_params": flags.DEFINE_bool("raw_params", False, "Sample with the raw parameters, not the EMA."),
  }


def main(argv, f: dict) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  v = {k: flag.value for k, flag in f.items()}
  if bool(v["workdir"]) == bool(v["samples"]):
    sys.exit("error: give exactly one of --workdir (sample, then judge) and --samples (judge folders)")
  try:
    v["num_pairs"] = [int(p) for p in v["num_pairs"]]
    if not v["num_pairs"] or min(v["num_pairs"]) < 1:
      raise ValueError
  except ValueError:
    sys.exit(f"error: --num_pairs must be a list of integers >= 1, got {f['num_pairs'].value}")
  if v["context_t"] is not None:
    try:
      lo, hi = (float(x) for x in v["context_t"])
      if not 0 <= lo <= hi < 1:
        raise ValueError
    except ValueError:
      sys.exit(f"error: --context_t must be 'a,b' with 0 <= a <= b < 1, got {','.join(v['context_t'])}")
  try:
    benchmark.run(v)
  except (errors.CheckpointError, errors.DataError, FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, _flags), flags_parser=cli.parse_flags)
