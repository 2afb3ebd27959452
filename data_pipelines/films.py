"""Real films into shot records (the library of `python -m data_pipelines.curate`): shot detection,
keyframes, frames, captions and filters, movie by movie, resumable."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import json
import multiprocessing
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from typing import Any

import msgpack
import numpy as np
from PIL import Image

from cinema_jax import paths
from data_pipelines import records

DETECTORS = ("content", "adaptive", "threshold")
MOVIES_DIR, RECORDS_DIR, REPORT_FILE, SETTINGS_FILE = "movies", "train", "report.json", "settings.json"
_FILTERS = ("too_short", "dark", "flat", "duplicate", "no_caption")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that decides the records; a resumed run must use the same (checked)."""

  detector: str = "content"
  threshold: float | None = None  # the detector's threshold (None: PySceneDetect's default)
  min_scene_len: int = 15  # frames: the detector never cuts closer than this
  min_shot_s: float = 1.0  # shots shorter than this are dropped
  aspect: float = 2.0  # width / height of the keyframes
  short_side: int = 400  # keyframe height in pixels (aspect >= 1)
  border_luma: float = 20.0  # an edge row or column darker than this (mean, 0-255) in every keyframe is a border
  dark_luma: float = 20.0  # filter: keyframes with mean luma below this
  flat_laplacian: float = 10.0  # filter: keyframes whose Laplacian variance is below this (flat or blurry)
  duplicate_diff: float = 2.0  # filter: mean abs difference (0-255, 16x32 thumbnails) to the previous kept keyframe
  frames: int = 0  # frames per shot for the video model (0: keyframes only)
  fps: float = 8.0  # their frame rate
  captioner: str = ""  # command run per keyframe, "{image}" replaced by a PNG path; stdout is the caption
  captioner_timeout_s: float = 120.0

  @property
  def size(self) -> tuple[int, int]:
    return self.short_side, int(round(self.short_side * self.aspect))

  def check(self) -> None:
    def need(ok: bool, field: str, expected: str):
      if not ok:
        raise ValueError(f"--{field}={getattr(self, field)!r}: expected {expected}")
    need(self.detector in DETECTORS, "detector", f"one of {', '.join(DETECTORS)}")
    need(self.min_scene_len >= 1, "min_scene_len", "an int >= 1")
    need(self.min_shot_s >= 0, "min_shot_s", "seconds >= 0")
    need(self.aspect >= 1, "aspect", "width / height >= 1")
    need(self.short_side >= 8, "short_side", "pixels >= 8")
    need(self.frames >= 0, "frames", "an int >= 0")
    need(self.fps > 0, "fps", "frames per second > 0")
    need(self.threshold is None or self.threshold >= 0, "threshold", "a number >= 0")
    need(0 <= self.dark_luma <= 255, "dark_luma", "a luma in [0, 255]")
    need(self.flat_laplacian >= 0, "flat_laplacian", "a number >= 0")
    need(0 <= self.duplicate_diff <= 255, "duplicate_diff", "a mean difference in [0, 255]")
    need(self.border_luma >= 0, "border_luma", "a luma >= 0")
    need(self.captioner_timeout_s > 0, "captioner_timeout_s", "seconds > 0")
    need(not self.captioner or "{image}" in self.captioner, "captioner", "a command containing {image}")


class VideoError(Exception):
  """A file that cannot be read as a whole video (corrupt, truncated, not a video)."""


class CaptionerError(ValueError):
  """The --captioner command cannot run or exits non-zero: the tool is at fault, not one film, so the run stops
  (films curated so far are kept and a rerun resumes after them)."""


# ------------------------------------------------------------------------------------------ shots


def detect_shots(path: str, s: Settings) -> tuple[list[tuple[int, int]], float]:
  """([start, end) frame numbers per shot, frame rate) by PySceneDetect over the PyAV-decoded video."""
  import scenedetect  # pylint: disable=g-import-not-at-top
  kw: dict[str, Any] = {"min_scene_len": s.min_scene_len}
  if s.threshold is not None:
    kw["adaptive_threshold" if s.detector == "adaptive" else "threshold"] = s.threshold
  detector = {"content": scenedetect.ContentDetector, "adaptive": scenedetect.AdaptiveDetector,
              "threshold": scenedetect.ThresholdDetector}[s.detector](**kw)
  try:
    video = scenedetect.open_video(path, backend="pyav")
    manager = scenedetect.SceneManager()
    manager.add_detector(detector)
    manager.detect_scenes(video)
    scenes = manager.get_scene_list(start_in_scene=True)
  except Exception as e:  # PyAV and PySceneDetect raise many types for unreadable input
    raise VideoError(f"cannot decode ({type(e).__name__}: {e})") from None
  return [(a.frame_num, b.frame_num) for a, b in scenes], float(video.frame_rate)


