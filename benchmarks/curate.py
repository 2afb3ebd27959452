"""Curation throughput: seconds of video curated per wall-clock second, with 1 and 2 workers.

  python -m benchmarks.curate [--movies=6] [--seconds=12] [--size=360x640] [--workers=1,2]

Writes synthetic films (data_pipelines.synthetic_video: a cut every 2 s, H.264 yuv420p) into a
temporary folder, then curates them from scratch (paper defaults: 2:1 keyframes, short side 400)
once per worker count, each into a fresh output folder. Prints Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time

from absl import app
from absl import flags

from cinema_jax import cli
from data_pipelines import films
from data_pipelines import synthetic_video

_MOVIES = flags.DEFINE_integer("movies", 6, "Synthetic films.")
_SECONDS = flags.DEFINE_integer("seconds", 12, "Seconds per film.")
_SIZE = flags.DEFINE_string("size", "360x640", "Film frame size HxW.")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Worker counts to measure.")
_FPS = 25


def main(_):
  h, w = (int(x) for x in _SIZE.value.split("x"))
  with tempfile.TemporaryDirectory() as tmp:
    videos = os.path.join(tmp, "videos")
    os.makedirs(videos)
    for i in range(_MOVIES.value):
      synthetic_video.write_clip(os.path.join(videos, f"film{i}.mp4"), [2 * _FPS] * (_SECONDS.value // 2),
                                 size=(h, w), fps=_FPS, seed=i, lossless=False)
    paths = films.find_videos(videos)
    total_s = _MOVIES.value * _SECONDS.value
    rows = []
    for workers in (int(x) for x in _WORKERS.value):
      start = time.perf_counter()
      summary = films.curate(paths, os.path.join(tmp, f"out{workers}"),
                             films.Settings(captioner="echo a shot {image}"), workers=workers)
      wall = time.perf_counter() - start
      rows.append((workers, wall, total_s / wall, summary["records"]["shots"]))
  print(f"Machine: {platform.machine()}, {os.cpu_count()} cores; {_MOVIES.value} films x {_SECONDS.value} s of "
        f"{h}x{w} at {_FPS} fps, a cut every 2 s, keyframes 400x800, captions from a command per keyframe.\n")
  print("| workers | wall s | video s per wall s | shots kept | speed-up |")
  print("|---|---|---|---|---|")
  for workers, wall, rate, shots in rows:
    print(f"| {workers} | {wall:.1f} | {rate:.1f} | {shots} | {rate / rows[0][2]:.2f}x |")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
