"""Toy-cinema metrics for generated shot videos: frames 1..F-1 of a shot, given its keyframe (frame 0).

Every frame is read by the oracle judge (judge.py). Per shot, against the shot's toy-world script:

Keyframe adherence (rates in [0, 1], higher is better), over the generated frames 1..F-1:
  location_adherence    the judged location equals the keyframe's
  cast_adherence        the judged characters, as a multiset of (colour, shape), equal the keyframe's
                        (size is left out: approaching and leaving characters change size class)
  background_agreement  on the pixels the real shot keeps static (the same in all its frames), the
                        fraction within STATIC_TOLERANCE (summed |RGB|) of the keyframe
Motion (each truth character is tracked: per frame, the judged character of its colour nearest its
last position, preferring its shape; x centre, fitted height and the bottom row of its fill):
  motion_match          rate of (shot, moving character) pairs whose tracked motion, first to last
                        frame where it is found, fits the action: walks_left / walks_right: x moves
                        by >= MOTION_X frame widths that way; jumps: the bottom rises >= MOTION_LIFT
                        frame heights and ends less than half as high as its peak; approaches /
                        leaves: |log height ratio| >= MOTION_GROWTH growing / shrinking, and leaving
                        also moves >= MOTION_X sideways the way the script does. Not found in two
                        frames: no match. Also per action: motion_match/<action>
  still_match           rate of standing characters that do none of the above
  x_error               mean |judged x - script x| over tracked characters and frames (frame widths)
  tracked               rate of (character, generated frame) where the character was found
Temporal smoothness (lower is better):
  flicker               mean |frame-to-frame change| (RGB levels) on the pixels the real shot keeps
                        static: 0 for the real shot; noise and flashing backgrounds raise it
  jitter                mean |second difference| of tracked x (frame widths): scripted x is linear
                        in time, so the real shot's jitter is only the pixel grid's
  motion_energy         mean |frame-to-frame change| over the real shot's (1: as much change as the
                        truth; 0: frozen); not better or worse by itself, read with the others

Lift is how far the bottom of the character's fill rose since its first tracked frame (the judge
reports x and size, not height). Thresholds are a third of the scripted motions (x: 0.3 walking,
0.25 leaving; lift 0.3; log size +0.30 / -0.43), far above judging noise (a pixel). On real shots at
32x64, 8 frames: motion_match 1.0, still_match 0.97, cast_adherence 0.96 (both lose to occlusion),
x_error 0.004, jitter 0.004, flicker 0; hold_still: motion_match 0; the shot played backwards: 0 on
every action but jumps. aggregate() pools counts over shots and averages the rest over shots.
Cost: the judge's, ~30 ms per distinct frame (frozen frames are judged once).
"""

from __future__ import annotations

import collections

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from cinema_jax.eval import judge as judge_lib
from data_pipelines import toy_render

MOTION_X = 0.1  # frame widths
MOTION_LIFT = 0.1  # frame heights
MOTION_GROWTH = 0.12  # |log(height ratio)|
STATIC_TOLERANCE = 30.0  # summed |RGB|: the judge's own foreground threshold
_SHAPE_PENALTY = 0.5  # frame widths: a colour match of another shape only wins when its shape is misread
MOVING = (  # the actions motion_match rates; "stands" is still_match's
    "walks_left", "walks_right", "jumps", "approaches", "leaves")


def hold_still(keyframe_HWC: np.ndarray, num_frames: int) -> np.ndarray:
  """The frozen baseline: the keyframe repeated, uint8 [num_frames, H, W, 3]."""
  return np.repeat(np.asarray(keyframe_HWC)[None], num_frames, axis=0)


def _judge_all(frames_FHWC: np.ndarray) -> list[judge_lib.Judgement]:
  seen: dict[bytes, judge_lib.Judgement] = {}  # frozen or repeated frames are judged once
  out = []
  for frame in frames_FHWC:
    key = frame.tobytes()
    if key not in seen:
      seen[key] = judge_lib.judge(frame)
    out.append(seen[key])
  return out


