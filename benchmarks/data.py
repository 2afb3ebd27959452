"""Data benchmarks: toy-world render speed and interleaved-pipeline throughput.

  python -m benchmarks.data [--workdir=runs/bench] [--num_batches=60]

Prints a Markdown table for BENCHMARKS.md. Render figures are for one core (this process, no
workers); pipeline figures are windows (examples of P = 8 pairs at 32x64) per second after a warm-up,
with 0 and 2 grain workers, measured in one run so their ratio is meaningful on a noisy machine; and
the demo config's pipeline against the windows per second its train step consumes (same run).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time

from absl import app
from absl import flags

from benchmarks import train_step
from cinema_jax import cli
from cinema_jax import config_validation
from configs import data as data_config
from configs import keyframe as keyframe_config
from data_pipelines import pipeline
from data_pipelines import records
from data_pipelines import toy_dataset
from data_pipelines import toy_render
from data_pipelines import toy_world

_WORKDIR = flags.DEFINE_string("workdir", "runs/bench", "Where the benchmark dataset is built.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 60, "Timed batches per pipeline setting.")


def render_speed(world: toy_world.WorldConfig, num_movies: int = 40) -> dict[str, float]:
  movies = [toy_world.make_movie(123, i, world) for i in range(num_movies)]
  shots = [s for m in movies for s in m["shots"]]
  for s in shots[:50]:  # warm the sprite and background caches as a long run would
    toy_render.render_shot(s, world.height, world.width)
  start = time.perf_counter()
  for s in shots:
    toy_render.render_shot(s, world.height, world.width)
  render = len(shots) / (time.perf_counter() - start)
  start = time.perf_counter()
  for m in movies:
    toy_dataset.movie_shots(m, world)
  encoded = len(shots) / (time.perf_counter() - start)
  start = time.perf_counter()
  scripts = sum(len(toy_world.make_movie(321, i, world)["shots"]) for i in range(num_movies))
  script = scripts / (time.perf_counter() - start)
  return {"shots": len(shots), "render": render, "render+png": encoded, "script": script}


def pipeline_speed(path: str, workers: int, num_batches: int, c=None, batch: int = 8) -> float:
  """Windows per second of the pipeline of data config c (default: P = 8) with `workers` workers."""
  if c is None:
    c = data_config.get_config()
    c.num_pairs = 8
    c = config_validation.load_section(config_validation.Data, c)
  c = dataclasses.replace(c, worker_count=workers)
  it = pipeline.make_pipeline(c, path, batch_size=batch).iterator()
  for _ in range(5):  # start-up: worker spawn, first reads
    next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  rate = num_batches * batch / (time.perf_counter() - start)
  it.close()
  return rate


def main(argv):
  del argv
  world = toy_world.WorldConfig()  # 32x64, 8 frames per shot
  r = render_speed(world)
  path = os.path.join(toy_dataset.ensure(os.path.join(_WORKDIR.value, "data"), num_movies=64, seed=0,
                                         world=world), "train")
  n = len(records.ShotReader(path))
  rates = {w: pipeline_speed(path, w, _NUM_BATCHES.value) for w in (0, 2)}
  # Supply vs demand: the demo's own pipeline against what its train step consumes, in one run.
  demo = config_validation.load(keyframe_config.get_config("demo"))
  supply = pipeline_speed(path, demo.data.worker_count, _NUM_BATCHES.value // 4, demo.data, demo.batch_size)
  step_s, _ = train_step.train_step_time(demo, steps=5, warmup=2)
  demand = demo.batch_size / step_s
  print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}")
  print()
  print("| what | figure |")
  print("|---|---|")
  print(f"| render, keyframe + 7 frames at 32x64, one core | {r['render']:.0f} shots/s ({r['shots']} shots) |")
  print(f"| render + PNG encode (what the writer does) | {r['render+png']:.0f} shots/s |")
  print(f"| movie scripts (no pixels) | {r['script']:.0f} shots/s |")
  print(f"| pipeline, P=8, batch 8, 0 workers | {rates[0]:.0f} windows/s |")
  print(f"| pipeline, P=8, batch 8, 2 workers | {rates[2]:.0f} windows/s ({rates[2] / rates[0]:.2f}x of 0 workers) |")
  print(f"| demo pipeline (P={demo.data.num_pairs}, batch {demo.batch_size}, {demo.data.worker_count} workers) vs "
        f"the demo train step ({step_s:.3f} s/step) | {supply:.0f} windows/s supplied, {demand:.0f} consumed: "
        f"{supply / demand:.1f}x headroom |")
  print(f"| dataset | {n} shots, 64 movies |")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
