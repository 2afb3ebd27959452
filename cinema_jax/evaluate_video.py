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

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

from cinema_jax import cli
from cinema_jax import evaluate
from cinema_jax import loading
from cinema_jax import sample as sample_lib
from cinema_jax import sampling
from cinema_jax.eval import video_metrics
from data_pipelines import records
from data_pipelines import toy_movies
from data_pipelines import toy_render

_TABLE = (  # (report key, column title, format)
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


def _define_flags() -> dict:
  return {
      "video_workdir": flags.DEFINE_string("video_workdir", None, "The video model's workdir.", required=True),
      "workdir": flags.DEFINE_string("workdir", None, "A keyframe model's workdir: also score the whole pipeline."),
      "storylines": flags.DEFINE_string("storylines", "toy", "Storylines JSONL (truth beside it), or 'toy': the "
                                        "held-out storylines of the video model's toy world."),
      "out": flags.DEFINE_string("out", None, "Report directory.", required=True),
      "max_storylines": flags.DEFINE_integer("max_storylines", 0, "Use the first N storylines (0: all)."),
      "max_shots": flags.DEFINE_integer("max_shots", 8, "Shots per storyline (0: all)."),
      "num_steps": flags.DEFINE_integer("num_steps", None, "Euler steps (default: the configs')."),
      "guidance": flags.DEFINE_float("guidance", None, "CFG scale (default: the configs')."),
      "seed": flags.DEFINE_integer("seed", 0, "Sampling seed; storyline i uses seed + i."),
  }


def score(shots: list[tuple[np.ndarray, dict]]) -> dict:
  """Aggregated video metrics of (frames [F, H, W, 3], truth shot) pairs."""
  return video_metrics.aggregate([video_metrics.shot_metrics(f, t) for f, t in shots])


def main(argv, f: dict) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  v = {k: flag.value for k, flag in f.items()}
  try:
    overrides = {k: v[k] for k in ("num_steps", "guidance") if v[k] is not None}
    shots_fn, _, vc = sample_lib.video_stage(v["video_workdir"], None, overrides=overrides)
    storylines = v["storylines"]
    if storylines == "toy":
      storylines = os.path.join(toy_movies.root_for_config(vc.data, v["video_workdir"]), "storylines.jsonl")
    stories = sample_lib.read_storylines(storylines)[: v["max_storylines"] or None]
    truth = evaluate.read_truth(storylines)
    keyframe_model = None
    if v["workdir"]:
      c, graphdef, params, _ = sample_lib.load(v["workdir"])
      with c.unlocked():
        c.sample.update(overrides)
      keyframe_model = (sampling.Sampler(c, graphdef, clip=loading.retrieval_clip(c, v["workdir"])), params)
  except (records.DataError, FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  h, w = vc.data.resolution
  rows = {"video model, real keyframes": [], "video model, generated keyframes": [], "hold the keyframe still": [],
          "real shots (reference)": []}
  seconds, count = 0.0, 0
  for i, story in enumerate(stories):
    movie = truth.get(story.get("movie_id"))
    if movie is None:
      sys.exit(f"error: storyline {story['title']!r}: movie_id {story.get('movie_id')!r} has no ground truth")
    scripts = movie["shots"][: v["max_shots"] or None]
    if len(scripts[0]["characters"][0]["path"]) != vc.model.video.num_frames:
      sys.exit(f"error: {storylines}: the scripts have {len(scripts[0]['characters'][0]['path'])} frames per shot, "
               f"the video model makes {vc.model.video.num_frames}")
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
  evaluate.write_report(v["out"], {"storylines": storylines, "video_workdir": v["video_workdir"],
                                  "workdir": v["workdir"], "rows": table},
                        evaluate.markdown(table, f"Toy-cinema shot videos: {os.path.basename(storylines)}",
                                          columns=_TABLE, second=("shots", "shots")))

if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, _flags), flags_parser=cli.parse_flags)
