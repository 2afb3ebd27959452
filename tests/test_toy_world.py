"""The toy-movie world: determinism, the memory-testing caption rules, rendering and the CLI."""

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np

from data_pipelines import records
from data_pipelines import tokenizer
from data_pipelines import toy_dataset
from data_pipelines import toy_render
from data_pipelines import toy_world

WORLD = toy_world.WorldConfig()


def test_same_seed_same_movie_and_pixels():
  a, b = toy_world.make_movie(3, 5, WORLD), toy_world.make_movie(3, 5, WORLD)
  assert a == b
  for sa, sb in zip(a["shots"], b["shots"]):
    np.testing.assert_array_equal(toy_render.render_shot(sa, 32, 64), toy_render.render_shot(sb, 32, 64))
  assert toy_world.make_movie(4, 5, WORLD) != a
  assert toy_world.make_movie(3, 6, WORLD) != a


def test_movie_structure_respects_world_config():
  world = toy_world.WorldConfig(min_shots=8, max_shots=64, num_frames=5)
  lengths = []
  for i in range(40):
    m = toy_world.make_movie(0, i, world)
    lengths.append(len(m["shots"]))
    assert [s["shot_index"] for s in m["shots"]] == list(range(len(m["shots"])))
    for s in m["shots"]:
      assert 1 <= len(s["characters"]) <= 3
      assert s["framing"] in toy_world.FRAMINGS
      assert all(len(c["path"]) == 5 for c in s["characters"])
      assert all(c["action"] in toy_world.ACTIONS for c in s["characters"])
  assert min(lengths) >= 8 and max(lengths) <= 64
  assert max(lengths) - min(lengths) > 20  # lengths really vary


def test_names_do_not_tell_appearance():
  looks: dict[str, set] = {}
  for i in range(60):
    for c in toy_world.make_movie(1, i, WORLD)["cast"]:
      looks.setdefault(c["name"], set()).add((c["shape"], c["colour"], c["size"]))
  recurring = [n for n, l in looks.items() if len(l) > 1]
  assert len(recurring) >= 10, looks


def test_characters_described_at_most_once_and_only_at_first_appearance():
  described_any = undescribed_first = 0
  for i in range(40):
    m = toy_world.make_movie(2, i, WORLD)
    seen, described = set(), set()
    cast = {c["name"]: c for c in m["cast"]}
    for s in m["shots"]:
      for c in s["characters"]:
        name = c["name"]
        pattern = f"{name}, a {c['size']} {c['colour']} {c['shape']},"
        if pattern in s["caption"]:
          assert name not in seen and name not in described, (m["movie_id"], s["caption"])
          assert (c["size"], c["colour"], c["shape"]) == tuple(cast[name][k] for k in ("size", "colour", "shape"))
          described.add(name)
          described_any += 1
        else:
          assert re.search(rf"\b{name} ", s["caption"]), s["caption"]
          if name not in seen:
            undescribed_first += 1
        # appearance never changes within a movie
        assert all(c[k] == cast[name][k] for k in ("shape", "colour", "size"))
        seen.add(name)
      assert set(s["described"]) <= described
  assert described_any > 20 and undescribed_first > 20  # both cases happen


def test_locations_keep_their_look_and_flashbacks_return():
  flashbacks = 0
  for i in range(40):
    m = toy_world.make_movie(4, i, WORLD)
    looks = {}
    for s in m["shots"]:
      loc = s["location"]
      assert looks.setdefault(loc["name"], loc) == loc
      assert loc["name"] in s["caption"]
    scenes = {}
    for s in m["shots"]:
      scenes.setdefault(s["scene"], s)
    for idx, s in scenes.items():
      if s["flashback_of_scene"] is not None:
        flashbacks += 1
        first = scenes[s["flashback_of_scene"]]
        assert s["location"] == first["location"]
        assert s["shot_index"] >= 8  # after many shots
  assert flashbacks >= 5


def test_render_draws_characters_in_their_colour_on_the_location():
  movie = toy_world.make_movie(0, 0, WORLD)
  for s in movie["shots"][:10]:
    frame = toy_render.render_shot(s, 32, 64)[0]
    assert frame.shape == (32, 64, 3) and frame.dtype == np.uint8
    horizon = int(round(s["location"]["horizon"] * 32))
    # a background pixel far from anything: the top-left corner of the sky, unless the landmark is there
    if s["location"]["landmark_x"] > 0.3:
      np.testing.assert_array_equal(frame[0, 0], s["location"]["sky"])
    assert horizon > 0
    # the last-drawn character's centre pixel has its colour
    c = s["characters"][-1]
    x, lift, grow = c["path"][0]
    size = max(3, int(round(toy_world.SIZES[c["size"]] * toy_world.FRAMINGS[s["framing"]] * grow * 32)))
    cy = int(round(0.88 * 32 - lift * 32)) - size // 2 - 1
    cx = int(round(x * 64))
    if 0 <= cy < 32 and 0 <= cx < 64 and c["shape"] != "cross":
      np.testing.assert_allclose(frame[cy, cx], toy_world.COLOURS[c["colour"]], atol=40)


