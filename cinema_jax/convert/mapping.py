"""Checkpoint layouts as data: one description gives the checks, the import, the streaming sharded
load and the export.

A layout maps every parameter of a cinema_jax model (a path in `nnx.state`) to its source tensors,
per layer for parameters stacked for scan: `Fused(keys, sizes, kind)` says that this parameter (of
one layer) is the concatenation, along its output axis, of the source tensors `keys` (torch layout:
Linear weights are [out, in]), in that order; `swap_halves` exchanges the two halves of the output
axis (adaLN chunk orders that differ between implementations). Import and export run the same
description in opposite directions, so they cannot drift apart.

Sources are safetensors only (`open_source`): a pickle checkpoint (.bin, .pt, .pth, .ckpt, .pkl) is
refused, never unpickled.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from cinema_jax import errors

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@dataclasses.dataclass(frozen=True)
class Fused:
  """One parameter of one layer, from source tensors concatenated along its output axis."""

  keys: tuple[str, ...]
  sizes: tuple[int, ...]  # each key's output size
  kind: str  # "kernel" ([in, out] here, [out, in] in the source), "bias" or "scale"
  din: int = 0  # kernels: the input size
  swap_halves: bool = False

  def source_shapes(self) -> dict[str, tuple[int, ...]]:
    return {k: ((n, self.din) if self.kind == "kernel" else (n,)) for k, n in zip(self.keys, self.sizes)}

  def build(self, get: Callable[[str], np.ndarray]) -> np.ndarray:
    parts = [get(k) for k in self.keys]
    x = np.concatenate([p.T for p in parts], 1) if self.kind == "kernel" else np.concatenate(parts)
    return _swap(x) if self.swap_halves else x

  def split(self, x: np.ndarray) -> dict[str, np.ndarray]:
    x = _swap(np.asarray(x)) if self.swap_halves else np.asarray(x)
    parts = np.split(x, np.cumsum(self.sizes)[:-1], axis=-1)
    return {k: (p.T if self.kind == "kernel" else p) for k, p in zip(self.keys, parts)}


def _swap(x: np.ndarray) -> np.ndarray:
  h = x.shape[-1] // 2
  return np.concatenate([x[..., h:], x[..., :h]], axis=-1)


@dataclasses.dataclass(frozen=True)
class Param:
  """A model parameter: its layers' recipes (one, unstacked, when stacked is False)."""

  layers: tuple[Fused, ...]
  stacked: bool

  def shape(self) -> tuple[int, ...]:
    f = self.layers[0]
    one = (f.din, sum(f.sizes)) if f.kind == "kernel" else (sum(f.sizes),)
    return (len(self.layers), *one) if self.stacked else one


Layout = dict[tuple[str, ...], Param]  # parameter path in nnx.state -> its recipe


# ---------------------------------------------------------------------------------------- sources


class Source:
  """Tensors by name from safetensors files, read one at a time (shapes without reading)."""

  def __init__(self, files: list[str]):
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    self.files = files
    self._where: dict[str, str] = {}
    self._shapes: dict[str, tuple[int, ...]] = {}
    self._open = {}
    for f in files:
      try:
        self._open[f] = safe_open(f, framework="flax")  # "flax": bf16 survives, numpy's does not
      except Exception as e:  # pylint: disable=broad-except  # safetensors' own error type has no stable import path
        detail = " ".join(str(e).split())[:160]
        raise errors.DataError(f"{f}: not a safetensors file ({detail})") from None
    for f, h in self._open.items():
      for k in h.keys():
        self._where[k] = f
        self._shapes[k] = tuple(h.get_slice(k).get_shape())

  def keys(self) -> Iterator[str]:
    return iter(self._where)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._shapes[key]

  def get(self, key: str) -> np.ndarray:
    with jax.default_device(jax.devices("cpu")[0]):  # host memory, whatever the default backend
      return np.asarray(self._open[self._where[key]].get_tensor(key))


class DictSource:
  """A state dict already in memory (tests, small models)."""

  def __init__(self, tensors: Mapping[str, Any]):
    self.tensors = tensors

  def keys(self) -> Iterator[str]:
    return iter(self.tensors)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(np.shape(self.tensors[key]))

  def get(self, key: str) -> np.ndarray:
    return np.asarray(self.tensors[key])


