"""What the keyframe and video models read, derived once from the config.

A model reads the frames of an autoencoder: FLUX's VAE (8x down, 16 channels), the toy world's own
(configs/autoencoder.py:toy: 2x down, 4 channels), or pixel space's identity autoencoder (1x, 3
channels: the `tiny` test configs, which then need no trained autoencoder). Code past the records
asks this module, and only it, which one: the batch's keys, a frame's shape and the token grid. The
frames' encoders and decoders (cinema_jax/encoders.py: VAEFrames, PixelFrames) are the other side
of the same interface.
"""

from __future__ import annotations

import dataclasses

from cinema_jax import config_validation


@dataclasses.dataclass(frozen=True)
class InputSpace:
  downsample: int  # pixels per model pixel, each side (1: pixels)
  channels: int  # of a model pixel
  resolution: tuple[int, int]  # of a frame, in pixels
  patch: int  # model pixels per token, each side

  @property
  def pixels(self) -> bool:
    """Pixel space: records hold PNG frames, the pipeline gives them as `image` and `frames`."""
    return self.downsample == 1

  @property
  def image_key(self) -> str:
    """The batch key of the keyframes [B, P, h, w, C]."""
    return "image" if self.pixels else "latent"

  @property
  def frames_key(self) -> str:
    """The batch key of every shot frame [B, K, F, h, w, C] (the video model)."""
    return "frames" if self.pixels else "frame_latents"

  @property
  def frame_shape(self) -> tuple[int, int, int]:
    """A frame as the model reads it: (h, w, C)."""
    return self.resolution[0] // self.downsample, self.resolution[1] // self.downsample, self.channels

  @property
  def cell(self) -> int:
    """Pixels per token, each side."""
    return self.downsample * self.patch

  @property
  def grid(self) -> tuple[int, int]:
    """The token grid of a full-resolution frame."""
    return self.resolution[0] // self.cell, self.resolution[1] // self.cell

  def describe(self) -> str:
    h, w, ch = self.frame_shape
    return "pixels" if self.pixels else f"{self.downsample}x latents ({h}x{w}x{ch})"


def of(c: config_validation.Config) -> InputSpace:
  m = c.model
  return InputSpace(downsample=int(m.vae_downsample), channels=int(m.image_channels),
                    resolution=tuple(int(x) for x in c.data.resolution), patch=int(m.patch))