def test_motion_moves_characters():
  world = toy_world.WorldConfig(num_frames=6)
  for i in range(20):
    for s in toy_world.make_movie(0, i, world)["shots"]:
      frames = toy_render.render_shot(s, 32, 64)
      moving = any(c["action"] != "stands" for c in s["characters"])
      if not moving:
        assert all((f == frames[0]).all() for f in frames)
      elif any(c["action"] in ("walks_left", "walks_right") for c in s["characters"]):
        assert not (frames[-1] == frames[0]).all()


def test_build_writes_records_storylines_and_truth(toy_root):
  info = json.load(open(os.path.join(toy_root, toy_dataset.WORLD_FILE)))
  train = records.ShotReader(os.path.join(toy_root, "train"))
  assert len(train.index.movies) == 12 and info["num_train_shots"] == len(train)
  assert train.index.resolution == [16, 32] and train.index.num_frames == 2
  lines = open(os.path.join(toy_root, "storylines.jsonl")).read().splitlines()
  truth = open(os.path.join(toy_root, "storylines_truth.jsonl")).read().splitlines()
  assert len(lines) == len(truth) == 2
  ev = records.ShotReader(os.path.join(toy_root, "eval"))
  for line, t, m in zip(lines, truth, range(2)):
    story, t = json.loads(line), json.loads(t)
    assert story["movie_id"] == t["movie_id"] == ev.index.movies[m]["movie_id"]
    shots = list(ev.movie_shots(m))
    assert story["captions"] == [s.caption for s in shots]
    assert [s["caption"] for s in t["shots"]] == story["captions"]
    assert shots[0].meta["truth"]["characters"] == t["shots"][0]["characters"]
  # held-out storylines are not training movies
  assert not {s["movie_id"] for s in map(json.loads, lines)} & {m["movie_id"] for m in train.index.movies}


def test_tokenizer_gives_each_word_one_token(toy_root):
  tok = tokenizer.Tokenizer(tokenizer.beside(os.path.join(toy_root, "train")), max_len=48)
  vocab = toy_world.vocabulary()
  captions = [s["caption"] for i in range(30) for s in toy_world.make_movie(0, i, WORLD)["shots"]]
  ids, mask = tok(captions)
  assert not (ids == vocab.index(toy_world.UNK_TOKEN)).any()  # the whole world is in the vocabulary
  assert (ids[~mask] == vocab.index(toy_world.PAD_TOKEN)).all() and mask.sum(1).max() <= 43
  for cap, row, m in zip(captions[:50], ids, mask):
    words = cap.lower().replace(",", " ,").replace(".", " .").split()
    assert [vocab[i] for i in row[m]] == words  # names included: "Mia" is one token wherever it appears
    assert tok.decode(row[m]) == " ".join(words)
  assert tok(["Mia, a small red circle, stands still."])[0][0, 0] == tok(["Mia jumps."])[0][0, 0]


def test_a_caption_longer_than_the_text_length_is_reported_once(toy_root, caplog):
  tok = tokenizer.Tokenizer(tokenizer.beside(os.path.join(toy_root, "train")), max_len=6)
  with caplog.at_level(logging.WARNING):
    tok(["Mia jumps.", "Wide shot in the forest. Mia, a small red circle, jumps."])
    tok(["Close shot in the farm. Tom, a large blue square, walks to the left."])
  said = [r.getMessage() for r in caplog.records if "was cut" in r.getMessage()]
  assert len(said) == 1 and "longer than its 6 tokens" in said[0] and "1 of 2 here" in said[0]
  assert "'Wide shot in the forest." in said[0]
  caplog.clear()
  tokenizer.Tokenizer(tokenizer.beside(os.path.join(toy_root, "train")), max_len=48)(["Mia jumps."])
  assert not caplog.records  # a caption that fits says nothing


def test_build_is_byte_deterministic(tmp_path):
  world = toy_world.WorldConfig(height=16, width=32, num_frames=2, min_shots=8, max_shots=10)
  for name in ("a", "b"):
    toy_dataset.build(str(tmp_path / name), num_movies=3, seed=11, world=world, num_storylines=1, num_shards=2)
  ra, rb = records.ShotReader(str(tmp_path / "a/train")), records.ShotReader(str(tmp_path / "b/train"))
  assert len(ra) == len(rb)
  assert all(ra.read_bytes(i) == rb.read_bytes(i) for i in range(len(ra)))
  assert (tmp_path / "a/storylines.jsonl").read_text() == (tmp_path / "b/storylines.jsonl").read_text()
  files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
  assert toy_dataset.WORLD_FILE in {str(f) for f in files} and len(files) > 5
  assert [(tmp_path / "a" / f).read_bytes() for f in files] == [(tmp_path / "b" / f).read_bytes() for f in files]


def test_cli_builds_and_refuses_to_overwrite(tmp_path):
  out = tmp_path / "movies"
  cmd = [sys.executable, "-m", "data_pipelines.toy_movies", f"--out={out}", "--num_movies=2", "--seed=5",
         "--height=16", "--width=32", "--num_frames=1", "--max_shots=9", "--num_storylines=1"]
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  assert records.ShotReader(str(out / "train")).index.num_frames == 0
  again = subprocess.run(cmd, capture_output=True, text=True, check=False)
  assert again.returncode == 1
  assert again.stderr.strip().splitlines() == [
      f"error: --out={out} already holds eval, storylines.jsonl, storylines_truth.jsonl, tokenizer.json, train, "
      "world.json; give a new folder, or --overwrite to replace them"]
  assert not list(tmp_path.glob("*.partial-*"))