class StrippedSource:
  """A source whose keys lose a prefix (single-file checkpoints that wrap the model, e.g. ComfyUI's
  `model.diffusion_model.`)."""

  def __init__(self, source, prefix: str):
    self.source, self.prefix = source, prefix
    self._full_keys = {(k[len(prefix):] if k.startswith(prefix) else k): k for k in source.keys()}

  def keys(self) -> Iterator[str]:
    return iter(self._full_keys)

  def _full(self, key: str) -> str:
    return self._full_keys[key]

  def shape(self, key: str) -> tuple[int, ...]:
    return self.source.shape(self._full(key))

  def get(self, key: str) -> np.ndarray:
    return self.source.get(self._full(key))


def open_source(path: str, subfolder: str = "transformer", weights_name: str = "diffusion_pytorch_model") -> Source:
  """A .safetensors file, a folder with one (or a sharded `*.safetensors.index.json`), or a diffusers
  pipeline folder with the model in `subfolder`. Pickle checkpoints are refused, never loaded."""
  if path.endswith(PICKLE_SUFFIXES) or (os.path.isdir(path) and not _safetensors_in(path) and _pickles_in(path)):
    raise ValueError(f"{path}: a pickle checkpoint; cinema_jax never unpickles weights (arbitrary code could run). "
                     "Convert it to safetensors where you trust it, or use the .safetensors release")
  if os.path.isfile(path):
    if not path.endswith(".safetensors"):
      raise ValueError(f"{path}: expected a .safetensors file")
    return Source([path])
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such file or folder")
  if os.path.isdir(os.path.join(path, subfolder)) and not _safetensors_in(path):
    return open_source(os.path.join(path, subfolder), subfolder, weights_name)
  index = os.path.join(path, f"{weights_name}.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    return Source([os.path.join(path, x) for x in files])
  files = _safetensors_in(path)
  if not files:
    raise FileNotFoundError(f"{path}: no .safetensors file in this folder")
  return Source(files)


def _safetensors_in(folder: str) -> list[str]:
  return sorted(glob.glob(os.path.join(folder, "*.safetensors")))


def _pickles_in(folder: str) -> list[str]:
  return [f for f in glob.glob(os.path.join(folder, "*")) if f.endswith(PICKLE_SUFFIXES)]


# ------------------------------------------------------------------------------ check / import / load


def mismatch(what: str, problems: list[str], shown: int = 8) -> str:
  """One line naming the first `shown` problems (a wrong config gives hundreds)."""
  more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
  return f"{what} does not match the model config ({len(problems)} problems): " + "; ".join(problems[:shown]) + more


def check(source, layout: Layout, what: str) -> None:
  """Raises one ValueError naming every missing, unexpected and mis-shaped source tensor."""
  expected: dict[str, tuple[int, ...]] = {}
  for param in layout.values():
    for f in param.layers:
      expected.update(f.source_shapes())
  have = set(source.keys())
  problems = [f"missing {k} (expected shape {s})" for k, s in expected.items() if k not in have]
  problems += [f"mis-shaped {k}: {source.shape(k)}, expected {s}" for k, s in expected.items()
               if k in have and source.shape(k) != s]
  problems += [f"unexpected {k} {source.shape(k)}" for k in sorted(have - set(expected))]
  if problems:
    raise ValueError(mismatch(what, problems))


def import_params(source, layout: Layout, dtype) -> dict:
  """Every parameter in host memory, as a nested dict like nnx.to_pure_dict(nnx.state(model))."""
  out: dict = {}
  for path, param in layout.items():
    arrays = [f.build(source.get).astype(dtype) for f in param.layers]
    _set(out, path, np.stack(arrays) if param.stacked else arrays[0])
  return out


def load_sharded(source, layout: Layout, shardings: Mapping[tuple[str, ...], NamedSharding], dtype) -> dict:
  """Every parameter placed with its sharding, reading one layer of one parameter at a time.

  Host memory holds one layer's source tensors; a process puts on its devices only their shards
  (jax.make_array_from_callback), so a 12B checkpoint never needs a full host copy per process.
  """
  out: dict = {}
  for path, param in layout.items():
    sharding = shardings[path]
    if not param.stacked:
      host = param.layers[0].build(source.get).astype(dtype)
      _set(out, path, jax.make_array_from_callback(host.shape, sharding, lambda idx, h=host: h[idx]))
      continue
    layer_sharding = NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))
    stacked = jax.jit(lambda: jnp.zeros(param.shape(), dtype), out_shardings=sharding)()
    put = jax.jit(lambda a, x, i: a.at[i].set(x), donate_argnums=0, out_shardings=sharding)
    for i, f in enumerate(param.layers):
      host = f.build(source.get).astype(dtype)
      stacked = put(stacked, jax.make_array_from_callback(host.shape, layer_sharding, lambda idx, h=host: h[idx]), i)
    _set(out, path, stacked)
  return out