def _enclosed_foreground(frame_HWC: np.ndarray, j: judge_lib.Judgement) -> np.ndarray:
  """bool [H, W]: differs from the judged background, holes closed (a white character on snow)."""
  h, w = frame_HWC.shape[:2]
  background = judge_lib._background  # pylint: disable=protected-access
  bg = background(j.location, j.sky, j.ground, j.framing, round(j.landmark_x * w), h, w)
  return ndimage.binary_fill_holes(np.abs(frame_HWC.astype(np.float32) - bg).sum(-1) > STATIC_TOLERANCE)


def _fill_bottom(frame_HWC: np.ndarray, enclosed_HW: np.ndarray, c: judge_lib.Character) -> float:
  """Lowest row of `c`'s fill: the judge reports x and size but not height above the ground."""
  w = frame_HWC.shape[1]
  rgb = judge_lib.PALETTE[judge_lib.COLOUR_NAMES.index(c.colour)]
  left = round(c.x * w) - c.height_px // 2 - 1
  band = slice(max(left, 0), max(left + c.height_px + 2, 0))
  near = np.linalg.norm(frame_HWC[:, band].astype(np.float32) - rgb, axis=-1) < judge_lib.FILL_DISTANCE
  rows = np.nonzero((enclosed_HW[:, band] & near).any(1))[0]
  return float(rows.max()) if rows.size else np.nan


def _tracks(frames_FHWC, judged, truth_chars) -> np.ndarray:
  """[C, F, 3] per truth character and frame: x, fitted height (px), fill bottom row; NaN: not found."""
  out = np.full((len(truth_chars), len(judged), 3), np.nan)
  prev = [t["path"][0][0] for t in truth_chars]  # tracking starts where the keyframe has them
  for f, (frame, j) in enumerate(zip(frames_FHWC, judged)):
    if not j.characters:
      continue
    cost = np.array([[abs(c.x - prev[i]) + _SHAPE_PENALTY * (c.shape != t["shape"]) if c.colour == t["colour"]
                      else np.inf for c in j.characters] for i, t in enumerate(truth_chars)])
    rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e6))
    enclosed = _enclosed_foreground(frame, j)
    for i, k in zip(rows, cols):
      if np.isfinite(cost[i, k]):
        c = j.characters[k]
        out[i, f] = (c.x, c.height_px, _fill_bottom(frame, enclosed, c))
        prev[i] = c.x
  return out


def measure_motion(track_F3: np.ndarray, h: int) -> dict[str, float] | None:
  """dx, log growth, peak and final lift between the first and last frames where it is found."""
  found = np.nonzero(~np.isnan(track_F3[:, 0]))[0]
  if found.size < 2:
    return None
  first, last = track_F3[found[0]], track_F3[found[-1]]
  lift = (first[2] - track_F3[found, 2]) / h
  return {"dx": float(last[0] - first[0]), "growth": float(np.log(last[1] / first[1])),
          "peak": float(np.nanmax(lift)) if not np.isnan(lift).all() else 0.0,
          "end": float(lift[-1]) if not np.isnan(lift[-1]) else 0.0}


def motion_matches(action: str, m: dict[str, float] | None, side: float = 0.0) -> bool:
  """Whether motion `m` (from measure_motion) fits `action`; side: the sign of the script's sideways
  motion, which leaving must follow."""
  if m is None:
    return False
  if action == "walks_left":
    return m["dx"] <= -MOTION_X
  if action == "walks_right":
    return m["dx"] >= MOTION_X
  if action == "jumps":
    return m["peak"] >= MOTION_LIFT and m["end"] < 0.5 * m["peak"]
  if action == "approaches":
    return m["growth"] >= MOTION_GROWTH
  if action == "leaves":
    return m["growth"] <= -MOTION_GROWTH and m["dx"] * side >= MOTION_X
  if action == "stands":
    return abs(m["dx"]) < MOTION_X and abs(m["growth"]) < MOTION_GROWTH and m["peak"] < MOTION_LIFT
  raise ValueError(f"unknown action {action!r}")


def _change(frames_FHWC: np.ndarray) -> np.ndarray:
  """[F-1, H, W] mean |RGB| change between consecutive frames."""
  return np.abs(np.diff(frames_FHWC.astype(np.float32), axis=0)).mean(-1)


