"""GoldenMem's level schedule and token budget (paper: "GoldenMem").

The newest context frames keep the full token grid; older ones are shrunk by the golden ratio per level:
a level's short side is floor(s0 / phi^i) tokens (25, 15, 9, 5, 3, 2 for FLUX at 400x800: a 25x50 grid
of 2x2-packed latents), keeping the grid's aspect. Frames are levelled in groups, newest first: either
groups of a fixed size (the paper's Figure 4 counts use groups of 4), or the paper's "3 groups x N/4"
(the newest quarter at full resolution, then one group per level). Text is never compressed.

A window of P pairs becomes `plan(...)`: consecutive groups of pairs (oldest first) that share a token
grid; each group is one dense array for the model (static shapes per config). A compressed frame keeps
RoPE coordinates that span the full-resolution grid (`positions`), so it is the same picture seen
coarser. Frames are resized in pixel space before the autoencoder (the paper; the pipeline does it on
uint8 frames, `resize_frames`) or on the model's input array (`resize_array`: latents, or pixels on
device), by config.data.goldenmem.resize; both average areas (a box filter for any ratio).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

PHI = (1 + math.sqrt(5)) / 2


def level_sides(full_short_side: int, num_levels: int, phi: float = PHI) -> list[int]:
  """Short side of the token grid at each level: floor(s0 / phi^i), never below 1."""
  return [max(1, math.floor(full_short_side / phi ** i + 1e-9)) for i in range(num_levels)]


def levels(num_frames: int, group_size: int | str = 4, num_groups: int = 3) -> list[int]:
  """Level of each context frame, oldest first (the newest frames are level 0).

  group_size: frames per group (an int), or "quarters": the newest ceil(N/4) frames at level 0 and
  the rest split into `num_groups` groups of N/4, one level each (the last absorbs any remainder).
  """
  if num_frames < 1:
    return []
  if group_size == "quarters":
    size = max(1, math.ceil(num_frames / 4))
    newest_first = [min(i // size, num_groups) for i in range(num_frames)]
  elif isinstance(group_size, int) and group_size >= 1:
    newest_first = [i // group_size for i in range(num_frames)]
  else:
    raise ValueError(f"goldenmem group_size={group_size!r}: expected an int >= 1 or 'quarters'")
  return newest_first[::-1]


def token_count(num_pairs: int, *, grid: tuple[int, int] = (25, 50), text_tokens: int = 128,
                group_size: int | str = 4, compress: bool = True, phi: float = PHI) -> int:
  """Tokens of `num_pairs` (caption, keyframe) pairs: all text plus each frame at its level's grid."""
  h, w = grid
  if not compress:
    return num_pairs * (h * w + text_tokens)
  lv = levels(num_pairs, group_size)
  sides = level_sides(min(h, w), max(lv, default=0) + 1, phi)
  aspect = max(h, w) / min(h, w)
  image = sum(sides[i] * math.floor(sides[i] * aspect + 1e-9) for i in lv)
  return image + num_pairs * text_tokens


@dataclasses.dataclass(frozen=True)
class Group:
  """`num_pairs` consecutive pairs whose frames share the token grid `grid` (h, w)."""

  level: int
  num_pairs: int
  grid: tuple[int, int]


def level_grid(full_grid: tuple[int, int], side: int) -> tuple[int, int]:
  """The token grid with short side `side` and the full grid's aspect (long side floored)."""
  h, w = full_grid
  if h <= w:
    return side, max(1, math.floor(side * w / h + 1e-9))
  return max(1, math.floor(side * h / w + 1e-9)), side


def plan(num_pairs: int, full_grid: tuple[int, int], group_size: int | str = 4, phi: float = PHI
         ) -> tuple[Group, ...]:
  """The groups of a window of `num_pairs` pairs, oldest first; levels sharing a grid are merged."""
  lv = levels(num_pairs, group_size)
  sides = level_sides(min(full_grid), max(lv, default=0) + 1, phi)
  groups: list[Group] = []
  for level in lv:
    grid = level_grid(full_grid, sides[level])
    if groups and groups[-1].grid == grid:
      groups[-1] = dataclasses.replace(groups[-1], num_pairs=groups[-1].num_pairs + 1)
    else:
      groups.append(Group(level=level, num_pairs=1, grid=grid))
  return tuple(groups)


def positions(full_grid: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
  """float32 [h * w, 2] (row, col) of each token of `grid`, in the full grid's coordinates.

  Token (r, c) of an h x w grid covers full-grid rows [r H/h, (r + 1) H/h): its centre is
  (r + 0.5) H/h - 0.5, which is r itself at full resolution.
  """
  (fh, fw), (h, w) = full_grid, grid
  rows = (np.arange(h, dtype=np.float32) + 0.5) * (fh / h) - 0.5
  cols = (np.arange(w, dtype=np.float32) + 0.5) * (fw / w) - 0.5
  r, c = np.meshgrid(rows, cols, indexing="ij")
  return np.stack([r.ravel(), c.ravel()], axis=-1)


def resize_frames(frames_NHWC: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 frames resized to (h, w) pixels by area averaging, as before the autoencoder."""
  h, w = size
  if frames_NHWC.shape[1:3] == (h, w):
    return frames_NHWC
  rows, cols = _area_weights(h, frames_NHWC.shape[1]), _area_weights(w, frames_NHWC.shape[2])
  out = np.einsum("hH,nHWc,wW->nhwc", rows, frames_NHWC.astype(np.float32), cols)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def group_frames(frames_NHWC: np.ndarray, groups) -> list[np.ndarray]:
  """uint8 frames of a window cut into GoldenMem groups ((pairs, (h, w) pixels) each, oldest first)
  and resized to each group's size: what the pipeline yields as image_g0, image_g1, ..."""
  out, first = [], 0
  for n, size in groups:
    out.append(resize_frames(frames_NHWC[first:first + n], size))
    first += n
  return out


def _area_weights(out_size: int, in_size: int) -> np.ndarray:
  """[out, in]: the share of each input cell in each output cell (rows sum to 1), as a box filter."""
  edges_out = np.arange(out_size + 1) * (in_size / out_size)
  lo = np.maximum(edges_out[:-1, None], np.arange(in_size)[None])
  hi = np.minimum(edges_out[1:, None], np.arange(1, in_size + 1)[None])
  return (np.clip(hi - lo, 0, None) / (in_size / out_size)).astype(np.float32)


def resize_array(x_BNHWC: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Float frames or latents resized to (h, w) by area averaging (the box filter of resize_frames)."""
  h, w = size
  if x_BNHWC.shape[2:4] == (h, w):
    return x_BNHWC
  rows, cols = _area_weights(h, x_BNHWC.shape[2]), _area_weights(w, x_BNHWC.shape[3])
  return jnp.einsum("hH,bnHWc,wW->bnhwc", rows, x_BNHWC, cols)


def split_pairs(a_BP: jax.Array, xs: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """A per-pair array [B, P, ...] cut into the pair groups of `xs` ([B, n_g, ...] each)."""
  out, first = [], 0
  for x in xs:
    out.append(a_BP[:, first:first + x.shape[1]])
    first += x.shape[1]
  return tuple(out)
