"""MP4 writing (frame count, rate, size, content) and the self-contained HTML page, also in Chromium."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cinema_jax.sampling import movie


def _frames(num_frames: int, height: int, width: int) -> np.ndarray:
  """Smooth colour waves that move a seventh of a cycle per frame: neighbouring frames differ a lot."""
  f = np.arange(num_frames)[:, None, None] / 7.0
  y = np.arange(height)[None, :, None] / max(height, 8)
  x = np.arange(width)[None, None, :] / max(width, 8)
  r = 128 + 100 * np.sin(2 * np.pi * (x + f))
  g = 128 + 100 * np.cos(2 * np.pi * (y + f))
  b = 128 + 90 * np.sin(2 * np.pi * (x + y - f))
  return np.rint(np.stack(np.broadcast_arrays(r, g, b), axis=-1)).astype(np.uint8)


def _per_frame_error(decoded_FHWC: np.ndarray, frames_FHWC: np.ndarray) -> np.ndarray:
  return np.abs(decoded_FHWC.astype(np.float32) - frames_FHWC.astype(np.float32)).mean(axis=(1, 2, 3))


@pytest.mark.parametrize("num_frames,fps,height,width,scale", [
    (7, 8.0, 32, 64, 1),
    (13, 24.0, 9, 15, 4),  # odd size, even once scaled
])
def test_mp4_round_trip(tmp_path, num_frames, fps, height, width, scale):
  path = str(tmp_path / "clip.mp4")
  frames = _frames(num_frames, height, width)
  movie.write_mp4(path, frames, fps, scale=scale)
  assert movie.mp4_info(path) == (num_frames, fps, (height * scale, width * scale))
  decoded = movie.read_mp4(path)
  expected = frames.repeat(scale, axis=1).repeat(scale, axis=2)
  assert decoded.shape == expected.shape and decoded.dtype == np.uint8
  error = _per_frame_error(decoded, expected)
  assert error.max() < 8, error
  # The tolerance is tight enough to see frames out of order.
  swapped = expected[[1, 0, *range(2, num_frames)]]
  assert _per_frame_error(decoded, swapped)[:2].min() > 8
  assert os.listdir(tmp_path) == ["clip.mp4"]  # no temporary file left behind
  assert os.stat(path).st_mode & 0o777 == 0o644


def test_odd_size_is_padded_to_even(tmp_path):
  path = str(tmp_path / "odd.mp4")
  frames = _frames(5, 31, 63)
  movie.write_mp4(path, frames, 10.0)
  assert movie.mp4_info(path) == (5, 10.0, (32, 64))
  decoded = movie.read_mp4(path)
  assert _per_frame_error(decoded[:, :31, :63], frames).max() < 8
  # The added row and column repeat the edge.
  assert _per_frame_error(decoded[:, 31:, :63], frames[:, 30:, :]).max() < 8
  assert _per_frame_error(decoded[:, :31, 63:], frames[:, :, 62:]).max() < 8


_GOOD = np.zeros((2, 4, 4, 3), np.uint8)


@pytest.mark.parametrize("frames,fps,scale,message", [
    (_GOOD.astype(np.float32), 8.0, 1, "must be uint8 RGB, got dtype float32"),
    (_GOOD[0], 8.0, 1, r"shape \[F, H, W, 3\], got \(4, 4, 3\)"),
    (np.zeros((2, 4, 4, 4), np.uint8), 8.0, 1, r"shape \[F, H, W, 3\], got \(2, 4, 4, 4\)"),
    (_GOOD[:0], 8.0, 1, "at least one frame"),
    (_GOOD, 0.0, 1, "fps must be a finite number > 0, got 0.0"),
    (_GOOD, -3.0, 1, "fps must be a finite number > 0"),
    (_GOOD, float("nan"), 1, "fps must be a finite number > 0"),
    (_GOOD, 8.0, 0, "scale must be an integer >= 1, got 0"),
    (_GOOD, 8.0, 1.5, "scale must be an integer >= 1, got 1.5"),
])
def test_bad_input_raises(tmp_path, frames, fps, scale, message):
  path = tmp_path / "bad.mp4"
  with pytest.raises(ValueError, match=message):
    movie.write_mp4(str(path), frames, fps, scale=scale)
  assert os.listdir(tmp_path) == []


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
  path = tmp_path / "clip.mp4"
  path.write_bytes(b"old")

  def broken_read_frames(*args, **kwargs):
    raise OSError("decoder broke")

  # The check after encoding fails: the new file must not replace the old one, nor stay around.
  monkeypatch.setattr(movie.imageio_ffmpeg, "read_frames", broken_read_frames)
  with pytest.raises(OSError, match="decoder broke"):
    movie.write_mp4(str(path), _frames(3, 8, 8), 8.0)
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["clip.mp4"]


def test_module_does_not_import_jax():
  code = "import sys; import cinema_jax.sampling.movie; print('jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


CAPTION = '<script>alert("x")</script> Ann & Bo'


def _page(tmp_path, *, broken_shot: bool = False) -> str:
  """A page with the whole movie, a storyboard and two shots; one shot's clip is garbage if asked."""
  shots = []
  for i in range(2):
    frames = _frames(4, 8, 16) if i == 0 else 255 - _frames(4, 8, 16)
    keyframe, clip = str(tmp_path / f"key{i}.png"), str(tmp_path / f"shot{i}.mp4")
    Image.fromarray(frames[0]).save(keyframe)
    if broken_shot and i == 1:
      with open(clip, "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42 this is not a movie")
    else:
      movie.write_mp4(clip, frames, 8.0, scale=4)
    shots.append({"caption": CAPTION if i == 0 else f"shot {i}", "keyframe_png": keyframe, "mp4": clip})
  movie.write_mp4(str(tmp_path / "movie.mp4"), _frames(8, 8, 16), 8.0, scale=4)
  Image.fromarray(_frames(1, 20, 40)[0]).save(tmp_path / "board.png")
  page = str(tmp_path / "page.html")
  movie.html_page(page, title="Ann & Bo's <movie>", storyboard_png=str(tmp_path / "board.png"),
                  movie_mp4=str(tmp_path / "movie.mp4"), shots=shots)
  return page


