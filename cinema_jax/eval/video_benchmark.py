"""The toy-cinema benchmark of shot videos (the library of `python -m cinema_jax.evaluate_video`): every
held-out shot judged by cinema_jax/eval/video_metrics.py, for the video model and its baselines."""

from __future__ import annotations


import numpy as np

import os
import time

from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import loading
from cinema_jax import paths
from cinema_jax.eval import benchmark
from cinema_jax.eval import video_metrics
from cinema_jax.sampling import jobs
from cinema_jax.sampling import keyframe_sampler
from data_pipelines import toy_dataset
from data_pipelines import toy_render

TABLE = (  # (report key, column title, format)
    ("motion_match", "motion matches action", "{:.3f}"),
    ("still_match", "standing stays", "{:.3f}"),
    ("location_adherence", "location adherence", "{:.3f}"),
    ("cast_adherence", "cast adherence", "{:.3f}"),
    ("background_agreement", "background agreement", "{:.3f}"),
    ("x_error", "x error (lower)", "{:.3f}"),
    ("flicker", "flicker (lower)", "{:.2f}"),
    ("jitter", "jitter (lower)", "{:.4f}"),
    ("motion_energy", "motion energy (truth 1)", "{:.2f}"),
)


def score(shots: list[tuple[np.ndarray, dict]]) -> dict:
  """Aggregated video metrics of (frames [F, H, W, 3], truth shot) pairs."""
  return video_metrics.aggregate([video_metrics.shot_metrics(f, t) for f, t in shots])


def run(v: dict) -> dict:
  """Generates and judges the shots of v["storylines"], writes v["out"]/report.json and report.md; v: the
  settings of `python -m cinema_jax.evaluate_video` (its flags). Raises errors.DataError,
  FileNotFoundError or ValueError with one-line messages."""
  paths.writable_folder(v["out"], "--out")  # before any work
  overrides = {k: v[k] for k in ("num_steps", "guidance") if v[k] is not None}
  shots_fn, _, vc = jobs.video_stage(v["video_workdir"], None, overrides=overrides)
  storylines = v["storylines"]
  if storylines == "toy":
    storylines = os.path.join(toy_dataset.root_for_config(vc.data, v["video_workdir"]), "storylines.jsonl")
  stories = jobs.read_storylines(storylines)[: v["max_storylines"] or None]
  truth = benchmark.read_truth(storylines)
  keyframe_model = None
  if v["workdir"]:
    c, graphdef, params, _ = loading.load(v["workdir"])
    c = config_validation.replace(c, {f"sample.{k}": x for k, x in overrides.items()})
    keyframe_model = (keyframe_sampler.Sampler(c, graphdef, clip=loading.retrieval_clip(c, v["workdir"])), params)
  h, w = vc.data.resolution
  rows = {"video model, real keyframes": [], "video model, generated keyframes": [], "hold the keyframe still": [],
          "real shots (reference)": []}
  seconds, count = 0.0, 0
  for i, story in enumerate(stories):
    movie = truth.get(story.get("movie_id"))
    if movie is None:
      raise errors.DataError(f"storyline {story['title']!r}: movie_id {story.get('movie_id')!r} has no ground truth")
    scripts = movie["shots"][: v["max_shots"] or None]
    if len(scripts[0]["characters"][0]["path"]) != vc.model.video.num_frames:
      raise errors.DataError(f"{storylines}: the scripts have {len(scripts[0]['characters'][0]['path'])} frames per "
                             f"shot, the video model makes {vc.model.video.num_frames}")
    real = np.stack([toy_render.render_shot(s, h, w) for s in scripts])  # [K, F, H, W, 3]
    captions = [s["caption"] for s in scripts]
    t0 = time.perf_counter()
    generated = shots_fn(real[:, 0], captions, v["seed"] + i)
    seconds, count = seconds + time.perf_counter() - t0, count + len(scripts)
    rows["video model, real keyframes"] += list(zip(generated, scripts))
    rows["hold the keyframe still"] += [(video_metrics.hold_still(r[0], len(r)), s) for r, s in zip(real, scripts)]
    rows["real shots (reference)"] += list(zip(real, scripts))
    if keyframe_model is not None:
      sampler, params = keyframe_model
      keyframes = sampler.keyframes(params, captions, seed=v["seed"] + i)
      rows["video model, generated keyframes"] += list(zip(shots_fn(keyframes, captions, v["seed"] + i), scripts))
    print(f"storyline {i + 1}/{len(stories)}: {len(scripts)} shots", flush=True)
  table = []
  for setting, shots in rows.items():
    if shots:
      table.append({"setting": setting, "shots": len(shots), **score(shots)})
  table[0]["seconds_per_shot"] = seconds / count
  for row in table:  # JSON has no NaN: a metric no shot rates is null
    row.update({k: None if isinstance(x, float) and x != x else x for k, x in row.items()}, shots=int(row["shots"]))
  report = {"storylines": storylines, "video_workdir": v["video_workdir"], "workdir": v["workdir"], "rows": table}
  title = f"Toy-cinema shot videos: {os.path.basename(storylines)}"
  benchmark.write_report(v["out"], report, benchmark.markdown(table, title, columns=TABLE, second=("shots", "shots")))
  return report
