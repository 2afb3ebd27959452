"""GoldenMem's schedule reproduces the paper's token counts exactly (its Figure 4, 400x800, 128 text tokens)."""

import pytest

from cinema_jax import goldenmem


def test_level_sides_follow_the_golden_ratio():
  assert goldenmem.level_sides(25, 6) == [25, 15, 9, 5, 3, 2]


@pytest.mark.parametrize("pairs,tokens", [(8, 7824), (12, 8984), (16, 9696), (20, 10280), (24, 10824)])
def test_token_counts_match_figure_4(pairs, tokens):
  assert goldenmem.token_count(pairs) == tokens


@pytest.mark.parametrize("pairs,tokens", [(4, 5512), (8, 11024), (12, 16536), (16, 22048), (20, 27560), (24, 33072)])
def test_naive_counts_are_1378_per_pair(pairs, tokens):
  assert goldenmem.token_count(pairs, compress=False) == tokens


def test_levels_newest_frames_stay_full_resolution():
  assert goldenmem.levels(8) == [1, 1, 1, 1, 0, 0, 0, 0]
  assert goldenmem.levels(8, "quarters") == [3, 3, 2, 2, 1, 1, 0, 0]
  assert goldenmem.levels(10, "quarters") == [3, 2, 2, 2, 1, 1, 1, 0, 0, 0]
  # the image cost stays below about phi x the full-resolution group's while text grows linearly
  image = lambda n: goldenmem.token_count(n) - 128 * n
  assert image(48) - image(24) < 60 and image(48) < goldenmem.PHI * 4 * 1250
  with pytest.raises(ValueError, match="group_size=0"):
    goldenmem.levels(4, 0)