def decode_frames(path: str, wanted: set[int]) -> tuple[dict[int, np.ndarray], int, int]:
  """({frame number: uint8 RGB [H, W, 3]} for the wanted frames, frames decoded, frames the header says)."""
  import av  # pylint: disable=g-import-not-at-top
  out: dict[int, np.ndarray] = {}
  count = 0
  try:
    with av.open(path) as container:
      stream = container.streams.video[0]
      expected = int(stream.frames or 0)
      if not expected and container.duration and stream.average_rate:  # e.g. Matroska: no frame count
        expected = int(round(container.duration / 1e6 * float(stream.average_rate)))
      for count, frame in enumerate(container.decode(stream), start=1):
        if count - 1 in wanted:
          out[count - 1] = frame.to_ndarray(format="rgb24")
  except Exception as e:  # av.error.* and IndexError (no video stream)
    raise VideoError(f"cannot decode ({type(e).__name__}: {e})") from None
  return out, count, expected


def middle_frame(start: int, end: int) -> int:
  return start + (end - start) // 2


def frame_numbers(start: int, end: int, src_fps: float, s: Settings) -> list[int]:
  """The keyframe, then the shot's frames at s.fps after it (the last frame repeats past the shot's end)."""
  mid = middle_frame(start, end)
  return [min(end - 1, mid + int(round(j * src_fps / s.fps))) for j in range(max(s.frames, 1))]


# ---------------------------------------------------------------------------------------- pictures


def _luma(rgb: np.ndarray) -> np.ndarray:
  return rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])


