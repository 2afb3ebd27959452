"""GoldenMem's schedule reproduces the paper's token counts exactly (its Figure 4, 400x800, 128 text tokens)."""

import numpy as np
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


@pytest.mark.parametrize("group_size", [4, "quarters"])
def test_image_tokens_stay_within_phi_times_the_full_group_as_history_grows(group_size):
  for pairs in range(1, 129):
    plan = goldenmem.plan(pairs, (25, 50), group_size)
    image = sum(g.num_pairs * g.grid[0] * g.grid[1] for g in plan)
    full = plan[-1].num_pairs * 25 * 50  # the newest group, at full resolution
    assert plan[-1].grid == (25, 50) and image <= goldenmem.PHI * full, (pairs, image, full)
    assert sum(g.num_pairs for g in plan) == pairs
    assert image == goldenmem.token_count(pairs, group_size=group_size, text_tokens=0)


def test_plan_merges_levels_that_share_a_grid():
  plan = goldenmem.plan(16, (4, 8))  # the demo's 32x64 frames in 8x8 patches
  assert [(g.num_pairs, g.grid) for g in plan] == [(8, (1, 2)), (4, (2, 4)), (4, (4, 8))]
  assert [(g.num_pairs, g.grid) for g in goldenmem.plan(3, (8, 4), 1)] == [(1, (2, 1)), (1, (4, 2)), (1, (8, 4))]


def test_compressed_frames_span_the_full_grid():
  np.testing.assert_array_equal(goldenmem.positions((4, 8), (4, 8)),
                                np.stack(np.meshgrid(np.arange(4), np.arange(8), indexing="ij"), -1).reshape(-1, 2))
  half = goldenmem.positions((4, 8), (2, 4))
  np.testing.assert_allclose(half[[0, -1]], [[0.5, 0.5], [2.5, 6.5]])  # centres of 2x2 blocks of the full grid
  assert half.min() >= -0.5 and half[:, 0].max() <= 3.5 and half[:, 1].max() <= 7.5


def test_resizing_averages_areas():
  frames = np.zeros((2, 4, 8, 3), np.uint8)
  frames[:, :2, :2] = 200  # one 2x2 block of the top-left 4x4 corner
  small = goldenmem.resize_frames(frames, (1, 2))
  assert small.shape == (2, 1, 2, 3) and small[0, 0, 0, 0] == 50 and small[0, 0, 1, 0] == 0
  arr = goldenmem.resize_array(frames[None].astype(np.float32), (2, 4))
  np.testing.assert_allclose(arr[0, 0, :, :, 0], [[200, 0, 0, 0], [0, 0, 0, 0]], atol=1e-3)
  # Any ratio (GoldenMem's levels are not powers of two): the same filter on uint8 frames and on arrays.
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 25, 50, 3), dtype=np.uint8)
  np.testing.assert_allclose(goldenmem.resize_array(frames[None].astype(np.float32), (15, 30))[0],
                             goldenmem.resize_frames(frames, (15, 30)), atol=0.5)
  assert abs(float(goldenmem.resize_array(frames[None].astype(np.float32), (15, 30)).mean()) - frames.mean()) < 0.01
