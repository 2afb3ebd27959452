"""The toy-cinema oracle judge: reads a keyframe back into the toy world's vocabulary.

Analysis by synthesis with the renderer itself (data_pipelines.toy_render), so on real renders the
judge is exact up to occlusion, and on generated frames it reports the closest world description:
  1. location: the nearest location of the world table to the observed sky, ground and horizon;
  2. framing and landmark: the background re-rendered for every framing and landmark column, the one
     with the smallest robust (capped) pixel error wins;
  3. characters: pixels that differ from that background and lie near a palette colour form
     components (holes closed, so a white character on snow is found through its dark outline);
     each component is fitted with every shape's sprite at every plausible size and offset, scored by
     IoU against what the same colour threshold would show, ignoring pixels of other characters;
  4. size class: the fitted height over the framing's scale, nearest of toy_world.SIZES.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from data_pipelines import toy_render
from data_pipelines import toy_world

PALETTE = np.asarray(list(toy_world.COLOURS.values()), np.float32)  # [8, 3]
COLOUR_NAMES = tuple(toy_world.COLOURS)
FILL_DISTANCE = 60.0  # a pixel within this RGB distance of a palette colour counts as its fill
_FOREGROUND = 30.0  # summed |RGB| difference from the background that marks a foreground pixel
_BG_CAP = 60.0  # per-pixel cap of the background fit's error, so characters do not steer it


@dataclasses.dataclass(frozen=True)
class Character:
  colour: str
  shape: str
  size: str
  x: float  # centre, as a fraction of the width
  height_px: int  # fitted sprite size
  fit: float  # IoU of the fitted sprite with the observed fill, in [0, 1]
  area: int  # observed fill pixels


@dataclasses.dataclass(frozen=True)
class Judgement:
  location: str
  framing: str
  sky: tuple[float, float, float]
  ground: tuple[float, float, float]
  landmark_x: float
  background_error: float  # mean capped per-pixel error of the re-rendered background
  characters: tuple[Character, ...]

  def appearances(self) -> list[tuple[str, str, str]]:
    return [(c.colour, c.shape, c.size) for c in self.characters]


def _location(frame: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
  h = frame.shape[0]
  obs = frame.astype(np.float32)
  sky = np.median(obs[0], axis=0)
  ground = np.median(obs[-1], axis=0)
  # The horizon: per column the first pixel nearer the ground colour than the sky's, median over
  # columns (characters and landmarks cover only some columns).
  nearer_ground = np.linalg.norm(obs - ground, axis=-1) < np.linalg.norm(obs - sky, axis=-1)
  horizon = float(np.median(np.where(nearer_ground.any(0), nearer_ground.argmax(0), h)))
  best, best_cost = None, np.inf
  for name, (sky0, ground0, horizon0, _, _) in toy_world.LOCATIONS.items():
    ref = np.stack([sky0, ground0]).astype(np.float32)  # [2, 3]
    seen = np.stack([sky, ground])
    tint = np.clip(np.mean(seen - ref, axis=0), -18, 18)  # per-movie RGB tint shared by sky and ground
    cost = np.mean(np.abs(seen - np.clip(ref + tint, 0, 255))) + 5.0 * abs(horizon - round(horizon0 * h))
    if cost < best_cost:
      best, best_cost = name, cost
  return best, sky, ground


def _background(location: str, sky, ground, framing: str, column: int, h: int, w: int) -> np.ndarray:
  _, _, horizon, landmark, landmark_rgb = toy_world.LOCATIONS[location]
  look = (tuple(int(round(v)) for v in sky), tuple(int(round(v)) for v in ground), horizon, landmark,
          tuple(landmark_rgb), column / w)
  return toy_render.background(look, framing, h, w)


def _fit_background(frame, location, sky, ground):
  h, w = frame.shape[:2]
  obs = frame.astype(np.float32)
  best = (np.inf, None, None, None)
  for framing in toy_world.FRAMINGS:
    for column in range(w):
      bg = _background(location, sky, ground, framing, column, h, w)
      err = float(np.mean(np.minimum(np.abs(obs - bg).sum(-1), _BG_CAP)))
      if err < best[0]:
        best = (err, framing, column, bg)
  return best


@functools.lru_cache(maxsize=1024)
def _template(shape: str, size: int, colour: int) -> np.ndarray:
  """Where a sprite of `shape` at `size` px shows as fill of palette colour `colour` (bool [S+2, S+2])."""
  outline, fill = toy_render.sprite(shape, size)
  rgb = PALETTE[colour]
  # On any background the outline covers the rim, so a pixel is outline * 0.3 rgb blended with fill.
  pixel = outline * 0.3 * rgb * (1 - fill) + fill * rgb
  return np.linalg.norm(pixel - rgb, axis=-1) < FILL_DISTANCE


def _fit_character(obs, bg, fill, care, colour: int, box: tuple[slice, slice], h: int):
  """Best (error, iou, shape, size, top, left) for the component `fill` (bool [H, W]) inside `box`.

  Candidates are sprites whose thresholded fill lines up with the component's box; the winner is
  the one that, drawn over the fitted background, reproduces the observed pixels best.
  """
  rows, cols = box
  bh, bw = rows.stop - rows.start, cols.stop - cols.start
  H, W = fill.shape
  win = (slice(max(rows.start - 2, 0), min(rows.stop + 2, H)), slice(max(cols.start - 2, 0), min(cols.stop + 2, W)))
  best = (np.inf, 0.0, None, 0, 0, 0)
  lo, hi = max(3, min(bh, bw) - 2), min(max(bh, bw) + 6, 2 * h)
  for shape in toy_world.SHAPES:
    for size in range(lo, hi + 1):
      t = _template(shape, size, colour)
      tr, tc = np.nonzero(t)
      if tr.size == 0:
        continue
      # Align the template's fill box with the component's, then wiggle by a pixel.
      top0 = rows.start - tr.min()
      bottom0 = rows.stop - 1 - tr.max()
      left0 = cols.start - tc.min()
      right0 = cols.stop - 1 - tc.max()
      for top in {top0, bottom0, top0 - 1, top0 + 1, bottom0 - 1, bottom0 + 1}:
        for left in {left0, right0, (left0 + right0) // 2, (left0 + right0 + 1) // 2}:
          iou = _iou(fill, care, t, top, left)
          if iou < 0.5:
            continue
          err = _render_error(obs, bg, care, win, shape, size, colour, top, left)
          if err < best[0]:
            best = (err, iou, shape, size, top, left)
  return best


def _render_error(obs, bg, care, win, shape, size, colour, top, left) -> float:
  canvas = bg.copy()
  toy_render.draw_character(canvas, shape, size, PALETTE[colour], top, left)
  diff = np.abs(np.rint(canvas[win]) - obs[win]).sum(-1)
  c = care[win]
  return float(diff[c].mean()) if c.any() else np.inf


def _iou(fill, care, t, top, left) -> float:
  h, w = fill.shape
  placed = np.zeros_like(fill)
  r0, c0 = max(top, 0), max(left, 0)
  r1, c1 = min(top + t.shape[0], h), min(left + t.shape[1], w)
  if r0 >= r1 or c0 >= c1:
    return 0.0
  placed[r0:r1, c0:c1] = t[r0 - top:r1 - top, c0 - left:c1 - left]
  inter = np.count_nonzero(placed & fill)
  union = np.count_nonzero((placed | fill) & care)
  return inter / union if union else 0.0


def judge(frame_HWC: np.ndarray, *, min_area: int | None = None) -> Judgement:
  """Reads one uint8 RGB keyframe of the toy world back into location, framing and characters."""
  frame = np.asarray(frame_HWC)
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f"judge: expected a uint8 [H, W, 3] frame, got {frame.dtype} {frame.shape}")
  h, w = frame.shape[:2]
  min_area = min_area or max(3, round(0.004 * h * h))
  location, sky, ground = _location(frame)
  err, framing, column, bg = _fit_background(frame, location, sky, ground)
  obs = frame.astype(np.float32)
  foreground = np.abs(obs - bg).sum(-1) > _FOREGROUND
  enclosed = ndimage.binary_fill_holes(foreground)
  dist = np.linalg.norm(obs[:, :, None, :] - PALETTE, axis=-1)  # [H, W, 8]
  is_fill = (dist.min(-1) < FILL_DISTANCE) & enclosed
  # A rim pixel is its colour darkened by the outline (c * lam, lam in [0.3, 1]): label pixels by
  # the nearest darkened palette colour, so a dark-yellow rim is not taken for an orange character.
  lam = np.clip((obs[:, :, None, :] * PALETTE).sum(-1) / (PALETTE * PALETTE).sum(-1), 0.3, 1.0)
  nearest = np.linalg.norm(obs[:, :, None, :] - lam[..., None] * PALETTE, axis=-1).argmin(-1)

  components = []
  for k in range(len(PALETTE)):
    labels, n = ndimage.label(is_fill & (nearest == k))
    for i, box in enumerate(ndimage.find_objects(labels), 1):
      mask = labels == i
      if np.count_nonzero(mask) >= min_area:
        components.append((k, mask, box))
  scale = toy_world.FRAMINGS[framing]
  characters = []
  for k, mask, box in components:
    others = np.zeros_like(mask)
    for k2, m2, _ in components:
      if m2 is not mask:
        others |= ndimage.binary_dilation(m2, iterations=1)
    _, iou, shape, size, _, left = _fit_character(obs, bg, mask, ~others | mask, k, box, h)
    if shape is None:  # nothing sprite-like: a smear of colour, not a character
      continue
    frac = size / (scale * h)
    size_class = min(toy_world.SIZES, key=lambda s: abs(np.log(toy_world.SIZES[s] / frac)))
    x = (left + 1 + size // 2) / w  # inverse of toy_render's left = round(x * W) - size // 2 - 1
    characters.append(Character(colour=COLOUR_NAMES[k], shape=shape, size=size_class, x=round(float(x), 4),
                                height_px=int(size), fit=round(float(iou), 4), area=int(np.count_nonzero(mask))))
  characters.sort(key=lambda c: c.x)
  return Judgement(location=location, framing=framing, sky=tuple(float(v) for v in sky),
                   ground=tuple(float(v) for v in ground), landmark_x=column / w,
                   background_error=round(err, 3), characters=tuple(characters))
