"""Toy-cinema metrics on hand-built storylines, and the evaluate command on folders and workdirs."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cinema_jax.eval import benchmark
from cinema_jax.eval import judge
from cinema_jax.eval import metrics
from cinema_jax.sampling import jobs
from data_pipelines import toy_render
from data_pipelines import toy_world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = toy_world.WorldConfig(height=32, width=64, num_frames=1)
SEED, MOVIE, SHOTS = 4242, 2, 16


@pytest.fixture(scope="module")
def movie():
  m = toy_world.make_movie(SEED, MOVIE, WORLD)
  m["shots"] = m["shots"][:SHOTS]
  return m


def _render(shots):
  return np.stack([toy_render.render_shot(s, WORLD.height, WORLD.width)[0] for s in shots])


def _rates(truth_shots, frames):
  return metrics.rates(metrics.storyline_metrics(truth_shots, [judge.judge(f) for f in frames]))


def _later_appearance(shots):
  """(shot index, character index) of the first character that appears again later, and its count."""
  seen = {}
  for k, s in enumerate(shots):
    for i, c in enumerate(s["characters"]):
      if c["name"] in seen:
        return k, i, c["name"]
      seen[c["name"]] = k
  raise AssertionError("no character appears twice")


def test_the_real_movie_scores_one(movie):
  r = _rates(movie["shots"], _render(movie["shots"]))
  for key in ("character_consistency", "character_colour_consistency", "location_consistency", "place_consistency",
              "landmark_consistency",
              "alignment_location", "alignment_framing", "caption_alignment"):
    assert r[key] == 1.0, (key, r)


def test_a_swapped_colour_lowers_character_consistency(movie):
  k, i, name = _later_appearance(movie["shots"])
  shots = copy.deepcopy(movie["shots"])
  old = shots[k]["characters"][i]["colour"]
  shots[k]["characters"][i]["colour"] = next(c for c in toy_world.COLOURS if c != old)
  counts = metrics.storyline_metrics(movie["shots"], [judge.judge(f) for f in _render(shots)])
  assert counts["char_same"] == counts["char_seen"] - 1 and counts["char_same_colour"] == counts["char_seen"] - 1
  assert metrics.rates(counts)["character_consistency"] < 1.0
  assert metrics.rates(counts)["location_consistency"] == 1.0  # nothing else changed


def test_a_moved_landmark_lowers_location_consistency(movie):
  names = [s["location"]["name"] for s in movie["shots"]]
  k = next(k for k in range(1, len(names)) if names[k] in names[:k])
  shots = copy.deepcopy(movie["shots"])
  loc = shots[k]["location"]  # shared by every shot there: replace it in shot k only
  shots[k]["location"] = {**loc, "landmark_x": 0.85 if loc["landmark_x"] < 0.5 else 0.15}
  r = _rates(movie["shots"], _render(shots))
  assert r["location_consistency"] < 1.0 and r["character_consistency"] == 1.0
  assert r["landmark_consistency"] == r["location_consistency"] and r["place_consistency"] == 1.0


def test_a_missing_character_breaks_alignment_not_binding(movie):
  shots = copy.deepcopy(movie["shots"])
  k = next(k for k, s in enumerate(shots) if len(s["characters"]) == 1)
  shots[k]["characters"][0]["path"] = [[-5.0, 0.0, 1.0]]  # off screen
  counts = metrics.storyline_metrics(movie["shots"], [judge.judge(f) for f in _render(shots)])
  assert metrics.rates(counts)["alignment_count"] == (SHOTS - 1) / SHOTS


def test_copies_are_counted_as_copies(movie):
  real = _render(movie["shots"])
  copies = np.repeat(real[:1], len(real), axis=0)
  d = metrics.diversity(copies, real, [s["caption"] for s in movie["shots"]])
  assert d["near_copies"] == d["pairs"] > 0 and d["gen_distance"] == 0.0
  d = metrics.diversity(real, real, [s["caption"] for s in movie["shots"]])
  assert d["near_copies"] == 0 and d["gen_distance"] == d["real_distance"]


def test_frechet_distance():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(400, 5))
  assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
  assert metrics.frechet_distance(a, a + 2.0) == pytest.approx(4.0 * 5, rel=1e-4)  # mean shift only


def _write_storylines(tmp_path, movie):
  root = tmp_path / "world"
  root.mkdir()
  captions = [s["caption"] for s in movie["shots"]]
  (root / "storylines.jsonl").write_text(json.dumps({"title": "held out", "movie_id": movie["movie_id"],
                                                     "captions": captions}) + "\n")
  (root / benchmark.TRUTH_FILE).write_text(json.dumps({k: movie[k] for k in ("movie_id", "cast", "locations",
                                                                             "shots")}) + "\n")
  return root / "storylines.jsonl", captions


def _run(*args):
  return subprocess.run([sys.executable, "-m", "cinema_jax.evaluate", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, check=False, timeout=600)


def test_evaluate_judges_folders_of_samples(tmp_path, movie):
  storylines, captions = _write_storylines(tmp_path, movie)
  story = {"title": "held out", "movie_id": movie["movie_id"]}
  jobs.save_storyline(str(tmp_path / "real"), 0, story, _render(movie["shots"]), captions, seconds=1.0)
  copies = np.repeat(_render(movie["shots"][:1]), SHOTS, axis=0)
  jobs.save_storyline(str(tmp_path / "copies"), 0, story, copies, captions, seconds=2.0)
  done = _run(f"--samples={tmp_path / 'real'},{tmp_path / 'copies'}", f"--storylines={storylines}",
              f"--out={tmp_path / 'report'}")
  assert done.returncode == 0, done.stderr[-2000:]
  rows = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
  assert [r["setting"] for r in rows] == ["real", "copies", "real renders (reference)"]
  assert rows[0]["character_consistency"] == 1.0 and rows[0]["frechet_distance"] == pytest.approx(0, abs=1e-6)
  assert rows[1]["duplicate_rate"] == 1.0 and rows[1]["frechet_distance"] > 1.0
  assert rows[1]["seconds_per_keyframe"] == pytest.approx(2.0 / SHOTS)
  assert "| copies | - |" in (tmp_path / "report" / "report.md").read_text()


def test_evaluate_errors_name_the_culprit(tmp_path, movie):
  storylines, _ = _write_storylines(tmp_path, movie)
  done = _run(f"--samples={tmp_path / 'nothing'}", f"--storylines={storylines}", f"--out={tmp_path / 'r'}")
  assert done.stderr.strip().splitlines()[-1] == f"error: samples folder {tmp_path / 'nothing'} does not exist"
  os.remove(tmp_path / "world" / benchmark.TRUTH_FILE)
  done = _run(f"--samples={tmp_path}", f"--storylines={storylines}", f"--out={tmp_path / 'r'}")
  assert done.stderr.strip().splitlines()[-1].startswith(f"error: no ground truth for {storylines}")
  done = _run(f"--workdir={tmp_path}", "--num_pairs=0,8", f"--storylines={storylines}", f"--out={tmp_path / 'r'}")
  assert done.stderr.strip().splitlines()[-1] == "error: --num_pairs must be a list of integers >= 1, got ['0', '8']"
  done = _run(f"--workdir={tmp_path}", "--context_t=0.5,0.2", f"--storylines={storylines}", f"--out={tmp_path / 'r'}")
  assert done.stderr.strip().splitlines()[-1] == "error: --context_t must be 'a,b' with 0 <= a <= b < 1, got 0.5,0.2"


def test_evaluate_samples_and_judges_a_trained_model(tiny_run, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run([sys.executable, "-m", "cinema_jax.evaluate", f"--workdir={tiny_run}", "--storylines=toy",
                         f"--out={tmp_path / 'report'}", "--num_pairs=1,2", "--max_storylines=1", "--max_shots=3",
                         "--context_order=image", "--context_t=0.001,0.2"],
                        cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
  assert [(r["setting"], r["num_pairs"], r["keyframes"]) for r in rows] == [
      ("no memory", 1, 3), ("full context, text-to-image retrieval, noisy context 0.001-0.2", 2, 3),
      ("real renders (reference)", None, 3)]
  assert os.path.exists(os.path.join(tiny_run, "toy_clip.safetensors"))  # trained on first use, beside the run
  folder = tmp_path / "report" / "samples" / "full-context--text-to-image-retrieval--noisy-context-0.001-0.2-02"
  manifest = json.loads((folder / os.listdir(folder)[0] / "manifest.json").read_text())
  assert manifest["context_pairs"] == 2 and len(manifest["keyframes"]) == 3


def test_evaluate_scores_any_storylines_with_clip_proxies(tmp_path, flux_folders):
  from cinema_jax import encoders  # pylint: disable=g-import-not-at-top
  from cinema_jax.eval import clip_metrics  # pylint: disable=g-import-not-at-top
  captions = ["<Ann> at the harbour.", "<Ann> and <Bo> on the road.", "<Bo> waves.", "An empty harbour."]
  story = {"title": "real film", "captions": captions, "places": ["harbour", "road", None, "harbour"]}
  (tmp_path / "stories.jsonl").write_text(json.dumps(story) + "\n")  # no ground truth beside it
  frames = np.random.default_rng(0).integers(0, 256, (4, 16, 32, 3), np.uint8)
  frames[2] = frames[1]  # the two <Bo> shots look alike, the <Ann> pair does not
  jobs.save_storyline(str(tmp_path / "samples"), 0, story, frames, captions)
  done = _run(f"--samples={tmp_path / 'samples'}", f"--storylines={tmp_path / 'stories.jsonl'}",
              f"--out={tmp_path / 'report'}", f"--clip_model={flux_folders['clip']}")
  assert done.returncode == 0, done.stderr[-2000:]
  (row,) = json.loads((tmp_path / "report" / "report.json").read_text())["rows"]
  clip = encoders.ClipEmbedding.load(flux_folders["clip"])
  img, txt = clip.images(frames), clip.texts(captions)
  assert row["clip_alignment"] == pytest.approx(float(np.mean(np.sum(img * txt, -1))), rel=1e-5)
  # pairs naming a shared character: (0, 1) <Ann>, (1, 2) <Bo>; the same place: (0, 3)
  assert row["clip_character_consistency"] == pytest.approx((img[0] @ img[1] + 1.0) / 2, rel=1e-5)
  assert row["clip_place_consistency"] == pytest.approx(float(img[0] @ img[3]), rel=1e-5)
  assert "character_consistency" not in row and "caption_alignment" not in row  # no truth, no judge
  assert clip_metrics.characters(captions[1]) == {"Ann", "Bo"}
  done = _run(f"--samples={tmp_path / 'samples'}", f"--storylines={tmp_path / 'stories.jsonl'}",
              f"--out={tmp_path / 'r2'}")  # without CLIP, storylines without truth cannot be scored
  assert done.stderr.strip().splitlines()[-1].startswith("error: no ground truth for")
