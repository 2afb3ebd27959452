"""Builds a toy-movie dataset: shot records for training, held-out storylines with ground truth.

  python -m data_pipelines.toy_movies --out DIR --num_movies N --seed S [--height 32 --width 64 ...]

Writes, atomically (a staging directory renamed into place at the end):
  DIR/train/                 shot records of movies 0..N-1 (records.py format)
  DIR/eval/                  shot records of the held-out movies behind the storylines
  DIR/storylines.jsonl       one storyline per line: {"title", "movie_id", "captions": [...]}
  DIR/storylines_truth.jsonl per storyline: {"movie_id", "cast", "locations", "shots": [...]}
  DIR/tokenizer.json         the world's word-level tokenizer (toy_world.write_tokenizer): one token a word
  DIR/world.json             the generator's knobs and counts
"""

import sys

from absl import app
from absl import flags

from cinema_jax import cli
from cinema_jax import errors
from cinema_jax import paths
from data_pipelines import toy_dataset
from data_pipelines import toy_world


def _define_flags() -> dict:
  return {
      "out": flags.DEFINE_string("out", None, "Output directory (must not exist unless --overwrite)."),
      "num_movies": flags.DEFINE_integer("num_movies", 64, "Training movies.", lower_bound=1),
      "seed": flags.DEFINE_integer("seed", 0, "World seed: the same seed gives the same movies, byte for byte.",
                                   lower_bound=0),
      "num_storylines": flags.DEFINE_integer("num_storylines", 8, "Held-out movies written as storylines.",
                                             lower_bound=0),
      "height": flags.DEFINE_integer("height", 32, "Frame height (width is usually 2x).", lower_bound=1),
      "width": flags.DEFINE_integer("width", 64, "Frame width.", lower_bound=1),
      "num_frames": flags.DEFINE_integer("num_frames", 8, "Frames per shot (1: keyframes only).", lower_bound=1),
      "min_shots": flags.DEFINE_integer("min_shots", 8, "Fewest shots per movie.", lower_bound=1),
      "max_shots": flags.DEFINE_integer("max_shots", 64, "Most shots per movie.", lower_bound=1),
      "num_shards": flags.DEFINE_integer("num_shards", 4, "ArrayRecord shards of the training split.", lower_bound=1),
      "overwrite": flags.DEFINE_bool("overwrite", False, "Replace an existing output directory."),
  }


def main(argv, f: dict) -> None:
  del argv
  v = {k: flag.value for k, flag in f.items()}
  if not v["out"]:
    sys.exit("error: --out is required")
  try:
    paths.output_folder(v["out"], "--out", ours=toy_dataset.OUTPUTS, overwrite=v["overwrite"])
    world = toy_world.WorldConfig(height=v["height"], width=v["width"], num_frames=v["num_frames"],
                                  min_shots=v["min_shots"], max_shots=v["max_shots"])
    summary = toy_dataset.build(v["out"], num_movies=v["num_movies"], seed=v["seed"], world=world,
                                num_storylines=v["num_storylines"], num_shards=v["num_shards"],
                                overwrite=v["overwrite"], log=print)
  except (errors.DataError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {summary['num_train_shots']} training shots of {summary['num_movies']} movies and "
        f"{summary['num_storylines']} storylines to {v['out']} in {summary['seconds']} s")


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, _flags), flags_parser=cli.parse_flags)
