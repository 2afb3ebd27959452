"""The toy-cinema benchmark of keyframe models (the library of `python -m cinema_jax.evaluate`): sample
storylines at several context lengths, judge them against the ground truth, tabulate."""

from __future__ import annotations

import json
import os
import time

from absl import logging
import numpy as np
from PIL import Image

from cinema_jax import checkpoints
from cinema_jax import cli
from cinema_jax import config_validation
from cinema_jax import encoders
from cinema_jax import errors
from cinema_jax import loading
from cinema_jax import paths
from cinema_jax.eval import clip_metrics
from cinema_jax.eval import judge as judge_lib
from cinema_jax.eval import metrics
from cinema_jax.sampling import jobs
from cinema_jax.sampling import keyframe_sampler
from data_pipelines import toy_dataset
from data_pipelines import toy_render

TRUTH_FILE = "storylines_truth.jsonl"
_TABLE = (  # (report key, column title, format)
    ("character_consistency", "character consistency", "{:.3f}"),
    ("character_colour_consistency", "colour consistency", "{:.3f}"),
    ("location_consistency", "location consistency", "{:.3f}"),
    ("place_consistency", "place", "{:.3f}"),
    ("landmark_consistency", "landmark", "{:.3f}"),
    ("caption_alignment", "caption alignment", "{:.3f}"),
    ("clip_alignment", "CLIP text-image", "{:.3f}"),
    ("clip_character_consistency", "CLIP character", "{:.3f}"),
    ("clip_place_consistency", "CLIP place", "{:.3f}"),
    ("frechet_distance", "Frechet distance (lower)", "{:.2f}"),
    ("diversity", "diversity", "{:.2f}"),
    ("duplicate_rate", "duplicates (lower)", "{:.3f}"),
    ("seconds_per_keyframe", "s / keyframe", "{:.2f}"),
)


def read_truth(storylines_path: str) -> dict[str, dict]:
  """movie_id -> ground truth, from the truth file beside a storylines file."""
  path = os.path.join(os.path.dirname(os.path.abspath(storylines_path)), TRUTH_FILE)
  if not os.path.exists(path):
    raise errors.DataError(f"no ground truth for {storylines_path}: expected {path} "
                           "(data_pipelines.toy_movies writes it beside storylines.jsonl)")
  truth = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          t = json.loads(line)
          truth[t["movie_id"]] = t
        except (json.JSONDecodeError, KeyError, TypeError):
          raise errors.DataError(f"{path} line {n}: expected a JSON object with movie_id and shots") from None
  return truth


def read_samples(folder: str) -> list[tuple[dict, np.ndarray]]:
  """(manifest, uint8 keyframes [K, H, W, 3]) of every storyline folder under `folder`."""
  if not os.path.isdir(folder):
    raise errors.DataError(f"samples folder {folder} does not exist")
  out = []
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name, "manifest.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      manifest = json.load(f)
    frames = [np.asarray(Image.open(os.path.join(folder, name, k)).convert("RGB")) for k in manifest["keyframes"]]
    out.append((manifest, np.stack(frames)))
  if not out:
    raise errors.DataError(f"{folder}: no sampled storylines (folders with a manifest.json)")
  return out


def score(samples: list[tuple[dict, np.ndarray]], truth: dict[str, dict] | None, clip=None) -> dict:
  """The report entry of one set of sampled storylines (and of the real renders of the same shots):
  judged against the ground truth when there is one, CLIP's proxies when a CLIP model is given."""
  proxies = {}
  if clip is not None:
    proxies = clip_metrics.rates([clip_metrics.storyline(clip, frames, m["captions"], m.get("characters"),
                                                         m.get("places")) for m, frames in samples])
  if truth is None:
    keyframes = sum(len(f) for _, f in samples)
    return {"result": {**proxies, "storylines": len(samples), "keyframes": keyframes}, "reference": None}
  counts: dict[str, int] = {}
  real_counts: dict[str, int] = {}
  div = {"pairs": 0, "gen_distance": 0.0, "real_distance": 0.0, "near_copies": 0}
  gen_features, real_features = [], []
  for manifest, frames in samples:
    movie = truth.get(manifest.get("movie_id"))
    if movie is None:
      raise errors.DataError(f"storyline {manifest.get('title')!r}: movie_id {manifest.get('movie_id')!r} "
                             "has no ground truth")
    shots = movie["shots"][:len(frames)]
    h, w = frames.shape[1:3]
    real = np.stack([toy_render.render_shot(s, h, w)[0] for s in shots])
    judged = [judge_lib.judge(f) for f in frames]
    judged_real = [judge_lib.judge(f) for f in real]
    for acc, j in ((counts, judged), (real_counts, judged_real)):
      for k, v in metrics.storyline_metrics(shots, j).items():
        acc[k] = acc.get(k, 0) + v
    for k, v in metrics.diversity(frames, real, [s["caption"] for s in shots]).items():
      div[k] += v
    gen_features += [metrics.features(j) for j in judged]
    real_features += [metrics.features(j) for j in judged_real]
  result = metrics.rates(counts)
  result["frechet_distance"] = metrics.frechet_distance(np.stack(gen_features), np.stack(real_features))
  result["diversity"] = div["gen_distance"] / div["real_distance"] if div["real_distance"] else None
  result["duplicate_rate"] = div["near_copies"] / div["pairs"] if div["pairs"] else None
  seconds = [m.get("seconds") for m, _ in samples]
  keyframes = sum(len(f) for _, f in samples)
  result["seconds_per_keyframe"] = sum(seconds) / keyframes if None not in seconds else None
  result.update(storylines=len(samples), keyframes=keyframes, counts=counts, **proxies)
  reference = metrics.rates(real_counts)
  reference.update(frechet_distance=0.0, diversity=1.0, duplicate_rate=None, seconds_per_keyframe=None,
                   storylines=len(samples), keyframes=keyframes, counts=real_counts)
  return {"result": result, "reference": reference}


