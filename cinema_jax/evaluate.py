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

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

from cinema_jax import checkpoints
from cinema_jax import encoders
from cinema_jax import retrieval
from cinema_jax import loading
from cinema_jax import sample as sample_lib
from cinema_jax import sample_job
from cinema_jax import sampling
from cinema_jax import cli
from cinema_jax.eval import clip_metrics
from cinema_jax.eval import judge as judge_lib
from cinema_jax.eval import metrics
from data_pipelines import records
from data_pipelines import toy_movies
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
    raise records.DataError(f"no ground truth for {storylines_path}: expected {path} "
                            "(data_pipelines.toy_movies writes it beside storylines.jsonl)")
  truth = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          t = json.loads(line)
          truth[t["movie_id"]] = t
        except (json.JSONDecodeError, KeyError, TypeError):
          raise records.DataError(f"{path} line {n}: expected a JSON object with movie_id and shots") from None
  return truth


def read_samples(folder: str) -> list[tuple[dict, np.ndarray]]:
  """(manifest, uint8 keyframes [K, H, W, 3]) of every storyline folder under `folder`."""
  if not os.path.isdir(folder):
    raise records.DataError(f"samples folder {folder} does not exist")
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
    raise records.DataError(f"{folder}: no sampled storylines (folders with a manifest.json)")
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
      raise records.DataError(f"storyline {manifest.get('title')!r}: movie_id {manifest.get('movie_id')!r} "
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


def _sample_all(v: dict, stories: list[dict], out: str) -> list[tuple[str, int, str]]:
  """Samples every storyline at every context length; returns (setting, pairs, folder) per length."""
  c, graphdef, params, step = sample_lib.load(v["workdir"], v["raw_params"])
  with c.unlocked():
    for field in ("num_steps", "guidance"):
      if v[field] is not None:
        c.sample[field] = v[field]
    if v["memory"]:
      c.data.memory_levels = v["memory"]
    if v["context_order"]:
      c.data.context_order = v["context_order"]
    if v["context_t"]:
      c.sample.context_t = tuple(float(x) for x in v["context_t"])  # checked in main
  cli.apply_encoder_flags(c, v)
  clip = loading.retrieval_clip(c, v["workdir"])
  text, frames_decoder = loading.encoders_for(c)
  done = []
  for pairs in v["num_pairs"]:
    sampler = sampling.Sampler(c, graphdef, context_pairs=pairs, clip=clip, text=text, frames=frames_decoder)
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
      sample_job.save_storyline(folder, i, story, frames, captions, title_suffix=f" ({pairs} pairs, step {step})",
                                checkpoint_step=step, seed=v["seed"] + i, context_pairs=pairs,
                                num_steps=c.sample.num_steps, guidance=c.sample.guidance,
                                seconds=round(time.perf_counter() - start, 3))
    logging.info("%s at %d pairs: %d storylines in %.0f s", setting, pairs, len(stories),
                 time.perf_counter() - start_all)
    done.append((setting, pairs, folder))
  return done


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
      "max_storylines": flags.DEFINE_integer("max_storylines", 0, "Use the first N storylines (0: all)."),
      "max_shots": flags.DEFINE_integer("max_shots", 32, "Keyframes per storyline (0: all)."),
      "num_steps": flags.DEFINE_integer("num_steps", None, "Euler steps (default: the config's)."),
      "guidance": flags.DEFINE_float("guidance", None, "CFG scale (default: the config's)."),
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
    storylines = v["storylines"]
    if storylines == "toy":
      if not v["workdir"]:
        raise records.DataError("--storylines=toy needs --workdir (the toy world of its config)")
      c = sample_lib.saved_config(v["workdir"])
      storylines = os.path.join(toy_movies.root_for_config(c.data, v["workdir"]), "storylines.jsonl")
    stories = sample_lib.read_storylines(storylines)[: v["max_storylines"] or None]
    clip = encoders.ClipEmbedding.load(v["clip_model"]) if v["clip_model"] else None
    try:
      truth = read_truth(storylines)
    except records.DataError:
      if clip is None:
        raise
      truth = None  # any storylines: CLIP's proxies only
    if v["workdir"]:
      if not os.path.isdir(os.path.join(v["workdir"], checkpoints.CHECKPOINT_DIR)):
        raise records.DataError(f"no checkpoints in {v['workdir']}: train first (python -m cinema_jax.train)")
      runs = _sample_all(v, stories, v["out"])
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
  except (records.DataError, FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  if reference is not None:
    rows.append(reference)
  write_report(v["out"], {"storylines": storylines, "workdir": v["workdir"], "rows": rows},
               markdown(rows, f"Toy-cinema benchmark: {os.path.basename(storylines)}"))


def write_report(out: str, report: dict, table: str) -> None:
  """out/report.json and out/report.md; prints the table."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "report.json"), "w") as fp:
    json.dump(report, fp, indent=1)
  with open(os.path.join(out, "report.md"), "w") as fp:
    fp.write(table)
  print(table)


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, _flags), flags_parser=cli.parse_flags)
