"""Orbax checkpoints of a run: named items `state` (step, params, optimizer, EMA), `data_iter` (the grain
iterator), `config` (JSON) and `checksums` (JSON). Saves are atomic (Orbax commits a step directory only
when complete), so a restore only ever sees whole steps. The state is a sharded Orbax (tensorstore)
checkpoint that every process writes its shards of; it restores onto any mesh and number of processes
(restore places it as the given abstract state's shardings say).

Integrity: each save writes two checksums per array of the state (`fingerprint`: sums of its bits, plain
and position-weighted, computed on the devices where the arrays live), and every restore, the training
state's or sampling's parameters-only one, compares what it read with them. A step that cannot be read or
does not match raises errors.CheckpointError; training moves it aside (DAMAGED_DIR) and resumes from the
newest intact one (`restore_newest_intact`), sampling refuses it."""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from cinema_jax import config_validation
from cinema_jax import errors

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"  # beside CHECKPOINT_DIR: steps that failed verification, kept for a look


def manager(workdir: str, c: config_validation.Config | None = None, read_only: bool = False) -> ocp.CheckpointManager:
  keep = c.checkpoint.keep if c is not None else None
  async_save = bool(c.checkpoint.async_save) if c is not None else False
  # a reader saves nothing: say so (save_interval_steps=0) rather than have Orbax warn that it changed it
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                         create=not read_only, read_only=read_only,
                                         save_interval_steps=0 if read_only else 1)
  path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  return ocp.CheckpointManager(path, options=options, item_names=("state", "data_iter", "config", "checksums"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter, c: config_validation.Config) -> None:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=grain.checkpoint.CheckpointSave(data_iter),
      config=ocp.args.JsonSave(config_validation.to_dict(c)),
      checksums=ocp.args.JsonSave(fingerprint(state))))


def _bits(x: jax.Array) -> jax.Array:
  """x's bits as uint32 values (one per element of up to 4 bytes, two per 8-byte element)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _sums(leaves: list[jax.Array]) -> list[jax.Array]:
  out = []
  for x in leaves:
    b = _bits(jnp.asarray(x)).ravel()
    weight = jax.lax.iota(jnp.uint32, b.size) * jnp.uint32(2654435761) + jnp.uint32(1)  # wraps mod 2**32
    out.append(jnp.stack([jnp.sum(b, dtype=jnp.uint32), jnp.sum(b * weight, dtype=jnp.uint32)]))
  return out


def fingerprint(tree: Any) -> dict[str, list[int]]:
  """{array path: [sum of its bits, position-weighted sum]} mod 2**32: exact integer sums, so the same on any
  mesh; a changed byte changes them. Computed where the arrays are (a reduction per array)."""
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(tree)[0]) if jax.tree.leaves(tree) else ((), ())
  sums = jax.device_get(_sums(list(leaves)))
  return {jax.tree_util.keystr(p, simple=True, separator="/"): [int(a), int(b)] for p, (a, b) in zip(paths, sums)}


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(mngr.directory), str(step))


def _read(mngr: ocp.CheckpointManager, step: int, args: ocp.args.Composite) -> dict:
  try:
    return mngr.restore(step, args=args)
  except Exception as e:  # pylint: disable=broad-except  (tensorstore, Orbax and OS errors of damaged files)
    first = (str(e).strip().splitlines() or [""])[0][:300]
    raise errors.CheckpointError(f"checkpoint step {step} in {mngr.directory} cannot be read "
                                 f"({type(e).__name__}: {first})") from None


def verify(mngr: ocp.CheckpointManager, step: int, restored: Any) -> bool:
  """Compares `restored` (the state of `step`, or a subtree of it such as {"ema": params}, in the dtype it
  was saved in) with the checksums saved with it; False for a checkpoint from before checksums."""
  if not os.path.isdir(os.path.join(_step_dir(mngr, step), "checksums")):
    logging.warning("checkpoint step %d in %s has no checksums (written before they were): not verified", step,
                    mngr.directory)
    return False
  saved = _read(mngr, step, ocp.args.Composite(checksums=ocp.args.JsonRestore()))["checksums"]
  got = fingerprint(restored)
  bad = sorted(k for k, v in got.items() if saved.get(k) != v)
  if bad:
    raise errors.CheckpointError(f"checkpoint step {step} in {mngr.directory} is damaged: {len(bad)} of {len(got)} "
                                 f"arrays differ from the checksums written when it was saved (first: {bad[0]})")
  return True


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter=None) -> Any:
  """The state of `step`, placed as `abstract_state`'s shardings say and verified against its checksums
  (errors.CheckpointError when damaged); restores data_iter in place."""
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  state = _read(mngr, step, ocp.args.Composite(**args))["state"]
  verify(mngr, step, state)
  return state


def restore_params(mngr: ocp.CheckpointManager, step: int, item: dict) -> dict:
  """A part of the state of `step` (item: {"ema": abstract parameters}, in their saved dtype), read
  without the rest (a partial restore: not the optimizer's moments) and verified."""
  restored = _read(mngr, step, ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True)))["state"]
  verify(mngr, step, restored)
  return restored


def restore_newest_intact(mngr: ocp.CheckpointManager, abstract_state: Any,
                          log: Callable[[str], None] = logging.error) -> tuple[int | None, Any]:
  """(step, state) of the newest checkpoint that reads and verifies, or (None, None) when there is none.

  Each damaged newer step is named in one line (`log`) and moved to DAMAGED_DIR beside the checkpoints
  (kept, not deleted), so the run saves that step again; errors.TrainingError when every step is damaged."""
  damaged = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return step, restore(mngr, step, abstract_state)
    except errors.CheckpointError as e:
      aside = _move_aside(mngr, step)
      damaged.append(step)
      log(f"{e}; moved to {aside}, falling back to the previous checkpoint")
  if damaged:
    raise errors.TrainingError(f"no intact checkpoint in {mngr.directory}: steps {damaged} are damaged (moved to "
                               f"{os.path.join(os.path.dirname(str(mngr.directory)), DAMAGED_DIR)}); start a new "
                               "--workdir, or restore a copy")
  return None, None


def _move_aside(mngr: ocp.CheckpointManager, step: int) -> str:
  aside = os.path.join(os.path.dirname(str(mngr.directory)), DAMAGED_DIR, str(step))
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    if os.path.exists(aside):  # the same step damaged twice: keep both
      aside = f"{aside}.{len(os.listdir(os.path.dirname(aside)))}"
    shutil.move(_step_dir(mngr, step), aside)
  multihost_utils.sync_global_devices(f"checkpoint step {step} moved aside")
  mngr.reload()
  return aside


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
