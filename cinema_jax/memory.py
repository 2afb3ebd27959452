"""Sizes that cannot fit, refused before any work: a lower bound of what a job needs against what the
machine has.

The bounds count only what the job cannot do without (the training step: parameters, gradients, Adam's
moments and the EMA in float32, the input frames and one saved activation per block; a toy world: the
frames of one shot as rendered), spread over every device as if nothing were replicated. A job refused
here cannot run; a job let through may still run out of memory later, where XLA reports it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cinema_jax import errors

if TYPE_CHECKING:  # the data tools use check_frames without importing JAX
  import jax

  from cinema_jax import config_validation


def host_available_bytes() -> int:
  """MemAvailable from /proc/meminfo (what can be allocated without swapping), or the physical size."""
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_bytes(device: "jax.Device") -> int:
  """The memory of one device: its allocator's limit on an accelerator, the host's free memory on CPU."""
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(stats["bytes_limit"])
  return host_available_bytes()


def gib(n: float) -> str:
  return f"{n / 2**30:.1f} GiB"


def training_step_bytes(c: "config_validation.Config", frames_per_example: int = 1) -> int:
  """A lower bound of one training step's memory, all devices together."""
  from cinema_jax import flops  # pylint: disable=import-outside-toplevel
  cost = flops.StepCost(c, frames_per_example)
  state = 5 * 4 * cost.num_params  # parameters, gradients, Adam's two moments and the EMA, float32
  if c.task == "autoencoder":
    return state + 2 * 4 * cost.tokens_per_step * 3  # the frames in and out, RGB
  blocks = c.model.depth_double + c.model.depth_single
  return state + 4 * cost.tokens_per_step * c.model.hidden * (blocks + 1)


def check_training_step(c: "config_validation.Config", devices=None, frames_per_example: int = 1) -> None:
  """Refuses in one line a config whose step cannot fit in the devices' memory."""
  import jax  # pylint: disable=import-outside-toplevel
  devices = devices or jax.devices()
  needed = training_step_bytes(c, frames_per_example)
  have = sum(device_bytes(d) for d in devices) if devices[0].platform != "cpu" else device_bytes(devices[0])
  if needed > have:
    h, w = c.data.resolution
    raise errors.ConfigError(
        f"config.data.resolution=({h}, {w}) with batch_size={c.batch_size} and num_pairs={c.data.num_pairs}: a "
        f"training step needs at least {gib(needed)} (weights, optimizer and one activation per block), the "
        f"{len(devices)} {devices[0].platform} device(s) have {gib(have)}; lower the resolution or the batch")


def check_frames(what: str, frames: int, height: int, width: int, copies: int = 3) -> None:
  """Refuses rendering `frames` float32 RGB frames at once (and `copies` working copies) beyond host memory."""
  needed = copies * frames * height * width * 3 * 4
  have = host_available_bytes()
  if needed > have:
    raise errors.ConfigError(f"{what}: {frames} frame(s) of {height}x{width} need about {gib(needed)} in memory "
                             f"to render, this machine has {gib(have)} available")