def content_box(keyframes: list[np.ndarray], dark: float) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) inside the black bars: edge rows / columns dark in every keyframe."""
  h, w = keyframes[0].shape[:2]
  rows = np.max([_luma(k).mean(axis=1) for k in keyframes], axis=0)  # [H]: the brightest any keyframe gets
  cols = np.max([_luma(k).mean(axis=0) for k in keyframes], axis=0)  # [W]
  lit_r, lit_c = np.flatnonzero(rows > dark), np.flatnonzero(cols > dark)
  if not len(lit_r) or not len(lit_c):  # every keyframe black: nothing to tell bars from picture
    return 0, h, 0, w
  return int(lit_r[0]), int(lit_r[-1]) + 1, int(lit_c[0]), int(lit_c[-1]) + 1


def crop_and_resize(frame: np.ndarray, box: tuple[int, int, int, int], s: Settings) -> np.ndarray:
  """The content box, centre-cropped to s.aspect, resized to s.size (H, W)."""
  top, bottom, left, right = box
  x = frame[top:bottom, left:right]
  h, w = x.shape[:2]
  if w > h * s.aspect:  # too wide: trim the sides
    cw = max(1, int(round(h * s.aspect)))
    x = x[:, (w - cw) // 2:(w - cw) // 2 + cw]
  else:  # too tall: trim top and bottom
    ch = max(1, int(round(w / s.aspect)))
    x = x[(h - ch) // 2:(h - ch) // 2 + ch]
  out_h, out_w = s.size
  return np.asarray(Image.fromarray(x).resize((out_w, out_h), Image.Resampling.LANCZOS))


def laplacian_variance(rgb: np.ndarray) -> float:
  y = _luma(rgb)
  lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4 * y[1:-1, 1:-1]
  return float(lap.var())


def thumbnail(rgb: np.ndarray) -> np.ndarray:
  return np.asarray(Image.fromarray(rgb).resize((32, 16), Image.Resampling.BOX), np.float32)


# ---------------------------------------------------------------------------------------- captions


def sidecar_captions(captions_dir: str, stem: str, spans_s: list[tuple[float, float]]) -> tuple[dict[int, str], str]:
  """({detected shot: caption}, source) from <stem>.json or <stem>.srt in captions_dir, if either exists."""
  if not captions_dir:
    return {}, ""
  path = os.path.join(captions_dir, stem + ".json")
  if os.path.exists(path):
    try:
      with open(path) as f:
        raw = json.load(f)
      if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ValueError("expected an object {\"<shot number>\": \"caption\"}")
      return {int(k): v.strip() for k, v in raw.items() if v.strip()}, "json"
    except (ValueError, json.JSONDecodeError) as e:
      raise VideoError(f"captions {path}: {e}") from None
  path = os.path.join(captions_dir, stem + ".srt")
  if os.path.exists(path):
    import srt  # pylint: disable=g-import-not-at-top
    try:
      with open(path, encoding="utf-8-sig") as f:
        subs = list(srt.parse(f.read()))
    except (srt.SRTParseError, UnicodeDecodeError) as e:
      raise VideoError(f"captions {path}: not a readable SRT file ({e})") from None
    out = {}
    for k, (a, b) in enumerate(spans_s):
      text = " ".join(sub.content.replace("\n", " ").strip() for sub in subs
                      if sub.start.total_seconds() < b and sub.end.total_seconds() > a)
      if text.strip():
        out[k] = text.strip()
    return out, "srt"
  return {}, ""


def run_captioner(command: str, keyframe: np.ndarray, timeout_s: float, where: str = "") -> tuple[str, str]:
  """(caption, "") from the user's command on this keyframe, or ("", why not) when it timed out on it;
  CaptionerError when the command cannot be started or exits non-zero. where: the shot, for the message."""
  with tempfile.TemporaryDirectory() as tmp:
    image = os.path.join(tmp, "keyframe.png")
    Image.fromarray(keyframe).save(image)
    argv = [a.replace("{image}", image) for a in shlex.split(command)]
    try:
      done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
      return "", f"captioner took over {timeout_s:g} s"
    except OSError as e:
      raise CaptionerError(f"--captioner={command!r} cannot run ({e.strerror or e}: {argv[0]})") from None
  if done.returncode:
    detail = " ".join(done.stderr.strip().splitlines()[-1:])[-200:]
    raise CaptionerError(f"--captioner={command!r} exited {done.returncode} on {where or 'a keyframe'}"
                         + (f" ({detail})" if detail else "") + "; films curated before it are kept")
  return done.stdout.strip(), ""


# ------------------------------------------------------------------------------------------ a movie


def movie_id(path: str) -> str:
  """The file's name without extension, reduced to [A-Za-z0-9._-]."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(path))[0]) or "movie"


def curate_movie(path: str, out: str, s: Settings, captions_dir: str = "") -> dict[str, Any]:
  """Curates one file into <out>/movies/<movie_id>/ (atomically); returns its report entry."""
  mid = movie_id(path)
  final = os.path.join(out, MOVIES_DIR, mid)
  if os.path.exists(os.path.join(final, "manifest.json")):
    with open(os.path.join(final, "manifest.json")) as f:
      return dict(json.load(f)["report"], status="done before")
  try:
    shots, shot_records = _curate(path, mid, s, captions_dir)
  except VideoError as e:
    return {"movie_id": mid, "video": path, "status": f"skipped: {e}"}
  staging = os.path.join(out, MOVIES_DIR, f".staging-{mid}-{os.getpid()}")
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  with open(os.path.join(staging, "shots.msgpack"), "wb") as f:
    f.write(msgpack.packb([r.to_bytes() for r in shot_records], use_bin_type=True))
  report = shots.pop("report")
  with open(os.path.join(staging, "manifest.json"), "w") as f:
    json.dump({"report": report, **shots}, f, indent=1)
  shutil.rmtree(final, ignore_errors=True)  # an incomplete folder (no manifest) from a killed run
  os.rename(staging, final)
  return dict(report, status="done")


