"""Shot-video metrics on real toy-world shots: the truth passes, frozen / reversed / noisy videos do not."""

import numpy as np
import pytest

from cinema_jax.eval import video_metrics as vm
from data_pipelines import toy_render
from data_pipelines import toy_world

WORLD = toy_world.WorldConfig(height=32, width=64, num_frames=8)
SEED = 4242
DIRECTIONAL = ("walks_left", "walks_right", "approaches", "leaves")  # reversing time breaks these


def _shots_covering_every_action() -> list[dict]:
  """The first few real shots that between them show every action (three at this seed)."""
  need, shots = set(toy_world.ACTIONS), []
  for m in range(20):
    for shot in toy_world.make_movie(SEED, m, WORLD)["shots"]:
      actions = {c["action"] for c in shot["characters"]}
      if len(actions & need) >= min(2, len(need)):  # two new actions per shot keeps the set small
        shots.append(shot)
        need -= actions
      if not need:
        return shots
  raise AssertionError(f"no shot shows {need}")


def _render(shot: dict) -> np.ndarray:
  return toy_render.render_shot(shot, WORLD.height, WORLD.width)


def _wobble(shot: dict, rng: np.random.Generator) -> dict:
  """The shot with every character shifted sideways at random (about 2 px) in each generated frame."""
  chars = [{**c, "path": c["path"][:1] + [[x + rng.normal(0, 0.03), lift, scale] for x, lift, scale in c["path"][1:]]}
           for c in shot["characters"]]
  return {**shot, "characters": chars}


def _noisy(frames_FHWC: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return np.clip(frames_FHWC + rng.normal(0, 12, frames_FHWC.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scores() -> dict[str, dict[str, float]]:
  shots = _shots_covering_every_action()
  rng = np.random.default_rng(0)
  videos = {
      "truth": _render,
      "hold_still": lambda s: vm.hold_still(_render(s)[0], WORLD.num_frames),
      "reversed": lambda s: _render(s)[::-1],
      "noisy": lambda s: _noisy(_render(s), rng),
      "shaky": lambda s: _render(_wobble(s, rng)),
  }
  # Noise and shaking are pixel and position effects any shot shows: one shot keeps the test fast.
  subset = {"noisy": shots[:1], "shaky": shots[:1]}
  return {name: vm.aggregate([vm.shot_metrics(make(s), s) for s in subset.get(name, shots)])
          for name, make in videos.items()}


def test_truth_keeps_the_keyframe_and_matches_every_action(scores):
  truth = scores["truth"]
  assert truth["location_adherence"] == 1.0 and truth["background_agreement"] == 1.0
  assert truth["cast_adherence"] >= 0.9  # 1.0 here; 0.96 over 200 shots, where characters occlude
  # Measured 1.0 here and over 200 shots; still_match 0.97 there (an occluded stander looks smaller).
  assert truth["motion_match"] >= 0.9 and truth["still_match"] >= 0.9
  for action in vm.MOVING:
    assert truth[f"motion_match/{action}"] == 1.0, action
  assert truth["x_error"] < 0.02 and truth["tracked"] > 0.95  # frame widths; a pixel is 0.016
  assert truth["flicker"] == 0.0 and truth["motion_energy"] == pytest.approx(1.0)


def test_hold_still_keeps_the_keyframe_but_shows_no_motion(scores):
  still = scores["hold_still"]
  assert still["location_adherence"] == still["cast_adherence"] == still["background_agreement"] == 1.0
  assert still["motion_match"] == 0.0 and still["still_match"] == 1.0
  for action in vm.MOVING:
    assert still[f"motion_match/{action}"] == 0.0, action
  assert still["motion_energy"] == 0.0 and still["x_error"] > 3 * scores["truth"]["x_error"]


def test_time_reversed_frames_fail_directional_actions(scores):
  rev = scores["reversed"]
  for action in DIRECTIONAL:
    assert rev[f"motion_match/{action}"] == 0.0, action
  assert rev["motion_match/jumps"] == 1.0  # a jump played backwards is still a jump
  assert rev["motion_match"] <= 0.3  # 0.2 here (the jump); 0.13 over 50 shots


def test_noise_and_shaking_are_less_smooth_than_the_truth(scores):
  truth, noisy, shaky = scores["truth"], scores["noisy"], scores["shaky"]
  assert noisy["flicker"] > 5.0 > truth["flicker"]  # RGB levels: 13 measured at sigma 12
  assert noisy["background_agreement"] < 0.6  # 0.33 measured
  assert noisy["motion_energy"] > 2.0
  assert shaky["jitter"] > 3 * truth["jitter"]  # 0.06 vs 0.005 frame widths over 50 shots


@pytest.mark.parametrize("action, motion, side, ok", [
    ("walks_left", {"dx": -0.3, "growth": 0.0, "peak": 0.0, "end": 0.0}, 0, True),
    ("walks_left", {"dx": 0.3, "growth": 0.0, "peak": 0.0, "end": 0.0}, 0, False),
    ("walks_right", {"dx": 0.3, "growth": 0.0, "peak": 0.0, "end": 0.0}, 0, True),
    ("walks_right", {"dx": 0.05, "growth": 0.0, "peak": 0.0, "end": 0.0}, 0, False),
    ("jumps", {"dx": 0.0, "growth": 0.0, "peak": 0.3, "end": 0.0}, 0, True),
    ("jumps", {"dx": 0.0, "growth": 0.0, "peak": 0.3, "end": 0.3}, 0, False),  # rose and stayed up
    ("approaches", {"dx": 0.0, "growth": 0.3, "peak": 0.0, "end": 0.0}, 0, True),
    ("approaches", {"dx": 0.0, "growth": -0.3, "peak": 0.0, "end": 0.0}, 0, False),
    ("leaves", {"dx": 0.25, "growth": -0.4, "peak": 0.0, "end": 0.0}, 1, True),
    ("leaves", {"dx": -0.25, "growth": -0.4, "peak": 0.0, "end": 0.0}, 1, False),  # the wrong way
    ("leaves", {"dx": 0.0, "growth": -0.4, "peak": 0.0, "end": 0.0}, 1, False),  # shrinks in place
    ("stands", {"dx": 0.0, "growth": 0.0, "peak": 0.0, "end": 0.0}, 0, True),
    ("stands", {"dx": 0.0, "growth": 0.0, "peak": 0.2, "end": 0.0}, 0, False),
    ("walks_left", None, 0, False),  # never found twice: no motion to match
])
def test_motion_matches_each_action(action, motion, side, ok):
  assert vm.motion_matches(action, motion, side) == ok


def test_shot_metrics_rejects_frames_that_do_not_fit_the_script():
  shot = _shots_covering_every_action()[0]
  with pytest.raises(ValueError, match=r"expected uint8 \[8, H, W, 3\] frames"):
    vm.shot_metrics(_render(shot)[:5], shot)
