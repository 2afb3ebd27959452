"""Orbax checkpoints of a run: named items `state` (step, params, optimizer, EMA), `data_iter` (the grain
iterator) and `config` (JSON). Saves are atomic (Orbax commits a step directory only when complete),
so a restore only ever sees whole steps. The state is a sharded Orbax (tensorstore) checkpoint that every
process writes its shards of; it restores onto any mesh and number of processes (restore places it as
the given abstract state's shardings say)."""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def manager(workdir: str, c: ml_collections.ConfigDict | None = None, read_only: bool = False) -> ocp.CheckpointManager:
  keep = c.checkpoint.keep if c is not None else None
  async_save = bool(c.checkpoint.async_save) if c is not None else False
  # a reader saves nothing: say so (save_interval_steps=0) rather than have Orbax warn that it changed it
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                         create=not read_only, read_only=read_only,
                                         save_interval_steps=0 if read_only else 1)
  path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  return ocp.CheckpointManager(path, options=options, item_names=("state", "data_iter", "config"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter, c: ml_collections.ConfigDict) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=grain.checkpoint.CheckpointSave(data_iter),
      config=ocp.args.JsonSave(c.to_dict())))


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter=None) -> Any:
  """The state of `step`, placed as `abstract_state`'s shardings say; restores data_iter in place."""
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  return mngr.restore(step, args=ocp.args.Composite(**args))["state"]


def restore_data_iter(mngr: ocp.CheckpointManager, step: int, data_iter) -> None:
  """Restores only the data iterator of `step`, in place."""
  mngr.restore(step, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(data_iter)))


def has_data_iter_of_this_process(mngr: ocp.CheckpointManager, step: int) -> bool:
  """Whether `step` holds this process's data-iterator state under the current process count (grain
  writes one file per process, named by index and count)."""
  name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
  return os.path.exists(os.path.join(str(mngr.directory), str(step), "data_iter", name))


def saved_config(workdir: str, defaults=None) -> ml_collections.ConfigDict:
  """The config the latest checkpoint of `workdir` was trained with.

  defaults: a current config (or a function of the saved dict returning one) to lay the saved one over,
  so that fields added since the checkpoint was written (their defaults keep the old behaviour) are
  there for the code that reads them.
  """
  mngr = manager(workdir, read_only=True)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)}")
  raw = _tuples(mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
  if callable(defaults):
    defaults = defaults(raw)
  if defaults is None:
    return ml_collections.ConfigDict(raw)
  out = defaults.copy_and_resolve_references()
  _overlay(out, raw)
  return out


def _overlay(base: ml_collections.ConfigDict, saved: dict) -> None:
  with base.unlocked(), base.ignore_type():
    for k, v in saved.items():
      if isinstance(v, dict) and isinstance(base.get(k), ml_collections.ConfigDict):
        _overlay(base[k], v)
      else:
        base[k] = v


def _tuples(x):
  """JSON turns tuples into lists; configs use tuples for fixed-size fields (resolution, axes_dim)."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def abstract_like(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