def _curate(path: str, mid: str, s: Settings, captions_dir: str) -> tuple[dict[str, Any], list[records.Shot]]:
  if not os.path.isfile(path):
    raise VideoError("no such file")
  spans, fps = detect_shots(path, s)
  if not spans or not fps > 0:
    raise VideoError("no video frames")
  num_frames = spans[-1][1]
  long_enough = [(a, b) for a, b in spans if (b - a) / fps >= s.min_shot_s]
  wanted = {f for a, b in long_enough for f in frame_numbers(a, b, fps, s)}
  frames, decoded, expected = decode_frames(path, wanted)
  if decoded < num_frames or decoded < expected - 1:  # one frame of rounding in a duration
    raise VideoError(f"truncated: {decoded} frames decoded, {max(num_frames, expected)} expected")
  spans_s = [(a / fps, b / fps) for a, b in spans]
  box = content_box([frames[middle_frame(a, b)] for a, b in long_enough], s.border_luma) if long_enough else None
  given, source = sidecar_captions(captions_dir, os.path.splitext(os.path.basename(path))[0], spans_s)

  counts = {k: 0 for k in _FILTERS}
  listed, kept, previous = [], [], None
  for k, (a, b) in enumerate(spans):
    entry = {"shot": k, "start_frame": a, "end_frame": b, "start_s": round(a / fps, 4), "end_s": round(b / fps, 4)}
    listed.append(entry)
    if (b - a) / fps < s.min_shot_s:
      entry["dropped"] = "too_short"
      counts["too_short"] += 1
      continue
    numbers = frame_numbers(a, b, fps, s)
    key = crop_and_resize(frames[numbers[0]], box, s)
    why = ("dark" if _luma(key).mean() < s.dark_luma else
           "flat" if laplacian_variance(key) < s.flat_laplacian else
           "duplicate" if previous is not None and np.abs(thumbnail(key) - previous).mean() < s.duplicate_diff
           else "")
    if why:
      entry["dropped"] = why
      counts[why] += 1
      continue
    previous = thumbnail(key)
    caption, caption_source, problem = given.get(k, ""), source, ""
    if not caption and s.captioner:
      (caption, problem), caption_source = run_captioner(s.captioner, key, s.captioner_timeout_s,
                                                               f"{mid} shot {k}"), "captioner"
    if not caption:
      entry["dropped"] = "no_caption"
      entry["why"] = problem or (f"no caption for shot {k} in the {source} sidecar" if source else "no caption source")
      counts["no_caption"] += 1
      continue
    entry.update(kept_as=len(kept), caption=caption, caption_source=caption_source)
    strip = None
    if s.frames:
      strip = records.encode_png(np.concatenate([crop_and_resize(frames[n], box, s) for n in numbers]))
    kept.append(records.Shot(
        movie_id=mid, shot_index=len(kept), caption=caption, keyframe_png=records.encode_png(key),
        frames_png=strip,
        meta={"source": "curate", "video": os.path.basename(path), "fps": s.fps if s.frames else fps,
              "video_fps": fps, "start_s": entry["start_s"], "end_s": entry["end_s"], "detected_shot": k,
              "keyframe_frame": numbers[0], "caption_source": caption_source}))
  report = {"movie_id": mid, "video": path, "duration_s": round(num_frames / fps, 3), "fps": fps,
            "shots_found": len(spans), "kept": len(kept), "filtered": counts,
            "border_box": list(box) if box else None}
  return {"report": report, "shots": listed}, kept


# ------------------------------------------------------------------------------------------ a run


_SIDECARS = (".json", ".srt", ".txt", ".md")


def find_videos(pattern: str) -> list[str]:
  """Files of a directory (not recursive; caption sidecars left out) or of a glob, sorted."""
  if os.path.isdir(pattern):
    paths = [os.path.join(pattern, n) for n in os.listdir(pattern) if not n.lower().endswith(_SIDECARS)]
  else:
    paths = glob.glob(pattern)
  paths = sorted(p for p in paths if os.path.isfile(p))
  if not paths:
    raise ValueError(f"--videos={pattern!r}: no files")
  ids: dict[str, str] = {}
  for p in paths:
    other = ids.setdefault(movie_id(p), p)
    if other != p:
      raise ValueError(f"--videos: {other} and {p} would both be movie {movie_id(p)!r}; rename one")
  return paths


