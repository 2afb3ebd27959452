"""The toy-movie dataset on disk (the library of `python -m data_pipelines.toy_movies`): shot records for
training, held-out storylines with ground truth, built atomically and found again by config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Iterator


from cinema_jax import errors
from cinema_jax import memory
from data_pipelines import records
from data_pipelines import tokenizer
from data_pipelines import toy_render
from data_pipelines import toy_world

WORLD_FILE = "world.json"
# everything build() writes in its folder: --overwrite replaces a folder holding only these
OUTPUTS = ("train", "eval", "storylines.jsonl", "storylines_truth.jsonl", tokenizer.FILE, WORLD_FILE)


def movie_shots(movie: dict, world: toy_world.WorldConfig) -> list[records.Shot]:
  """Renders one movie script into shot records (keyframe = frame 0; ground truth in meta)."""
  shots = []
  for s in movie["shots"]:
    frames = toy_render.render_shot(s, world.height, world.width)
    truth = {k: v for k, v in s.items() if k not in ("caption", "shot_index")}
    duration = world.num_frames / world.fps
    shots.append(records.Shot(
        movie_id=movie["movie_id"],
        shot_index=s["shot_index"],
        caption=s["caption"],
        keyframe_png=records.encode_png(frames[0]),
        frames_png=records.encode_png(frames.reshape(-1, world.width, 3)) if world.num_frames > 1 else None,
        meta={"source": "toy", "fps": world.fps, "start_s": s["shot_index"] * duration,
              "end_s": (s["shot_index"] + 1) * duration, "truth": truth},
    ))
  return shots


def build(out: str, *, num_movies: int, seed: int, world: toy_world.WorldConfig,
          num_storylines: int = 8, num_shards: int = 4, overwrite: bool = False,
          log=lambda msg: None) -> dict:
  """Builds the whole output directory; returns the contents of world.json and the build's seconds."""
  out = os.path.abspath(out)
  if num_movies < 1:
    raise errors.DataError(f"--num_movies must be >= 1, got {num_movies}")
  memory.check_frames("toy world", world.num_frames, world.height, world.width)
  with records.staged_folder(out, overwrite, "pass --overwrite") as staging:
    summary = _build_into(staging, num_movies, seed, world, num_storylines, num_shards, log)
  return summary


def _build_into(staging: str, num_movies: int, seed: int, world: toy_world.WorldConfig, num_storylines: int,
                num_shards: int, log) -> dict:
  frames = world.num_frames if world.num_frames > 1 else 0
  info = {"generator": "toy_movies", "seed": seed, "world": dataclasses.asdict(world)}
  start = time.perf_counter()

  def rendered(first: int, count: int) -> Iterator[list[records.Shot]]:
    for i in range(first, first + count):
      if (i - first) % 50 == 0:
        log(f"  movie {i - first}/{count}")
      yield movie_shots(toy_world.make_movie(seed, i, world), world)

  train = records.write_dataset(os.path.join(staging, "train"), rendered(0, num_movies),
                                num_shards=num_shards, num_frames=frames, info={**info, "split": "train"})
  held_out = [toy_world.make_movie(seed, num_movies + j, world) for j in range(num_storylines)]
  eval_index = records.write_dataset(os.path.join(staging, "eval"),
                                     (movie_shots(m, world) for m in held_out),
                                     num_shards=1, num_frames=frames, info={**info, "split": "eval"})
  with open(os.path.join(staging, "storylines.jsonl"), "w") as f:
    for m in held_out:
      f.write(json.dumps({"title": m["title"], "movie_id": m["movie_id"],
                          "captions": [s["caption"] for s in m["shots"]]}) + "\n")
  with open(os.path.join(staging, "storylines_truth.jsonl"), "w") as f:
    for m in held_out:
      f.write(json.dumps({k: m[k] for k in ("movie_id", "cast", "locations", "shots")}) + "\n")
  toy_world.write_tokenizer(os.path.join(staging, tokenizer.FILE))
  summary = {
      **info,
      "num_movies": num_movies,
      "num_train_shots": train.num_records,
      "num_storylines": num_storylines,
      "num_eval_shots": eval_index.num_records,
  }
  with open(os.path.join(staging, WORLD_FILE), "w") as f:  # no wall time in it: same seed, same bytes
    json.dump(summary, f, indent=1)
  return {**summary, "seconds": round(time.perf_counter() - start, 2)}


def ensure(root: str, *, num_movies: int, seed: int, world: toy_world.WorldConfig, log=lambda msg: None,
           make: bool = True) -> str:
  """The toy dataset with these knobs under `root` (root/toy-<digest>), built there when missing (make=False:
  a one-line error instead, naming the command that builds it)."""
  knobs = {"num_movies": num_movies, "seed": seed, "world": dataclasses.asdict(world)}
  digest = hashlib.sha1(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:10]
  out = os.path.join(os.path.abspath(root), f"toy-{digest}")
  if not os.path.exists(os.path.join(out, WORLD_FILE)) and not make:
    raise errors.DataError(f"no toy world at {out}: the training command builds it (python -m cinema_jax.train "
                           f"--config=... --workdir={os.path.dirname(os.path.abspath(root))})")
  if not os.path.exists(os.path.join(out, WORLD_FILE)):
    log(f"building the toy-movie dataset ({num_movies} movies, seed {seed}) at {out}")
    try:
      build(out, num_movies=num_movies, seed=seed, world=world, log=log)
    except errors.DataError:
      if not os.path.exists(os.path.join(out, WORLD_FILE)):  # not another process's finished build
        raise
  if not os.path.exists(os.path.join(out, tokenizer.FILE)):  # built before worlds carried their tokenizer
    tmp = os.path.join(out, f"{tokenizer.FILE}.tmp-{os.getpid()}")
    toy_world.write_tokenizer(tmp)
    os.replace(tmp, os.path.join(out, tokenizer.FILE))
  return out


def root_for_config(data_config, workdir: str, log=lambda msg: None, build: bool = False) -> str:
  """The toy world a data config asks for (config.data.toy at config.data.resolution) under workdir/data:
  its root (train/, eval/, storylines.jsonl). build: make it when missing (training prepares it so:
  cinema_jax/training/prepare.py); otherwise a missing world is a one-line error."""
  t = data_config.toy
  world = toy_world.WorldConfig(height=data_config.resolution[0], width=data_config.resolution[1],
                                num_frames=t.num_frames, min_shots=t.min_shots, max_shots=t.max_shots)
  return ensure(os.path.join(workdir, "data"), num_movies=t.num_movies, seed=t.seed, world=world, log=log,
                make=build)


def train_path(data_config, workdir: str, log=lambda msg: None, build: bool = False) -> str:
  """config.data.path, or the training split of the toy world of root_for_config."""
  if data_config.path:
    return data_config.path
  return os.path.join(root_for_config(data_config, workdir, log, build), "train")

