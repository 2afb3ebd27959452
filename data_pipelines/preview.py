"""Builds the data a config asks for and summarises the interleaved examples the pipeline yields.

  python -m data_pipelines.preview --config=configs/keyframe.py[:VARIANT] --workdir=DIR [--num_batches=N]

With config.data.path == "" the toy-movie world is built under DIR/data on first use. Prints the
dataset, the window sampler and the batches, and writes a storyboard sheet of the first example to
DIR/preview/storyboard.png.
"""

from __future__ import annotations

import collections
import os
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from cinema_jax import cli
from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import paths
from cinema_jax.sampling import storyboard
from data_pipelines import pipeline
from data_pipelines import tokenizer
from data_pipelines import toy_dataset

_CONFIG = config_flags.DEFINE_config_file("config", "configs/keyframe.py", "Config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where the toy data and the preview go.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 8, "Batches to draw and summarise.", lower_bound=1)


def summarise(c, workdir: str, num_batches: int) -> str:
  path = toy_dataset.train_path(c.data, workdir, log=print, build=True)
  p = pipeline.make_pipeline(c.data, path, batch_size=c.batch_size)
  ix = p.reader.index
  shots = np.array([m["num_shots"] for m in ix.movies])
  keyframes = (f"{ix.resolution[0]}x{ix.resolution[1]} PNG keyframes" if ix.resolution
               else f"latent keyframes {ix.latent_shape}")
  lines = [
      f"dataset      {path}",
      f"             {ix.num_records} shots in {len(ix.movies)} movies (shots per movie {shots.min()}..{shots.max()}, "
      f"mean {shots.mean():.1f}); {keyframes}; {ix.num_frames} frames per shot",
      f"windows      P={c.data.num_pairs}, strides 1..{c.data.max_stride}, overlap <= "
      f"{c.data.max_overlap:.0%}: {p.plan.epoch_length} windows per epoch from {p.plan.num_movies_used} movies",
  ]
  it = p.iterator()
  start = time.perf_counter()
  batches = [next(it) for _ in range(num_batches)]
  seconds = time.perf_counter() - start
  it.close()
  n = sum(len(b["movie"]) for b in batches)
  lines.append(f"batches      {num_batches} x {p.batch_size} examples, {c.data.worker_count} workers: "
               f"{n / seconds:.1f} windows/s (including start-up)")
  for k, v in batches[0].items():
    rng = f"  range [{v.min():.2f}, {v.max():.2f}]" if v.dtype.kind == "f" else ""
    lines.append(f"  {k:<15}{str(v.dtype):<9}{str(v.shape):<24}{rng}")
  strides = collections.Counter(int(s) for b in batches for s in b["stride"])
  lines.append(f"strides seen {dict(sorted(strides.items()))}")
  if "text_tokens" in batches[0]:
    full = sum(int(b["text_mask"][..., -1].sum()) for b in batches)
    longest = max(int(b["text_mask"].sum(-1).max()) for b in batches)
    lines.append(f"captions     longest {longest} of {c.data.text_len} tokens; {full} at the length limit")
  lines.append(f"bad records  {it.skipped} windows skipped of {it.seen} seen")
  b = batches[0]
  movie = ix.movies[int(b["movie"][0])]["movie_id"]
  tok = tokenizer.for_data(c.data, path) if "text_tokens" in b else None
  captions = [tok.decode(t[m]) for t, m in zip(b["text_tokens"][0], b["text_mask"][0])] if tok else []
  lines.append(f"example 0    {movie}, shots {b['shot_index'][0].tolist()} (stride {int(b['stride'][0])})")
  lines += [f"  {i}. {cap}" for i, cap in enumerate(captions)]
  if "image" in b:
    out = os.path.join(workdir, "preview", "storyboard.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    storyboard.sheet(b["image"][0], captions or [""] * len(b["image"][0]),
                     title=f"{movie}: one training example ({c.data.num_pairs} pairs)").save(out)
    lines.append(f"storyboard   {out}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    paths.writable_folder(_WORKDIR.value, "--workdir")
    print(summarise(config_validation.load(_CONFIG.value), _WORKDIR.value, _NUM_BATCHES.value))
  except (errors.DataError, errors.ConfigError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
