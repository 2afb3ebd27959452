"""Batch sampling jobs: storylines split over processes and devices, resumable, with progress and a summary.

Process p of N takes storylines p, p + N, p + 2N, ... and samples them in fixed chunks of
per_device_batch x (its devices) storylines, one chunk per call, split over its devices. The chunks
do not depend on what is already done, so a restarted job computes every storyline in the same batch
as an uninterrupted one and writes the same pixels. A storyline whose folder exists is complete
(folders are renamed into place whole) and is skipped; a chunk runs only if one of its storylines is
missing, and writes only the missing ones. Processes never talk to each other: sampling needs no
collectives, so a dead process costs only its own unfinished chunk.

Outputs: OUT/<index>-<slug>/ per storyline, OUT/.job/settings.json (what they are sampled with: a
rerun with other settings is refused), OUT/.job/process_<p>.json per process, and
OUT/job_summary.json once every storyline is complete (written by whichever process finds that).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import time

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
from PIL import Image

from cinema_jax import checkpoints
from cinema_jax import cli
from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import loading
from cinema_jax import paths
from cinema_jax import sharding
from cinema_jax.sampling import keyframe_sampler
from cinema_jax.sampling import movie
from cinema_jax.sampling import shot_sampler
from cinema_jax.sampling import storyboard
from data_pipelines import toy_dataset

SUMMARY = "job_summary.json"
SETTINGS = "settings.json"  # in OUT/.job: what the storylines are sampled with


def process_identity(process_id: int | None, num_processes: int | None) -> tuple[int, int]:
  """(p, N) from the flags, else from SLURM's environment (srun), else (0, 1)."""
  if process_id is None and num_processes is None and "SLURM_PROCID" in os.environ:
    process_id, num_processes = int(os.environ["SLURM_PROCID"]), int(os.environ.get("SLURM_NTASKS", "1"))
  if (process_id is None) != (num_processes is None):
    raise ValueError(f"--process_id and --num_processes go together; got {process_id!r}, {num_processes!r}")
  if process_id is None:
    return 0, 1
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id}: expected 0 <= id < --num_processes={num_processes}")
  return process_id, num_processes


def chunks(num_storylines: int, process_id: int, num_processes: int, chunk_size: int) -> list[list[int]]:
  """This process's storylines in the fixed chunks it samples them in."""
  mine = list(range(process_id, num_storylines, num_processes))
  return [mine[i:i + chunk_size] for i in range(0, len(mine), chunk_size)]


def is_complete(outdir: str, index: int, story: dict) -> bool:
  return os.path.exists(os.path.join(outdir, storyline_dir(index, story), "manifest.json"))


def storyline_dir(index: int, story: dict) -> str:
  """The name of storyline `index`'s folder: <index>-<slug of its title>."""
  slug = re.sub(r"[^a-z0-9]+", "-", story["title"].lower()).strip("-")[:40]
  return f"{index:03d}-{slug}"


