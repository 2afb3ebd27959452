"""Generated movies as H.264 MP4 files and one self-contained HTML page to watch them in a browser.

MP4s are written with imageio-ffmpeg's bundled ffmpeg (libx264, yuv420p: what every browser plays).
The HTML page embeds every image and video as a data: URI, so it is one file that can be copied
anywhere; `render_html_status` opens it in headless Chromium to check that every video decodes.
This module deliberately does not import JAX: it only sees finished uint8 frames.
"""

import base64
import html
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator

import imageio_ffmpeg
import numpy as np

# Frames are tiny synthetic images, so near-lossless costs little. crf 0 would switch x264 to the
# High 4:4:4 Predictive profile, which browsers do not decode.
_CRF = 12
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".webp": "image/webp", ".mp4": "video/mp4", ".webm": "video/webm"}
# Decode every coded frame once: without this ffmpeg may duplicate or drop frames to fit a rate.
_PASSTHROUGH = ["-fps_mode", "passthrough"]


def _write_atomically(path: str, suffix: str, write: Callable[[str], None]) -> None:
  """Calls write(tmp) for a temporary file beside `path`, then renames it into place."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
  os.close(fd)
  try:
    write(tmp)
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the result is meant to be shared
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _check_frames(frames_FHWC: np.ndarray, fps: float, scale: int) -> None:
  if not isinstance(frames_FHWC, np.ndarray):
    raise ValueError(f"frames_FHWC must be a numpy array, got {type(frames_FHWC).__name__}")
  if frames_FHWC.dtype != np.uint8:
    raise ValueError(f"frames_FHWC must be uint8 RGB, got dtype {frames_FHWC.dtype}")
  if frames_FHWC.ndim != 4 or frames_FHWC.shape[-1] != 3:
    raise ValueError(f"frames_FHWC must have shape [F, H, W, 3], got {frames_FHWC.shape}")
  if 0 in frames_FHWC.shape:
    raise ValueError(f"frames_FHWC must have at least one frame of at least 1x1 px, got {frames_FHWC.shape}")
  if not np.isfinite(fps) or fps <= 0:
    raise ValueError(f"fps must be a finite number > 0, got {fps}")
  if not isinstance(scale, (int, np.integer)) or scale < 1:
    raise ValueError(f"scale must be an integer >= 1, got {scale!r}")


def write_mp4(path: str, frames_FHWC: np.ndarray, fps: float, scale: int = 1) -> None:
  """Writes uint8 RGB frames as an H.264 (yuv420p) MP4: one video frame per input frame at `fps`.

  Frames are upscaled `scale`x with nearest neighbour. yuv420p stores colour at half resolution, so
  x264 needs an even width and height: an odd one (after scaling) gets one more row/column copied
  from the edge, and the file is then that one pixel larger than the scaled frames.
  """
  _check_frames(frames_FHWC, fps, scale)
  frames = frames_FHWC.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else frames_FHWC
  _, h, w, _ = frames.shape
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  num_frames, h, w, _ = frames.shape

  def write(tmp: str) -> None:
    writer = imageio_ffmpeg.write_frames(
        tmp, (w, h), fps=float(fps), codec="libx264", quality=None,
        macro_block_size=1,  # sizes are already even; 16 would make ffmpeg rescale (blur) the frames
        ffmpeg_log_level="error",
        output_params=["-crf", str(_CRF), "-preset", "medium", "-profile:v", "high", *_PASSTHROUGH,
                       # Say which RGB->YUV matrix ffmpeg used (BT.601), so browsers do not guess.
                       "-colorspace", "smpte170m", "-color_primaries", "smpte170m",
                       "-color_trc", "smpte170m", "-color_range", "tv",
                       "-movflags", "+faststart",  # index first: browsers can start before the end
                       "-f", "mp4"])
    writer.send(None)
    try:
      for frame_HWC in frames:
        writer.send(np.ascontiguousarray(frame_HWC))
    finally:
      writer.close()
    # write_frames ignores ffmpeg's exit status; decoding the result is the check that it worked.
    got = mp4_info(tmp)
    if got[0] != num_frames or got[2] != (h, w) or abs(got[1] - fps) > 0.01 * fps:
      raise RuntimeError(f"ffmpeg wrote {got} (frames, fps, (h, w)) to {tmp}, expected "
                         f"{(num_frames, float(fps), (h, w))}")

  _write_atomically(path, ".mp4", write)


def _decode(path: str) -> tuple[dict, Iterator[bytes]]:
  """(meta, iterator of frame bytes); decodes each coded frame exactly once."""
  gen = imageio_ffmpeg.read_frames(path, output_params=list(_PASSTHROUGH))
  return next(gen), gen


def mp4_info(path: str) -> tuple[int, float, tuple[int, int]]:
  """(frame count, frames per second, (height, width)) of a video, counted by decoding every frame."""
  meta, gen = _decode(path)
  try:
    count = sum(1 for _ in gen)
  finally:
    gen.close()
  w, h = meta["size"]
  return count, float(meta["fps"]), (h, w)


def read_mp4(path: str) -> np.ndarray:
  """Every frame of a video, as uint8 RGB [F, H, W, 3]."""
  meta, gen = _decode(path)
  w, h = meta["size"]
  try:
    frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
  finally:
    gen.close()
  return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


def _data_uri(path: str) -> str:
  mime = _MIME.get(os.path.splitext(path)[1].lower())
  if mime is None:
    raise ValueError(f"cannot embed {path!r}: expected one of {sorted(_MIME)}")
  with open(path, "rb") as f:
    return f"data:{mime};base64,{base64.b64encode(f.read()).decode('ascii')}"


def _video(path: str, css_class: str) -> str:
  return (f'<video class="{css_class}" src="{_data_uri(path)}" controls loop muted playsinline '
          'preload="auto"></video>')


# Toy frames are a few dozen pixels: show them large, as crisp pixels rather than a blur.
_STYLE = """
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
video, img { image-rendering: pixelated; background: #000; }
video.movie { width: 768px; max-width: 100%; } img.storyboard { max-width: 100%; }
img.keyframe, video.shot { width: 256px; } #video-status { color: #666; font-size: small; }
table.shots { border-collapse: collapse; } td.caption { max-width: 22em; }
table.shots td, table.shots th { border: 1px solid #ccc; padding: 6px; vertical-align: top; }
"""

# Reports once every <video> has either shown a frame or failed; headless tests read the result.
_STATUS_SCRIPT = """
(() => {
  const videos = Array.from(document.querySelectorAll('video'));
  const status = document.getElementById('video-status');
  let loaded = 0, failed = 0;
  const report = () => {
    document.body.dataset.videosLoaded = loaded;
    document.body.dataset.videosFailed = failed;
    if (loaded + failed < videos.length) return;
    status.textContent = `loaded ${loaded}/${videos.length}` + (failed ? `, failed ${failed}` : '');
  };
  videos.forEach((v) => {
    let settled = false;
    const settle = (ok) => { if (!settled) { settled = true; ok ? loaded++ : failed++; report(); } };
    if (v.readyState >= 2) settle(true);  // HAVE_CURRENT_DATA: loadeddata already fired
    else if (v.error) settle(false);
    else {
      v.addEventListener('loadeddata', () => settle(true));
      v.addEventListener('error', () => settle(false));
    }
  });
  report();
})();
"""


def html_page(path: str, *, title: str, storyboard_png: str | None, movie_mp4: str | None,
              shots: list[dict]) -> None:
  """Writes one self-contained HTML page: the movie, its storyboard, then each shot's keyframe and clip.

  Each shot is a dict with `caption` (str), `keyframe_png` and `mp4` (paths). Every image and video is
  embedded as a data: URI, so the page needs no other file and no network.
  """
  esc = html.escape
  parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{_STYLE}</style></head>",
           f'<body data-videos-loaded="0" data-videos-failed="0"><h1>{esc(title)}</h1>',
           f'<p id="video-status">pending 0/{len(shots) + (movie_mp4 is not None)}</p>']
  if movie_mp4 is not None:
    parts.append(f"<h2>Movie</h2>{_video(movie_mp4, 'movie')}")
  if storyboard_png is not None:
    board = _data_uri(storyboard_png)
    parts.append(f'<h2>Storyboard</h2><img class="storyboard" alt="storyboard" src="{board}">')
  if shots:
    parts.append('<h2>Shots</h2><table class="shots"><tr><th>#</th><th>Caption</th><th>Keyframe</th>'
                 "<th>Clip</th></tr>")
    for i, shot in enumerate(shots):
      key = _data_uri(shot["keyframe_png"])
      parts.append(f'<tr><td>{i}</td><td class="caption">{esc(shot["caption"])}</td>'
                   f'<td><img class="keyframe" alt="keyframe {i}" src="{key}"></td>'
                   f"<td>{_video(shot['mp4'], 'shot')}</td></tr>")
    parts.append("</table>")
  parts.append(f"<script>{_STATUS_SCRIPT}</script></body></html>\n")
  text = "\n".join(parts)
  _write_atomically(path, ".html", lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))


def find_chromium() -> str | None:
  """Path of a Chromium or Chrome executable on PATH, or None."""
  for name in _CHROMIUM_NAMES:
    found = shutil.which(name)
    if found:
      return found
  return None


def render_html_status(html_path: str, chromium: str, timeout_s: float = 60) -> str:
  """Opens a page from `html_page` in headless Chromium and returns its video status text.

  That is "loaded N/N" when every video decoded, "loaded K/N, failed M" when some could not, and
  "pending ..." when they had not finished within the page's 10 s of virtual time.
  """
  url = pathlib.Path(html_path).resolve().as_uri()
  # A fresh profile per run: a shared one is locked by any other Chromium using it.
  with tempfile.TemporaryDirectory(prefix="cinema_chromium_", ignore_cleanup_errors=True) as profile:
    cmd = [chromium, "--headless=new", "--no-sandbox",  # the sandbox cannot start as root
           "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
           "--mute-audio", f"--user-data-dir={profile}", "--autoplay-policy=no-user-gesture-required",
           "--virtual-time-budget=10000",  # run the page's events before dumping the DOM
           "--dump-dom", url]
    # Own process group, so that a timeout also ends Chromium's helper processes.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
      out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.communicate()
      raise RuntimeError(f"Chromium did not finish within {timeout_s} s: {' '.join(cmd)}") from None
  if proc.returncode != 0:
    raise RuntimeError(f"Chromium exited with {proc.returncode}: {' '.join(cmd)}\n{err[-2000:]}")
  match = re.search(r'id="video-status"[^>]*>([^<]*)<', out)
  if match is None:
    raise RuntimeError(f"no #video-status element in Chromium's DOM dump of {html_path}")
  return html.unescape(match.group(1)).strip()
