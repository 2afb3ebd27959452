"""Toy-cinema metrics: a generated storyline's keyframes, as judged, against the storyline's truth.

Each metric is a rate in [0, 1] (higher is better) unless its name says otherwise:
  character_consistency         a named character keeps the appearance (colour, shape, size) it was
                                given: the caption's description, or else what it looked like at its
                                first generated appearance; counted over its later appearances
  character_colour_consistency  the same, on colour alone (what a small model learns first)
  location_consistency          a location keeps its first generated look (judged place, sky and
                                ground colour, landmark position) whenever the story returns to it;
                                place_consistency: the judged place alone; landmark_consistency: the
                                place and its landmark's position
  alignment_location / _framing / _count / _described
                                the caption's location, framing, number of characters and described
                                appearances are there; caption_alignment is their mean
  diversity                     mean pixel distance between keyframes of different captions, relative
                                to the real renders of the same shots (1.0: as varied as the truth)
  duplicate_rate                pairs of different captions whose keyframes are near copies: closer
                                than a quarter of their real shots' distance (lower is better)
  frechet_distance              between judge features of generated and real keyframes (lower is
                                better; computed over a whole report, not per storyline)

Binding characters to what was drawn: a character whose appearance the caption gave is looked for
with that appearance; an undescribed one is bound, at the first shot where something unclaimed was
drawn for it, to the reading of that shot most favourable to later consistency (the judge cannot
know which of two new blobs was meant to be whom).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import linalg
from scipy.optimize import linear_sum_assignment

from cinema_jax.eval import judge as judge_lib
from data_pipelines import toy_world

LOOK_TOLERANCE = 12.0  # max |RGB| channel difference of sky and ground for "the same look"
LANDMARK_TOLERANCE = 0.1  # landmark position difference, in frame widths
NEAR_COPY = 0.25  # two keyframes are copies if they differ by less than this fraction of their real shots


def _mismatch(a: tuple, b: tuple) -> int:
  return sum(x != y for x, y in zip(a, b))


def _assign(names: list[str], refs: dict, detected: list[tuple]) -> dict[str, int]:
  """Names with a reference appearance -> index of their detection (min total attribute mismatch)."""
  keyed = [n for n in names if refs.get(n) is not None]
  if not keyed or not detected:
    return {}
  cost = np.array([[_mismatch(refs[n], d) for d in detected] for n in keyed])
  rows, cols = linear_sum_assignment(cost)
  return {keyed[r]: int(c) for r, c in zip(rows, cols)}


def _appearance(c: dict) -> tuple[str, str, str]:
  return (c["colour"], c["shape"], c["size"])


def storyline_metrics(truth_shots: list[dict], judged: list[judge_lib.Judgement]) -> dict[str, float]:
  """Counts and rates for one storyline; truth_shots[k] is the toy-world shot script of keyframe k."""
  if len(judged) > len(truth_shots):
    raise ValueError(f"{len(judged)} keyframes for a storyline of {len(truth_shots)} shots")
  shots = truth_shots[:len(judged)]
  detected = [j.appearances() for j in judged]
  refs: dict[str, tuple | None] = {}
  counts = {k: 0 for k in ("shots", "char_seen", "char_same", "char_same_colour", "loc_seen", "loc_same",
                           "loc_same_place", "loc_same_landmark",
                           "loc_ok", "framing_ok", "count_ok", "described", "described_ok")}
  for k, (shot, judgement) in enumerate(zip(shots, judged)):
    counts["shots"] += 1
    names = [c["name"] for c in shot["characters"]]
    for c in shot["characters"]:
      if c["name"] in shot["described"]:
        refs[c["name"]] = _appearance(c)  # the caption fixes the appearance from here on
    # Later appearances of characters already bound: do they look as they did?
    bound = [n for n in names if refs.get(n) is not None and n not in shot["described"]]
    match = _assign(names, refs, detected[k])
    for n in bound:
      counts["char_seen"] += 1
      d = detected[k][match[n]] if n in match else None
      counts["char_same"] += d is not None and d == refs[n]
      counts["char_same_colour"] += d is not None and d[0] == refs[n][0]
    for n in shot["described"]:
      counts["described"] += 1
      counts["described_ok"] += n in match and detected[k][match[n]] == refs[n]
    # Bind characters seen for the first time to the unclaimed detections.
    unbound = [n for n in names if refs.get(n) is None]
    free = [i for i in range(len(detected[k])) if i not in match.values()]
    if unbound and free:
      refs.update(_bind(unbound, [detected[k][i] for i in free], detected[k + 1:], shots[k + 1:]))
    counts["loc_ok"] += judgement.location == shot["location"]["name"]
    counts["framing_ok"] += judgement.framing == shot["framing"]
    counts["count_ok"] += len(judgement.characters) == len(names)

  first_look: dict[str, judge_lib.Judgement] = {}
  for shot, judgement in zip(shots, judged):
    name = shot["location"]["name"]
    if name in first_look:
      counts["loc_seen"] += 1
      first = first_look[name]
      counts["loc_same"] += same_look(first, judgement)
      counts["loc_same_place"] += first.location == judgement.location
      counts["loc_same_landmark"] += (first.location == judgement.location
                                      and abs(first.landmark_x - judgement.landmark_x) <= LANDMARK_TOLERANCE)
    else:
      first_look[name] = judgement
  return {k: int(v) for k, v in counts.items()}


def _bind(unbound: list[str], free: list[tuple], later: list[list[tuple]], later_shots: list[dict]):
  """The reading of new characters as free detections that the rest of the storyline agrees with most."""
  free = free[:6]  # bounds the search; real shots have at most three characters
  best, best_score = {}, -1
  for perm in itertools.permutations(range(len(free)), min(len(unbound), len(free))):
    reading = {n: free[i] for n, i in zip(unbound, perm)}
    score = sum(reading[n] in dets for n in reading for dets, s in zip(later, later_shots)
                if n in [c["name"] for c in s["characters"]])
    if score > best_score:
      best, best_score = reading, score
  return best


def same_look(a: judge_lib.Judgement, b: judge_lib.Judgement) -> bool:
  return bool(a.location == b.location
          and max(np.abs(np.subtract(a.sky, b.sky)).max(),
                  np.abs(np.subtract(a.ground, b.ground)).max()) <= LOOK_TOLERANCE
          and abs(a.landmark_x - b.landmark_x) <= LANDMARK_TOLERANCE)


def rates(counts: dict[str, int]) -> dict[str, float | None]:
  """Rates from (summed) counts; None where nothing was there to count."""
  div = lambda a, b: (counts[a] / counts[b]) if counts[b] else None
  r = {
      "character_consistency": div("char_same", "char_seen"),
      "character_colour_consistency": div("char_same_colour", "char_seen"),
      "location_consistency": div("loc_same", "loc_seen"),
      "place_consistency": div("loc_same_place", "loc_seen"),
      "landmark_consistency": div("loc_same_landmark", "loc_seen"),
      "alignment_location": div("loc_ok", "shots"),
      "alignment_framing": div("framing_ok", "shots"),
      "alignment_count": div("count_ok", "shots"),
      "alignment_described": div("described_ok", "described"),
  }
  parts = [r[k] for k in ("alignment_location", "alignment_framing", "alignment_count", "alignment_described")
           if r[k] is not None]
  r["caption_alignment"] = float(np.mean(parts)) if parts else None
  return r


def diversity(frames_KHWC: np.ndarray, real_KHWC: np.ndarray, captions: list[str]) -> dict[str, float]:
  """Pairwise distinctness of keyframes whose captions differ, against the real renders."""
  gen = frames_KHWC.astype(np.float32)
  real = real_KHWC.astype(np.float32)
  pairs = [(a, b) for a, b in itertools.combinations(range(len(gen)), 2) if captions[a] != captions[b]]
  if not pairs:
    return {"pairs": 0, "gen_distance": 0.0, "real_distance": 0.0, "near_copies": 0}
  gd = np.array([np.abs(gen[a] - gen[b]).mean() for a, b in pairs])
  rd = np.array([np.abs(real[a] - real[b]).mean() for a, b in pairs])
  return {"pairs": len(pairs), "gen_distance": float(gd.sum()), "real_distance": float(rd.sum()),
          "near_copies": int((gd < NEAR_COPY * rd).sum())}


def features(j: judge_lib.Judgement) -> np.ndarray:
  """The judge's reading of a frame as a fixed-length vector (for the Frechet distance)."""
  area = np.zeros(len(judge_lib.COLOUR_NAMES))
  shape = np.zeros(len(toy_world.SHAPES))
  for c in j.characters:
    area[judge_lib.COLOUR_NAMES.index(c.colour)] += c.area
    shape[toy_world.SHAPES.index(c.shape)] += 1
  framing = np.eye(len(toy_world.FRAMINGS))[list(toy_world.FRAMINGS).index(j.framing)]
  location = np.eye(len(toy_world.LOCATIONS))[list(toy_world.LOCATIONS).index(j.location)]
  fits = [c.fit for c in j.characters]
  return np.concatenate([np.asarray(j.sky) / 255, np.asarray(j.ground) / 255, [j.landmark_x], framing, location,
                         np.sqrt(area) / 10, shape, [len(j.characters), j.background_error / 10,
                                                      np.mean(fits) if fits else 1.0]])


def frechet_distance(a_NF: np.ndarray, b_NF: np.ndarray) -> float:
  """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), as in FID, on judge features."""
  mu_a, mu_b = a_NF.mean(0), b_NF.mean(0)
  eps = 1e-6 * np.eye(a_NF.shape[1])
  s_a, s_b = np.cov(a_NF, rowvar=False) + eps, np.cov(b_NF, rowvar=False) + eps
  root = linalg.sqrtm(s_a @ s_b)
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * np.real(root)))