def test_html_page_is_self_contained(tmp_path):
  page = _page(tmp_path)
  with open(page, encoding="utf-8") as f:
    text = f.read()
  links = re.findall(r"""\b(?:src|href|poster)\s*=\s*["']?([^"'\s>]*)""", text, flags=re.IGNORECASE)
  assert len(links) == 6  # movie, storyboard, 2 keyframes, 2 clips
  assert all(link.startswith("data:") or link.startswith("#") for link in links), links
  assert "url(" not in text and "@import" not in text
  assert CAPTION not in text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; Ann &amp; Bo" in text
  assert "Ann &amp; Bo&#x27;s &lt;movie&gt;" in text
  assert text.count("<video") == 3 and text.count("<script>") == 1
  for i in range(2):
    assert movie._data_uri(str(tmp_path / f"shot{i}.mp4")) in text
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary file left


@pytest.mark.skipif(movie.find_chromium() is None,
                    reason="Chromium is not installed (apt-get install chromium): cannot play the page")
def test_html_videos_play_in_headless_chromium(tmp_path):
  assert movie.render_html_status(_page(tmp_path), movie.find_chromium()) == "loaded 3/3"


@pytest.mark.skipif(movie.find_chromium() is None,
                    reason="Chromium is not installed (apt-get install chromium): cannot play the page")
def test_headless_chromium_reports_a_broken_video(tmp_path):
  status = movie.render_html_status(_page(tmp_path, broken_shot=True), movie.find_chromium())
  assert status == "loaded 2/3, failed 1"
