"""Samples keyframes for storylines with a trained keyframe model.

  python -m cinema_jax.sample --workdir=DIR --storylines=FILE --outdir=OUT [--seed=S] [--num_steps=N]
      [--guidance=G] [--mode=autoregressive|joint] [--max_shots=K]

FILE is JSONL, one storyline per line: {"title": ..., "captions": [...]} (data_pipelines.toy_movies
writes one). Per storyline OUT/<index>-<slug>/ gets keyframe_<k>.png, storyboard.png and manifest.json.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
from PIL import Image

from cinema_jax import checkpoints
from cinema_jax import sampling
from cinema_jax import sharding
from cinema_jax import toy_clip
from cinema_jax import trainer
from configs import keyframe as keyframe_config
from data_pipelines import records
from data_pipelines import toy_movies


def _define_flags() -> dict:
  """CLI flags, defined only when run as a script (cinema_jax.evaluate imports this module)."""
  return {
      "workdir": flags.DEFINE_string("workdir", None, "Training workdir (its latest checkpoint is used).",
                                     required=True),
      "storylines": flags.DEFINE_string("storylines", None, "JSONL file of storylines, or 'toy': the held-out "
                                        "storylines of the toy world the model was trained on.", required=True),
      "outdir": flags.DEFINE_string("outdir", None, "Where keyframes, storyboards and manifests go.", required=True),
      "seed": flags.DEFINE_integer("seed", 0, "Sampling seed; storyline i uses seed + i."),
      "num_steps": flags.DEFINE_integer("num_steps", None, "Euler steps (default: the config's sample.num_steps)."),
      "guidance": flags.DEFINE_float("guidance", None, "CFG scale (default: the config's sample.guidance)."),
      "mode": flags.DEFINE_enum("mode", None, ["autoregressive", "joint"], "Default: the config's sample.mode."),
      "max_shots": flags.DEFINE_integer("max_shots", None, "Keyframes per storyline (default: the config's; "
                                        "0 = all)."),
      "raw_params": flags.DEFINE_bool("raw_params", False, "Sample with the raw parameters instead of the EMA copy."),
  }


def read_storylines(path: str) -> list[dict]:
  """Storylines of a JSONL file, with one-line errors that name the file and line."""
  if not os.path.exists(path):
    raise records.DataError(f"storylines file {path} does not exist")
  out = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        story = json.loads(line)
      except json.JSONDecodeError as e:
        raise records.DataError(f"{path} line {n}: not JSON ({e.msg})") from None
      caps = story.get("captions") if isinstance(story, dict) else None
      if not isinstance(caps, list) or not caps or not all(isinstance(x, str) and x.strip() for x in caps):
        raise records.DataError(f"{path} line {n}: expected {{\"title\": ..., \"captions\": [non-empty strings]}}")
      out.append({"title": str(story.get("title", f"storyline {len(out)}")), "captions": caps,
                  "movie_id": story.get("movie_id")})
  if not out:
    raise records.DataError(f"{path}: no storylines")
  return out


def save_storyline(outdir: str, index: int, story: dict, frames, captions: list[str], *, title_suffix: str = "",
                   **info) -> dict:
  """Writes OUT/<index>-<slug>/ (keyframe PNGs, storyboard.png, manifest.json); returns the manifest."""
  slug = re.sub(r"[^a-z0-9]+", "-", story["title"].lower()).strip("-")[:40]
  name = f"{index:03d}-{slug}"
  out = os.path.join(outdir, name)
  os.makedirs(out, exist_ok=True)
  files = []
  for k, frame in enumerate(frames):
    files.append(f"keyframe_{k:03d}.png")
    Image.fromarray(frame).save(os.path.join(out, files[-1]))
  sampling.storyboard_image(frames, captions, title=story["title"] + title_suffix).save(
      os.path.join(out, "storyboard.png"))
  manifest = {"dir": name, "title": story["title"], "movie_id": story.get("movie_id"), "captions": captions,
              "keyframes": files, "storyboard": "storyboard.png", **info}
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def saved_config(workdir: str):
  """A workdir's training config, over today's defaults of its variant (fields added since it was saved)."""
  return checkpoints.saved_config(workdir, lambda raw: keyframe_config.get_config(raw.get("variant", "flux_dev")))


def load(workdir: str, raw_params: bool = False):
  """(config, graphdef, sampling params, step) of the latest checkpoint in workdir (EMA unless raw)."""
  c = saved_config(workdir)
  mesh = sharding.make_mesh(c.mesh)
  setup = trainer.make_setup(c, mesh)
  mngr = checkpoints.manager(workdir, read_only=True)
  step = mngr.latest_step()
  with jax.set_mesh(mesh):
    state = checkpoints.restore(mngr, step, setup.abstract_state)
  params = state["params"] if raw_params or not state["ema"] else state["ema"]
  return c, setup.graphdef, params, step


def retrieval_clip(c, workdir: str) -> toy_clip.ToyClip | None:
  """The run's ToyCLIP when it retrieves context text to image (trained into workdir on first use)."""
  if c.data.context_order != "image":
    return None
  return toy_clip.load(toy_clip.resolve(c.data, workdir, logging.info))


def main(argv, f: dict):
  v = {k: flag.value for k, flag in f.items()}
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    if v["storylines"] != "toy":
      stories = read_storylines(v["storylines"])
    if not os.path.isdir(os.path.join(v["workdir"], checkpoints.CHECKPOINT_DIR)):
      raise records.DataError(f"no checkpoints in {v['workdir']}: train first (python -m cinema_jax.train)")
    c, graphdef, params, step = load(v["workdir"], v["raw_params"])
    if v["storylines"] == "toy":
      if c.data.path:
        raise records.DataError("--storylines=toy: this model was trained on config.data.path, not the toy world")
      stories = read_storylines(os.path.join(toy_movies.root_for_config(c.data, v["workdir"]), "storylines.jsonl"))
  except (records.DataError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  with c.unlocked():
    for field in ("num_steps", "guidance", "mode", "max_shots"):
      if v[field] is not None:
        c.sample[field] = v[field]
  sampler = sampling.Sampler(c, graphdef, clip=retrieval_clip(c, v["workdir"]))
  os.makedirs(v["outdir"], exist_ok=True)
  for i, story in enumerate(stories):
    captions = story["captions"][: c.sample.max_shots or None]
    start = time.perf_counter()
    frames = sampler.keyframes(params, captions, seed=v["seed"] + i)
    manifest = save_storyline(v["outdir"], i, story, frames, captions, title_suffix=f" (step {step})",
                              checkpoint_step=step, seed=v["seed"] + i, mode=c.sample.mode,
                              num_steps=c.sample.num_steps, guidance=c.sample.guidance,
                              seconds=round(time.perf_counter() - start, 2))
    logging.info("storyline %d: %d keyframes in %.1f s", i, len(frames), manifest["seconds"])
    print(f"storyboard: {os.path.join(v['outdir'], manifest['dir'], 'storyboard.png')}")


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, _flags))
