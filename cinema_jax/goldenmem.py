"""GoldenMem's level schedule and token budget (paper: "GoldenMem").

The newest context frames keep the full token grid; older ones are shrunk by the golden ratio per level:
a level's short side is floor(s0 / phi^i) tokens (25, 15, 9, 5, 3, 2 for FLUX at 400x800: a 25x50 grid
of 2x2-packed latents), keeping the grid's aspect. Frames are levelled in groups, newest first: either
groups of a fixed size (the paper's Figure 4 counts use groups of 4), or the paper's "3 groups x N/4"
(the newest quarter at full resolution, then one group per level). Text is never compressed.

This module is the schedule and the arithmetic; resizing frames and wiring levels into the pipeline and
the model belong to the long-context memory issue, which is not done yet.
"""

from __future__ import annotations

import math

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
