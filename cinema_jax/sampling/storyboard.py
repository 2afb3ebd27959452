"""Storyboard sheets: a grid of keyframes with their captions, as one PNG."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cinema_jax import encoders


def sheet(frames_NHWC: np.ndarray, captions: list[str], *, columns: int = 4, scale: int = 4,
          title: str = "") -> Image.Image:
  """Keyframes (uint8, or float in [-1, 1]) upscaled `scale`x, each above its wrapped caption."""
  frames = np.asarray(frames_NHWC)
  if frames.dtype != np.uint8:
    frames = encoders.to_uint8(frames)
  n, h, w, _ = frames.shape
  font = ImageFont.load_default()
  cell_w = w * scale
  chars = max(8, cell_w // 6)
  wrapped = [textwrap.wrap(f"{i}. {c}", chars) for i, c in enumerate(captions)]
  text_h = 12 * max((len(t) for t in wrapped), default=1) + 6
  cell_h = h * scale + text_h
  rows = -(-n // columns)
  top = 18 if title else 0
  pad = 6
  img = Image.new("RGB", (columns * (cell_w + pad) + pad, top + rows * (cell_h + pad) + pad), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  if title:
    draw.text((pad, 3), title, fill=(0, 0, 0), font=font)
  for i in range(n):
    x = pad + (i % columns) * (cell_w + pad)
    y = top + pad + (i // columns) * (cell_h + pad)
    img.paste(Image.fromarray(frames[i]).resize((cell_w, h * scale), Image.NEAREST), (x, y))
    for j, line in enumerate(wrapped[i]):
      draw.text((x, y + h * scale + 3 + 12 * j), line, fill=(20, 20, 20), font=font)
  return img


def filmstrip(shots_KFHWC: np.ndarray, captions: list[str], *, scale: int = 3, title: str = "") -> Image.Image:
  """Shot videos (uint8 [K, F, H, W, 3]) as one picture: a row of frames per shot under its caption."""
  shots = np.asarray(shots_KFHWC)
  k, f, h, w, _ = shots.shape
  font = ImageFont.load_default()
  pad, line, top = 6, 14, 18 if title else 0
  row_h = line + h * scale
  img = Image.new("RGB", (pad + f * (w * scale + 2), top + k * (row_h + pad) + pad), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  if title:
    draw.text((pad, 3), title, fill=(0, 0, 0), font=font)
  for i in range(k):
    y = top + pad + i * (row_h + pad)
    draw.text((pad, y), f"{i}. {captions[i]}"[: f * w * scale // 6], fill=(20, 20, 20), font=font)
    for j in range(f):
      img.paste(Image.fromarray(shots[i, j]).resize((w * scale, h * scale), Image.NEAREST),
                (pad + j * (w * scale + 2), y + line))
  return img
