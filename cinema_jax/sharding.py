"""The mesh builder and the one table of logical axis rules.

Layers name their parameter axes logically (cinema_jax/models/layers.py); this table says which mesh
axis shards each name. FSDP shards parameters (and so the optimizer state, which mirrors them) along
'fsdp'; tensor parallelism shards heads and MLP along 'tensor'; the batch is split over 'data' and
'fsdp'; context parallelism splits the pairs (so the interleaved sequence) over 'context'. Meshes are built with
Auto axes: shardings are given to jit and XLA propagates them (GSPMD).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
from flax import nnx
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from cinema_jax import config_validation
from cinema_jax import errors

MESH_AXES = ("data", "fsdp", "context", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("qkv", "tensor"),
    ("mod", "tensor"),
    ("vocab", None),
    ("in", None),
    ("norm", None),
    ("layers", None),
    # activations
    ("batch", BATCH_AXES),
    ("pairs", "context"),  # (caption, keyframe) pairs: the interleaved sequence is pair-major
    ("length", "context"),
)


def mesh_shape(c: config_validation.Mesh, num_devices: int) -> tuple[int, ...]:
  """Sizes of MESH_AXES from config.mesh, with one -1 filled in; one-line errors when they do not fit."""
  sizes = [getattr(c, a) for a in MESH_AXES]
  unknown = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(unknown) > 1:
    raise errors.MeshError(f"config.mesh: at most one axis may be -1, got {', '.join(unknown)}")
  if any(s == 0 or s < -1 for s in sizes):
    raise errors.MeshError(f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if unknown:
    if num_devices % known:
      raise errors.MeshError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: the fixed axes ({known} devices) do not "
                             f"divide the {num_devices} devices")
    sizes[MESH_AXES.index(unknown[0])] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise errors.MeshError(f"config.mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                           f"there are {num_devices}")
  return tuple(sizes)


def dcn_shape(c: config_validation.Mesh) -> tuple[int, ...]:
  """Sizes of MESH_AXES across slices / hosts (config.mesh.dcn)."""
  return tuple(getattr(c.dcn, a) for a in MESH_AXES)


def make_mesh(c: config_validation.Mesh, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The ('data', 'fsdp', 'context', 'tensor') mesh.

  config.mesh gives each axis's size within a slice (ICI; one may be -1), config.mesh.dcn how many
  slices (TPU multi-slice) or hosts (GPU nodes, CPU processes) each axis spans; an axis's size is the
  product. Collectives of an axis with dcn > 1 cross the slower network, so put 'data' (one gradient
  all-reduce per step) there, and keep 'tensor' and 'context' (every layer) inside a slice.
  """
  devices = list(devices if devices is not None else jax.devices())
  dcn = dcn_shape(c)
  slices = math.prod(dcn)
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if slices == 1:
    return jax.make_mesh(mesh_shape(c, len(devices)), MESH_AXES, axis_types=axis_types, devices=devices)
  if len(devices) % slices:
    raise errors.MeshError(f"config.mesh.dcn={dict(zip(MESH_AXES, dcn))}: {slices} slices do not divide the "
                           f"{len(devices)} devices")
  ici = mesh_shape(c, len(devices) // slices)
  # TPU multi-slice devices carry their slice; otherwise (GPU nodes, CPU processes) a process is a granule
  by_slice = len({getattr(d, "slice_index", 0) for d in devices}) > 1
  try:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not by_slice,
                                                allow_split_physical_axes=True)
  except ValueError as e:
    raise errors.MeshError(f"config.mesh.dcn={dict(zip(MESH_AXES, dcn))}: {e}") from None
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def logical_spec(axes: Sequence[str | None]) -> P:
  """Mesh PartitionSpec of logical axis names, by LOGICAL_RULES."""
  return P(*nn.logical_to_mesh_axes(tuple(axes), LOGICAL_RULES))


def param_shardings(abstract_state: nnx.State, mesh: Mesh) -> Any:
  """NamedSharding per parameter (a pure dict like nnx.to_pure_dict(state)), from the rules table."""
  with nn.logical_axis_rules(LOGICAL_RULES):
    specs = nnx.get_partition_spec(abstract_state)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), nnx.to_pure_dict(specs),
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Examples split over the data-parallel axes, everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def dividing_axes(size: int, mesh, *candidates: tuple[str, ...]) -> tuple[str, ...] | None:
  """The first candidate group of mesh axes whose total size divides `size` (None: replicate).

  For kernels that run per shard (shard_map), which cannot split a dimension unevenly."""
  for axes in candidates:
    if size % math.prod(mesh.shape[a] for a in axes) == 0:
      return axes
  return None


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Activation sharding constraint by logical names; a no-op outside a mesh context."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_spec(axes))