def markdown(rows: list[dict], title: str, columns=_TABLE,
             second: tuple[str, str] = ("num_pairs", "context pairs")) -> str:
  """A markdown table of report rows: setting, the `second` (key, title) column, then `columns`."""
  key, name = second
  head = f"| setting | {name} | " + " | ".join(t for _, t, _ in columns) + " |"
  lines = [f"# {title}", "", head, "|" + "---|" * (len(columns) + 2)]
  for r in rows:
    cells = ["-" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in columns]
    lines.append(f"| {r['setting']} | {r.get(key) or '-'} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def sample_all(v: dict, stories: list[dict], out: str) -> list[tuple[str, int, str]]:
  """Samples every storyline at every context length; returns (setting, pairs, folder) per length."""
  c, graphdef, params, step = loading.load(v["workdir"], v["raw_params"])
  changes = {f"sample.{field}": v[field] for field in ("num_steps", "guidance") if v[field] is not None}
  if v["memory"]:
    changes["data.memory_levels"] = v["memory"]
  if v["context_order"]:
    changes["data.context_order"] = v["context_order"]
  if v["context_t"]:
    changes["sample.context_t"] = tuple(float(x) for x in v["context_t"])  # checked in main
  c = cli.apply_encoder_flags(config_validation.replace(c, changes), v)
  clip = loading.retrieval_clip(c, v["workdir"])
  text, frames_decoder = loading.encoders_for(c)
  done = []
  for pairs in v["num_pairs"]:
    sampler = keyframe_sampler.Sampler(c, graphdef, context_pairs=pairs, clip=clip, text=text, frames=frames_decoder)
    setting = "no memory" if pairs == 1 else (
        "GoldenMem" if c.data.memory_levels == "goldenmem" else "full context")
    if pairs > 1 and c.data.context_order != "chronological":
      setting += {"text": ", text-to-text retrieval", "image": ", text-to-image retrieval"}[c.data.context_order]
    if pairs > 1 and tuple(c.sample.context_t) != (0.0, 0.0):
      setting += ", noisy context {:g}-{:g}".format(*c.sample.context_t)
    slug = "".join(ch if ch.isalnum() or ch == "." else "-" for ch in setting.lower())
    folder = os.path.join(out, "samples", f"{slug}-{pairs:02d}")
    start_all = time.perf_counter()
    for i, story in enumerate(stories):
      captions = story["captions"][: v["max_shots"] or None]
      start = time.perf_counter()
      frames = sampler.keyframes(params, captions, seed=v["seed"] + i, mode="autoregressive")
      jobs.save_storyline(folder, i, story, frames, captions, title_suffix=f" ({pairs} pairs, step {step})",
                          checkpoint_step=step, seed=v["seed"] + i, context_pairs=pairs,
                          num_steps=c.sample.num_steps, guidance=c.sample.guidance,
                          seconds=round(time.perf_counter() - start, 3))
    logging.info("%s at %d pairs: %d storylines in %.0f s", setting, pairs, len(stories),
                 time.perf_counter() - start_all)
    done.append((setting, pairs, folder))
  return done


def write_report(out: str, report: dict, table: str) -> None:
  """out/report.json and out/report.md; prints the table."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "report.json"), "w") as fp:
    json.dump(report, fp, indent=1)
  with open(os.path.join(out, "report.md"), "w") as fp:
    fp.write(table)
  print(table)


def run(v: dict) -> dict:
  """Samples (v["workdir"]) or reads (v["samples"]) storylines, judges them and writes v["out"]/report.json
  and report.md; v: the settings of `python -m cinema_jax.evaluate` (its flags, checked there). Raises
  errors.DataError, FileNotFoundError or ValueError with one-line messages."""
  paths.writable_folder(v["out"], "--out")  # before any work
  storylines = v["storylines"]
  if storylines == "toy":
    if not v["workdir"]:
      raise errors.DataError("--storylines=toy needs --workdir (the toy world of its config)")
    c = loading.saved_config(v["workdir"])
    storylines = os.path.join(toy_dataset.root_for_config(c.data, v["workdir"]), "storylines.jsonl")
  stories = jobs.read_storylines(storylines)[: v["max_storylines"] or None]
  clip = encoders.ClipEmbedding.load(v["clip_model"]) if v["clip_model"] else None
  try:
    truth = read_truth(storylines)
  except errors.DataError:
    if clip is None:
      raise
    truth = None  # any storylines: CLIP's proxies only
  if v["workdir"]:
    if not os.path.isdir(os.path.join(v["workdir"], checkpoints.CHECKPOINT_DIR)):
      raise errors.DataError(f"no checkpoints in {v['workdir']}: train first (python -m cinema_jax.train)")
    runs = sample_all(v, stories, v["out"])
  else:
    runs = [(os.path.basename(os.path.normpath(d)), None, d) for d in v["samples"]]
  rows, reference = [], None
  for setting, pairs, folder in runs:
    samples = read_samples(folder)
    if pairs is None:  # a folder of samples: its manifests say how they were made
      pairs = samples[0][0].get("context_pairs")
    s = score(samples, truth, clip)
    rows.append({"setting": setting, "num_pairs": pairs, "samples": folder, **s["result"]})
    if s["reference"] is not None:
      reference = reference or {"setting": "real renders (reference)", "num_pairs": None, **s["reference"]}
  if reference is not None:
    rows.append(reference)
  report = {"storylines": storylines, "workdir": v["workdir"], "rows": rows}
  write_report(v["out"], report, markdown(rows, f"Toy-cinema benchmark: {os.path.basename(storylines)}"))
  return report
