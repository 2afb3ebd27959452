"""diffusers AutoencoderKL safetensors -> cinema_jax/models/vae.py, name for name.

    model = vae.AutoencoderKL(cfg, nnx.Rngs(0)); load_into(model, load_state_dict(path))

The module tree mirrors diffusers', so a key `encoder.down_blocks.0.resnets.1.conv1.weight` is the
parameter ('encoder', 'down_blocks', 0, 'resnets', 1, 'conv1', 'kernel'). Layouts: torch convs are
[out, in, kh, kw] (flax: [kh, kw, in, out]), Linears [out, in] (flax: [in, out]); GroupNorm weight
is flax's scale.
"""

from __future__ import annotations

from collections.abc import Mapping

from flax import nnx
import numpy as np

from cinema_jax.convert import mapping


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a diffusers AutoencoderKL checkpoint (a .safetensors file or its folder; a
  diffusers model folder with a vae/ subfolder). Pickles are refused."""
  source = mapping.open_source(path, subfolder="vae")
  keys = list(source.keys())
  if "encoder.conv_in.weight" not in keys:
    raise ValueError(f"{path}: not an AutoencoderKL checkpoint (no encoder.conv_in.weight)")
  return {k: source.get(k) for k in keys}


def load_into(model: nnx.Module, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes a diffusers AutoencoderKL state dict into the model, in place; one ValueError names every
  missing, unexpected and mis-shaped tensor."""
  mapping.load_by_name(model, state_dict, "AutoencoderKL state dict")
