"""Synthetic video files with known shot cuts, for the curation tests and benchmark.

Each shot is a textured solid colour of its own hue (so a content detector cuts between shots), the
texture drifting a pixel a frame; optional black bars make letterboxed or pillarboxed films.
"""

from __future__ import annotations

import numpy as np

# Distinct hues per shot: the content detector sees a large change at every cut.
COLOURS = ((200, 40, 40), (40, 180, 60), (50, 70, 210), (220, 200, 40), (180, 60, 200), (40, 200, 210))


def write_clip(path: str, shot_lengths: list[int], *, size: tuple[int, int] = (48, 96), bars: tuple[int, int] = (0, 0),
               fps: int = 25, seed: int = 0, lossless: bool = True, colours=None) -> None:
  """Writes an H.264 MP4 of len(shot_lengths) shots (frames per shot); bars = black (rows, columns) on
  each side; colours: RGB per shot (default: COLOURS in turn). lossless: yuv444p at crf 0, so decoded
  pixels equal the frames up to RGB<->YUV rounding."""
  import av  # pylint: disable=g-import-not-at-top
  av.logging.set_level(av.logging.ERROR)  # not libx264's statistics
  rng = np.random.default_rng(seed)
  h, w = size
  y, x = bars
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuv444p" if lossless else "yuv420p"
    if lossless:
      stream.options = {"crf": "0"}
    for k, n in enumerate(shot_lengths):
      texture = rng.integers(-40, 40, (h, w + n, 1))
      colour = np.array(colours[k] if colours else COLOURS[k % len(COLOURS)])
      for i in range(n):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[y:h - y, x:w - x] = np.clip(colour + texture[:, i:i + w], 0, 255)[y:h - y, x:w - x]
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
          container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