def _check_settings(out: str, s: Settings, captions_dir: str) -> None:
  """A resumed run (or one that adds films) must curate as the first did; the first writes settings.json.
  A folder that holds anything else is not curate's to write into."""
  paths.writable_folder(out, "--out")
  want = dict(dataclasses.asdict(s), captions=os.path.abspath(captions_dir) if captions_dir else "")
  path = os.path.join(out, SETTINGS_FILE)
  if not os.path.exists(path) and os.path.isdir(out) and os.listdir(out):
    raise ValueError(f"--out={out} holds other data ({', '.join(sorted(os.listdir(out))[:3])}, ...), not a curated "
                     "folder: curate into an empty or new folder")
  if os.path.exists(path):
    with open(path) as f:
      have = json.load(f)
    diff = [k for k in want if have.get(k) != want[k]]
    if diff:
      k = diff[0]
      raise ValueError(f"{out} was curated with {k}={have.get(k)!r}, this run has {want[k]!r}: use the same "
                       "settings to resume, or another --out")
    return
  os.makedirs(out, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(want, f, indent=1)
  os.replace(path + ".tmp", path)


def curate(videos: list[str], out: str, s: Settings, *, captions_dir: str = "", workers: int = 1,
           progress: bool = False) -> dict[str, Any]:
  """Curates every file (skipping finished movies), then writes the records <out>/train and the report of
  every film curated into `out`, by this run or an earlier one (curating into a folder adds films)."""
  s.check()
  out = os.path.abspath(out)
  _check_settings(out, s, captions_dir)
  os.makedirs(os.path.join(out, MOVIES_DIR), exist_ok=True)
  for stale in glob.glob(os.path.join(out, MOVIES_DIR, ".staging-*")):
    shutil.rmtree(stale, ignore_errors=True)
  entries: list[dict[str, Any]] = []
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=len(videos), unit="movie", desc="curating")
  try:
    if workers <= 1:
      for v in videos:
        entries.append(curate_movie(v, out, s, captions_dir))
        if bar:
          bar.update()
    else:
      ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(curate_movie, v, out, s, captions_dir) for v in videos]
        for fut in concurrent.futures.as_completed(futures):
          entries.append(fut.result())
          if bar:
            bar.update()
  finally:
    if bar:  # its line ends before an error is printed
      bar.close()
  this_run = {e["movie_id"] for e in entries}
  for mid in sorted(os.listdir(os.path.join(out, MOVIES_DIR))):  # films an earlier run curated into `out`
    manifest = os.path.join(out, MOVIES_DIR, mid, "manifest.json")
    if mid not in this_run and not mid.startswith(".") and os.path.exists(manifest):
      with open(manifest) as f:
        entries.append(dict(json.load(f)["report"], status="done before"))
  entries.sort(key=lambda e: e["movie_id"])
  movies = []
  for e in entries:
    if e["status"].startswith("skipped") or not e.get("kept"):
      continue
    with open(os.path.join(out, MOVIES_DIR, e["movie_id"], "shots.msgpack"), "rb") as f:
      movies.append([records.Shot.from_bytes(b) for b in msgpack.unpackb(f.read(), raw=False)])
  summary = {"movies": entries, "records": None}
  if movies:
    index = records.write_dataset(os.path.join(out, RECORDS_DIR), movies, num_frames=s.frames, overwrite=True,
                                  info={"source": "curate", "settings": dataclasses.asdict(s)})
    summary["records"] = {"path": os.path.join(out, RECORDS_DIR), "movies": len(index.movies),
                          "shots": index.num_records}
  with open(os.path.join(out, REPORT_FILE + ".tmp"), "w") as f:
    json.dump(summary, f, indent=1)
  os.replace(os.path.join(out, REPORT_FILE + ".tmp"), os.path.join(out, REPORT_FILE))
  return summary


def report_table(summary: dict[str, Any]) -> str:
  lines = ["| movie | duration s | shots found | kept | " + " | ".join(_FILTERS) + " | status |",
           "|---|---|---|---|" + "---|" * len(_FILTERS) + "---|"]
  for e in summary["movies"]:
    f = e.get("filtered", {})
    lines.append(f"| {e['movie_id']} | {e.get('duration_s', '-')} | {e.get('shots_found', '-')} | "
                 f"{e.get('kept', '-')} | " + " | ".join(str(f.get(k, "-")) for k in _FILTERS) + f" | {e['status']} |")
  r = summary["records"]
  lines.append(f"\nrecords: {r['path']} ({r['movies']} movies, {r['shots']} shots)" if r else "\nrecords: none "
               "(no movie kept a captioned shot)")
  return "\n".join(lines)