def export_params(params: Mapping, layout: Layout) -> dict[str, np.ndarray]:
  """The source-layout tensors of `params` (a nested dict of arrays), by key."""
  out: dict[str, np.ndarray] = {}
  for path, param in layout.items():
    value = np.asarray(_get(params, path))
    for i, f in enumerate(param.layers):
      out.update(f.split(value[i] if param.stacked else value))
  return out


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
  for k in path:
    tree = tree[k]
  return tree


def save_safetensors(tensors: Mapping[str, np.ndarray], path: str) -> None:
  """Writes `tensors` whole or not at all (a temp file renamed into place)."""
  from safetensors.flax import save_file  # pylint: disable=import-outside-toplevel  ("flax": bf16 survives)
  with jax.default_device(jax.devices("cpu")[0]):
    arrays = {k: jnp.asarray(v) for k, v in tensors.items()}
  tmp = f"{path}.tmp-{os.getpid()}"
  save_file(arrays, tmp)
  os.replace(tmp, path)


# ------------------------------------------------------------------- name-for-name (torch module trees)


def flax_path(key: str, ndim: int, embeddings: tuple[str, ...] = ()) -> tuple:
  """The nnx parameter path of a torch state-dict key, for modules that mirror the torch tree:
  `a.0.b.weight` -> ('a', 0, 'b', 'kernel' | 'scale' | 'embedding'); modules named in `embeddings`
  (nn.Embedding) hold 'embedding'."""
  *module, leaf = key.split(".")
  path = tuple(int(p) if p.isdigit() else p for p in module)
  if leaf == "weight":
    leaf = "embedding" if module and module[-1] in embeddings else "scale" if ndim == 1 else "kernel"
  return (*path, leaf)


def to_flax_layout(value: np.ndarray, path: tuple) -> np.ndarray:
  """torch -> flax layout: conv [out, in, kh, kw] -> [kh, kw, in, out]; Linear [out, in] -> [in, out]."""
  if path[-1] != "kernel":
    return value
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T


def torch_key(path: tuple) -> str:
  """The inverse of flax_path: ('a', 0, 'b', 'kernel' | 'scale' | 'embedding') -> `a.0.b.weight`."""
  *module, leaf = path
  return ".".join([*map(str, module), "bias" if leaf == "bias" else "weight"])


def state_dict_by_name(model) -> dict[str, np.ndarray]:
  """The torch state dict of an nnx model whose module tree mirrors the torch one (load_by_name's inverse)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    value = np.asarray(var.get_value())
    if path[-1] == "kernel":  # flax -> torch layout
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    out[torch_key(path)] = np.ascontiguousarray(value)
  return out


def load_by_name(model, state_dict: Mapping[str, Any], what: str, embeddings: tuple[str, ...] = ()) -> None:
  """Writes a torch state dict into an nnx model whose module tree mirrors the torch one, in place.

  Each value takes the dtype and sharding of the parameter it replaces. One ValueError names every
  missing, unexpected and mis-shaped tensor.
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel
  state = nnx.state(model, nnx.Param)
  current = dict(nnx.to_flat_state(state))
  new = {}
  for k, v in state_dict.items():
    path = flax_path(k, np.ndim(v), embeddings)
    new[path] = to_flax_layout(np.asarray(v), path)
  name = lambda p: ".".join(map(str, p))
  problems = [f"missing {name(p)} {v.shape}" for p, v in current.items() if p not in new]
  problems += [f"unexpected {name(p)} {np.shape(v)}" for p, v in new.items() if p not in current]
  problems += [f"mis-shaped {name(p)}: {new[p].shape}, expected {v.shape}" for p, v in current.items()
               if p in new and new[p].shape != v.shape]
  if problems:
    raise ValueError(mismatch(what, problems))
  for p, var in current.items():
    old = var.get_value()
    var.set_value(jax.device_put(new[p].astype(old.dtype), old.sharding))
  nnx.update(model, state)
