"""The paper's automatic proxies for keyframes of any storylines, with no ground truth: CLIP.

  text-image alignment     per shot, the cosine of its keyframe's CLIP image embedding and its
                           caption's CLIP text embedding, averaged over shots
  character consistency    the cosine of the image embeddings of two keyframes of one storyline that
                           name the same character, averaged over such pairs
  place consistency        the same over pairs that name the same place

Who is in a shot: the storyline's per-shot "characters" lists, else the caption's <Name> tags (the
curation convention). Where: the storyline's per-shot "places" (no place consistency without them).
The CLIP model comes from a path (encoders.ClipEmbedding: a whole CLIP model folder).
"""

from __future__ import annotations

import itertools
import re

import numpy as np

_TAG = re.compile(r"<([^<>]+)>")


def characters(caption: str) -> set[str]:
  return set(_TAG.findall(caption))


def storyline(clip, frames_KHWC: np.ndarray, captions: list[str], cast: list[list[str]] | None = None,
              places: list[str | None] | None = None) -> dict[str, float]:
  """Sums and counts of one storyline's proxies (merged over storylines by `rates`)."""
  k = len(frames_KHWC)
  images, texts = clip.images(frames_KHWC), clip.texts(captions[:k])  # unit vectors
  cast = [set(c) for c in cast[:k]] if cast is not None else [characters(cap) for cap in captions[:k]]
  places = list(places[:k]) if places is not None else [None] * k
  out = {"alignment_sum": float(np.sum(images * texts)), "alignment_n": k,
         "character_sum": 0.0, "character_n": 0, "place_sum": 0.0, "place_n": 0}
  for i, j in itertools.combinations(range(k), 2):
    sim = float(images[i] @ images[j])
    if cast[i] & cast[j]:
      out["character_sum"] += sim
      out["character_n"] += 1
    if places[i] is not None and places[i] == places[j]:
      out["place_sum"] += sim
      out["place_n"] += 1
  return out


def rates(parts: list[dict[str, float]]) -> dict[str, float | None]:
  """The report's CLIP columns from storyline() sums (None where no pair or shot counted)."""
  total = {key: sum(p[key] for p in parts) for key in parts[0]} if parts else {}
  ratio = lambda name: total[f"{name}_sum"] / total[f"{name}_n"] if total.get(f"{name}_n") else None
  return {"clip_alignment": ratio("alignment"), "clip_character_consistency": ratio("character"),
          "clip_place_consistency": ratio("place")}