def shot_metrics(frames_FHWC: np.ndarray, truth_shot: dict) -> dict[str, float]:
  """The metrics of one shot video (frame 0: its keyframe) against its script; NaN: nothing to rate.

  Besides the rates it holds n_<action> and ok_<action>: characters of each action and how many of
  them match it, which aggregate() pools.
  """
  frames = np.asarray(frames_FHWC)
  truth_chars = truth_shot["characters"]
  num_frames = len(truth_chars[0]["path"])
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) != num_frames:
    raise ValueError(f"shot_metrics: expected uint8 [{num_frames}, H, W, 3] frames (the script's frame "
                     f"count), got {frames.dtype} {frames.shape}")
  if num_frames < 2:
    raise ValueError("shot_metrics: a shot of one frame has no video to rate")
  h, w = frames.shape[1:3]
  real_FHWC = toy_render.render_shot(truth_shot, h, w)
  judged = _judge_all(frames)
  cast = lambda j: collections.Counter((c.colour, c.shape) for c in j.characters)
  static_HW = (np.ptp(real_FHWC.astype(np.int16), axis=0) == 0).all(-1)
  drift_FP = np.abs(frames[1:, static_HW].astype(np.float32) - frames[0, static_HW]).sum(-1)
  change_FHW, real_change = _change(frames), _change(real_FHWC).mean()
  has_static = bool(static_HW.any())
  out = {
      "location_adherence": float(np.mean([j.location == judged[0].location for j in judged[1:]])),
      "cast_adherence": float(np.mean([cast(j) == cast(judged[0]) for j in judged[1:]])),
      "background_agreement": float(np.mean(drift_FP <= STATIC_TOLERANCE)) if has_static else np.nan,
      "flicker": float(change_FHW[:, static_HW].mean()) if has_static else np.nan,
      "motion_energy": float(change_FHW.mean() / real_change) if real_change else np.nan,
  }
  tracks_CF3 = _tracks(frames, judged, truth_chars)
  errors, jitter = [], []
  for t, track_F3 in zip(truth_chars, tracks_CF3):
    path_x = np.array([p[0] for p in t["path"]])
    ok = motion_matches(t["action"], measure_motion(track_F3, h), float(np.sign(path_x[-1] - path_x[0])))
    out[f"n_{t['action']}"] = out.get(f"n_{t['action']}", 0.0) + 1.0
    out[f"ok_{t['action']}"] = out.get(f"ok_{t['action']}", 0.0) + float(ok)
    x_error, x_accel = np.abs(track_F3[1:, 0] - path_x[1:]), np.abs(np.diff(track_F3[:, 0], 2))
    errors += list(x_error[~np.isnan(x_error)])
    jitter += list(x_accel[~np.isnan(x_accel)])
  moving = sum(out.get(f"n_{a}", 0.0) for a in MOVING)
  out["motion_match"] = sum(out.get(f"ok_{a}", 0.0) for a in MOVING) / moving if moving else np.nan
  out["x_error"] = float(np.mean(errors)) if errors else np.nan
  out["jitter"] = float(np.mean(jitter)) if jitter else np.nan
  out["tracked"] = float(np.mean(~np.isnan(tracks_CF3[:, 1:, 0])))
  return out


def aggregate(per_shot: list[dict[str, float]]) -> dict[str, float]:
  """Benchmark numbers over shots: motion rates pooled over (shot, character) pairs, the rest the
  mean over shots where they are defined; NaN where no shot rates them."""
  out: dict[str, float] = {"shots": float(len(per_shot))}
  counts = collections.Counter()
  for s in per_shot:
    counts.update({k: v for k, v in s.items() if k.startswith(("n_", "ok_"))})
  moving = sum(counts[f"n_{a}"] for a in MOVING)
  rate = lambda ok, n: float(ok / n) if n else np.nan
  out["motion_match"] = rate(sum(counts[f"ok_{a}"] for a in MOVING), moving)
  out["still_match"] = rate(counts["ok_stands"], counts["n_stands"])
  for a in MOVING:
    out[f"motion_match/{a}"] = rate(counts[f"ok_{a}"], counts[f"n_{a}"])
  for k in ("location_adherence", "cast_adherence", "background_agreement", "x_error", "tracked", "flicker",
            "jitter", "motion_energy"):
    values = [s[k] for s in per_shot if not np.isnan(s.get(k, np.nan))]
    out[k] = float(np.mean(values)) if values else np.nan
  return out