def save_storyline(outdir: str, index: int, story: dict, frames, captions: list[str], *, title_suffix: str = "",
                   shots=None, video: dict | None = None, **info) -> dict:
  """Writes OUT/<index>-<slug>/ (keyframe PNGs, storyboard.png, manifest.json); returns the manifest.

  shots: uint8 [K, F, H, W, 3] shot videos (the keyframes first), written as shot_<k>.mp4, movie.mp4
  (every shot in order) and movie.html (storyboard, captions and playable shots in one file);
  video: {"fps": ..., "scale": ...} for them.

  Atomic: written into a hidden folder, then renamed, so a folder that exists is complete (a killed
  job leaves only .tmp-* folders, which the next run replaces)."""
  name = storyline_dir(index, story)
  final = os.path.join(outdir, name)
  tmp = os.path.join(outdir, f".tmp-{name}-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  files = []
  for k, frame in enumerate(frames):
    files.append(f"keyframe_{k:03d}.png")
    Image.fromarray(frame).save(os.path.join(tmp, files[-1]))
  keyframe_sampler.storyboard_image(frames, captions, title=story["title"] + title_suffix).save(
      os.path.join(tmp, "storyboard.png"))
  manifest = {"dir": name, "title": story["title"], "movie_id": story.get("movie_id"), "captions": captions,
              "keyframes": files, "storyboard": "storyboard.png", **info}
  for key in ("characters", "places"):  # who and where, per shot, when the storyline says
    if key in story:
      manifest[key] = story[key][:len(captions)]
  if shots is not None:
    manifest.update(_save_movie(tmp, story["title"] + title_suffix, shots, captions, files, **video))
  with open(os.path.join(tmp, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
  if os.path.exists(final):  # an earlier, complete output of the same storyline is replaced whole
    shutil.rmtree(final)
  os.rename(tmp, final)
  return manifest


def _save_movie(folder: str, title: str, shots, captions: list[str], keyframes: list[str], fps: float,
                scale: int) -> dict:
  """Per-shot MP4s, the whole movie's MP4 and its HTML page in folder; their manifest entries."""
  names = [f"shot_{k:03d}.mp4" for k in range(len(shots))]
  for name, clip in zip(names, shots):
    movie.write_mp4(os.path.join(folder, name), clip, fps, scale)
  movie.write_mp4(os.path.join(folder, "movie.mp4"), np.concatenate(list(shots)), fps, scale)
  storyboard.filmstrip(shots, captions, title=title).save(os.path.join(folder, "filmstrip.png"))
  movie.html_page(os.path.join(folder, "movie.html"), title=title,
                  storyboard_png=os.path.join(folder, "storyboard.png"), movie_mp4=os.path.join(folder, "movie.mp4"),
                  shots=[{"caption": cap, "keyframe_png": os.path.join(folder, kf), "mp4": os.path.join(folder, name)}
                         for cap, kf, name in zip(captions, keyframes, names)])
  return {"shots": names, "movie": "movie.mp4", "html": "movie.html", "filmstrip": "filmstrip.png", "fps": fps,
          "frames_per_shot": int(shots.shape[1])}


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def claim(outdir: str, settings: dict) -> None:
  """Records in OUT/.job/settings.json what outdir's storylines are sampled with, or refuses, in one line,
  an outdir whose storylines were sampled with other settings (a rerun would keep them and report the
  new ones)."""
  settings = json.loads(json.dumps(settings))  # as JSON reads it back: tuples are lists
  path = os.path.join(outdir, ".job", SETTINGS)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = [f"{k} {old.get(k)!r} (now {settings.get(k)!r})" for k in sorted(set(old) | set(settings))
               if old.get(k) != settings.get(k)]
    if changed:
      raise errors.DataError(f"--outdir={outdir} holds storylines sampled with other settings: {', '.join(changed)}; "
                             "sample into another folder (or delete it)")
    return
  others = sorted(n for n in (os.listdir(outdir) if os.path.isdir(outdir) else ())
                  if not (n.startswith(".") or n == SUMMARY or re.match(r"\d{3,}-", n)))
  if others:  # not a sampling job's folder: nothing of a user's is written beside or over
    listed = ", ".join(others[:3]) + (", ..." if others[3:] else "")
    raise errors.DataError(f"--outdir={outdir} holds other files ({listed}); sample into a new or empty folder")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  _write_json(path, settings)


def run(sampler: keyframe_sampler.Sampler, params, stories: list[dict], outdir: str, *, seed: int, max_shots: int,
        per_device_batch: int = 1, process_id: int = 0, num_processes: int = 1, info: dict | None = None,
        title_suffix: str = "", echo=print, shots_fn=None, video: dict | None = None) -> dict:
  """Samples this process's share of `stories` into outdir; returns this process's report.

  shots_fn(keyframes [K, H, W, 3] uint8, captions, seed) -> shot videos [K, F, H, W, 3]: the video
  stage (shot_sampler.ShotSampler.shots) run on each storyline's keyframes; video: its MP4 settings
  ({"fps", "scale"}). Without it only keyframes and storyboards are written."""
  stories_digest = hashlib.sha1(json.dumps([[s["title"], s["captions"]] for s in stories]).encode()).hexdigest()
  claim(outdir, {**(info or {}), "seed": seed, "max_shots": max_shots, "video": video,
                 "storylines_sha1": stories_digest[:16]})
  devices = jax.local_devices()
  mesh = Mesh(np.array(devices), ("data",))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  batch_sharding = NamedSharding(mesh, P("data"))
  size = per_device_batch * len(devices)
  plan = chunks(len(stories), process_id, num_processes, size)
  mine = [i for ch in plan for i in ch]
  todo = {i for i in mine if not is_complete(outdir, i, stories[i])}
  for i in todo:  # what a killed run of this process's share left half-written
    for stale in glob.glob(os.path.join(glob.escape(outdir), f".tmp-{glob.escape(storyline_dir(i, stories[i]))}-*")):
      shutil.rmtree(stale, ignore_errors=True)
  attempt = f"{time.time_ns():x}-{os.getpid()}"
  who = f"[process {process_id}/{num_processes}]"
  echo(f"{who} {len(mine)} storylines ({len(mine) - len(todo)} already complete), chunks of {size} "
       f"over {len(devices)} {devices[0].platform} device(s)")
  start, done, keyframes = time.perf_counter(), 0, 0
  warm = None  # (time, storylines done) after the first chunk: later chunks reuse its compiled programs
  for ch in plan:
    if not todo.intersection(ch):
      continue
    t0 = time.perf_counter()
    caps = [stories[i]["captions"][: max_shots or None] for i in ch]
    pad = size - len(ch)  # the last chunk is filled with copies, keeping one compiled shape per window
    frames = sampler.keyframes_batch(params, caps + [caps[-1]] * pad, seeds=[seed + i for i in ch] + [seed] * pad,
                                     sharding=batch_sharding)
    seconds = round((time.perf_counter() - t0) / len(ch), 3)
    for i, f, c in zip(ch, frames, caps):
      if i not in todo:
        continue
      shots = shots_fn(f, c, seed + i) if shots_fn is not None else None
      manifest = save_storyline(outdir, i, stories[i], f, c, title_suffix=title_suffix, shots=shots, video=video,
                                seed=seed + i, process=process_id, job_attempt=attempt, seconds=seconds,
                                **(info or {}))
      echo(f"storyboard: {os.path.join(outdir, manifest['dir'], 'storyboard.png')}")
      if shots is not None:
        echo(f"movie: {os.path.join(outdir, manifest['dir'], 'movie.mp4')} and movie.html")
      done += 1
      keyframes += len(f)
    now = time.perf_counter()
    left = len(todo) - done
    per_storyline = (now - warm[0]) / (done - warm[1]) if warm else (now - start) / done
    warm = warm or (now, done)
    echo(f"{who} {len(mine) - left}/{len(mine)} storylines, {keyframes / (now - start):.2f} keyframes/s, "
         f"about {per_storyline * left:.0f} s left")
  elapsed = time.perf_counter() - start
  report = {"process": process_id, "num_processes": num_processes, "storylines": len(mine),
            "sampled": done, "skipped": len(mine) - len(todo), "keyframes": keyframes,
            "seconds": round(elapsed, 2), "keyframes_per_s": round(keyframes / elapsed, 3) if done else None,
            "devices": len(devices), "chunk": size, "attempt": attempt}
  os.makedirs(os.path.join(outdir, ".job"), exist_ok=True)
  _write_json(os.path.join(outdir, ".job", f"process_{process_id}.json"), report)
  summarize(outdir, stories, info or {}, echo)
  return report


def summarize(outdir: str, stories: list[dict], info: dict, echo=print) -> dict | None:
  """Writes OUT/job_summary.json when every storyline is complete; None while some are missing."""
  missing = [i for i, s in enumerate(stories) if not is_complete(outdir, i, s)]
  if missing:
    echo(f"{len(stories) - len(missing)}/{len(stories)} storylines complete; other processes still running "
         f"or to be restarted (first missing: {missing[0]})")
    return None
  manifests = [json.load(open(os.path.join(outdir, storyline_dir(i, s), "manifest.json")))
               for i, s in enumerate(stories)]
  jobdir = os.path.join(outdir, ".job")
  processes = [json.load(open(os.path.join(jobdir, f))) for f in sorted(os.listdir(jobdir))
               if f.startswith("process_") and f.endswith(".json")]  # not settings.json
  summary = {"storylines": len(stories), "keyframes": sum(len(m["keyframes"]) for m in manifests),
             "attempts": len({m.get("job_attempt") for m in manifests}), **info, "processes": processes}
  _write_json(os.path.join(outdir, SUMMARY), summary)
  echo(f"job complete: {summary['storylines']} storylines, {summary['keyframes']} keyframes -> "
       f"{os.path.join(outdir, SUMMARY)}")
  return summary


def read_storylines(path: str) -> list[dict]:
  """Storylines of a JSONL file, with one-line errors that name the file and line."""
  if not os.path.exists(path):
    raise errors.DataError(f"storylines file {path} does not exist")
  paths.existing(path, "--storylines", "file")
  out = []
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError:
        raise errors.DataError(f"{path} line {n}: not UTF-8 text") from None
      if not line.strip():
        continue
      try:
        story = json.loads(line)
      except json.JSONDecodeError as e:
        raise errors.DataError(f"{path} line {n}: not JSON ({e.msg})") from None
      caps = story.get("captions") if isinstance(story, dict) else None
      if not isinstance(caps, list) or not caps or not all(isinstance(x, str) and x.strip() for x in caps):
        raise errors.DataError(f"{path} line {n}: expected {{\"title\": ..., \"captions\": [non-empty strings]}}")
      entry = {"title": str(story.get("title", f"storyline {len(out)}")), "captions": caps,
               "movie_id": story.get("movie_id")}
      for key, ok in (("characters", lambda x: isinstance(x, list) and all(isinstance(n, str) for n in x)),
                      ("places", lambda x: x is None or isinstance(x, str))):  # optional, one per shot
        if key in story:
          if not isinstance(story[key], list) or len(story[key]) != len(caps) or not all(map(ok, story[key])):
            raise errors.DataError(f"{path} line {n}: {key!r} must hold one entry per caption "
                                   f"({'a list of names' if key == 'characters' else 'a place name or null'})")
          entry[key] = story[key]
      out.append(entry)
  if not out:
    raise errors.DataError(f"{path}: no storylines")
  return out


def keyframe_stage(workdir: str | None, flux: str | None, config, storylines: str, *, raw_params: bool = False,
                   param_dtype: str | None = None, context_pairs: int | None = None, overrides: dict | None = None,
                   encoder_flags: dict | None = None):
  """(sampler, params, stories, manifest info, config) of the keyframe model to sample: a training workdir's
  (its EMA or raw parameters) or a converted FLUX folder with its ConfigDict `config`. storylines: a
  storylines file, or "toy" (the held-out storylines of the toy world the workdir trained on); overrides:
  config.sample fields; encoder_flags: the encoder folders (cli.define_encoder_flags' values)."""
  stories = read_storylines(storylines) if storylines != "toy" else None
  if flux is not None:
    paths.existing(flux, "--flux", "folder")
    c, step = config_validation.load(config, reads_data=False), 0
  else:
    paths.existing(workdir, "--workdir", "folder")
    if not os.path.isdir(os.path.join(workdir, checkpoints.CHECKPOINT_DIR)):
      raise errors.DataError(f"no checkpoints in {workdir}: train first (python -m cinema_jax.train)")
    c = loading.saved_config(workdir)
  if c.task != "keyframe":
    raise errors.DataError(f"--workdir={workdir or flux} holds a {c.task} model; it must be a keyframe model "
                           "(configs/keyframe.py; the video model goes in --video_workdir)")
  c = cli.apply_encoder_flags(c, encoder_flags or {})
  c = config_validation.replace(c, {f"sample.{k}": x for k, x in (overrides or {}).items()}
                                | ({"sample.param_dtype": param_dtype} if param_dtype is not None else {}))
  dtype = loading.sampling_dtype(c.sample.param_dtype)
  mesh = sharding.make_mesh(c.mesh)
  if flux is not None:
    graphdef, params = loading.converted_params(flux, c, dtype, mesh)
  else:
    graphdef, params, step = loading.restore_params(workdir, c, raw_params, dtype, mesh)
  text, frames = loading.encoders_for(c, dtype, mesh)
  clip = loading.retrieval_clip(c, workdir or "", dtype)
  print(loading.memory_report(params, text, frames), flush=True)
  if stories is None:
    if c.data.path:
      raise errors.DataError("--storylines=toy: this model was trained on config.data.path, not the toy world")
    stories = read_storylines(os.path.join(toy_dataset.root_for_config(c.data, workdir), "storylines.jsonl"))
  sampler = keyframe_sampler.Sampler(c, graphdef, context_pairs=context_pairs or (1 if flux is not None else None),
                                     clip=clip, text=text, frames=frames)
  info = dict(checkpoint_step=step, **({"flux": os.path.abspath(flux)} if flux else {}),
              context_pairs=sampler.num_pairs, mode=c.sample.mode, num_steps=c.sample.num_steps,
              guidance=c.sample.guidance, kv_cache=c.sample.kv_cache, params="raw" if raw_params else "ema",
              param_dtype=c.sample.param_dtype)
  return sampler, params, stories, info, c


def video_stage(workdir: str, resolution: tuple[int, int] | None, raw_params: bool = False,
                overrides: dict | None = None, encoder_flags: dict | None = None):
  """(shots_fn for jobs.run, manifest info, config) of the video model in workdir; resolution:
  the keyframe model's, which it must match (None: unchecked); overrides: config.sample fields;
  encoder_flags: the encoder folders (cli.define_encoder_flags' values) for a latent T5/CLIP model."""
  paths.existing(workdir, "--video_workdir", "folder")
  if not os.path.isdir(os.path.join(workdir, checkpoints.CHECKPOINT_DIR)):
    raise errors.DataError(f"no checkpoints in --video_workdir={workdir}: train one first "
                           "(python -m cinema_jax.train --config=configs/video.py:demo)")
  c = loading.saved_config(workdir)
  if c.task != "video":
    raise errors.DataError(f"--video_workdir={workdir} holds a {c.task} model, not a video model (configs/video.py)")
  if resolution is not None and tuple(c.data.resolution) != tuple(resolution):
    raise errors.DataError(f"the video model makes {tuple(c.data.resolution)} frames, the keyframe model "
                           f"{tuple(resolution)} keyframes")
  c = config_validation.replace(c, {f"sample.{k}": x for k, x in (overrides or {}).items()})
  c = cli.apply_encoder_flags(c, encoder_flags or {})
  dtype = loading.sampling_dtype(c.sample.param_dtype)
  mesh = sharding.make_mesh(c.mesh)
  graphdef, params, step = loading.restore_params(workdir, c, raw_params, dtype, mesh)
  text, frames = loading.encoders_for(c, dtype, mesh)
  sampler = shot_sampler.ShotSampler(c, graphdef, text=text, frames=frames)
  info = {"video_checkpoint_step": step, "video_num_steps": c.sample.num_steps, "video_guidance": c.sample.guidance,
          "video_params": "raw" if raw_params else "ema"}
  return (lambda kf, captions, seed: sampler.shots(params, kf, captions, seed=seed)), info, c
