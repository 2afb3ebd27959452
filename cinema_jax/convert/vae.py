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
import jax
import numpy as np

from cinema_jax.convert import mapping


def _path(key: str, ndim: int) -> tuple:
  *module, leaf = key.split(".")
  path = tuple(int(p) if p.isdigit() else p for p in module)
  if leaf == "weight":
    leaf = "scale" if ndim == 1 else "kernel"
  return (*path, leaf)


def _to_flax(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value.T if value.ndim == 2 else value


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
  state = nnx.state(model, nnx.Param)
  current = dict(nnx.to_flat_state(state))
  new = {_path(k, np.ndim(v)): _to_flax(np.asarray(v)) for k, v in state_dict.items()}
  name = lambda p: ".".join(map(str, p))
  problems = [f"missing {name(p)} {v.shape}" for p, v in current.items() if p not in new]
  problems += [f"unexpected {name(p)} {np.shape(v)}" for p, v in new.items() if p not in current]
  problems += [f"mis-shaped {name(p)}: {new[p].shape}, expected {v.shape}" for p, v in current.items()
               if p in new and new[p].shape != v.shape]
  if problems:
    raise ValueError(f"AutoencoderKL state dict does not match the VAEConfig ({len(problems)} problems):\n  "
                     + "\n  ".join(problems))
  for p, var in current.items():
    old = var.get_value()
    var.set_value(jax.device_put(new[p].astype(old.dtype), old.sharding))
  nnx.update(model, state)
