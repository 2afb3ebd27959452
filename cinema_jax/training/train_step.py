"""The training step: the model, optimizer and EMA state with their shardings (make_setup), and the one
jitted, donated step (jit_train_step) that the trainer runs and `--compile_only`, the benchmarks and the
tests compile. A non-finite loss, gradient or update leaves the state unchanged."""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import optax

from cinema_jax import checkpoints
from cinema_jax import config_validation
from cinema_jax import sharding
from cinema_jax.models import keyframe
from cinema_jax.models import video
from cinema_jax.training import autoencoder


def _model_lib(c: config_validation.Config):
  """The module that builds the model config.task trains (build, abstract)."""
  return autoencoder if c.task == "autoencoder" else keyframe


@dataclasses.dataclass(frozen=True)
class Stage:
  """Steps first..last (inclusive) train with `config` (the run's config at that stage's window)."""

  first: int
  last: int
  config: config_validation.Config


def stages(c: config_validation.Config) -> list[Stage]:
  """The progressive long-context curriculum (config.curriculum), or one stage of the whole run."""
  cur = c.curriculum
  if not cur.pairs:
    return [Stage(1, c.total_steps, c)]
  out, first = [], 1
  for pairs, steps in zip(cur.pairs, cur.steps):
    # the stage's own window; its config has no curriculum of its own (which must end at num_pairs)
    sc = config_validation.replace(c, {"data.num_pairs": pairs, "curriculum.pairs": (), "curriculum.steps": ()})
    out.append(Stage(first, first + steps - 1, sc))
    first += steps
  return out


@dataclasses.dataclass
class Setup:
  """Everything the step and the restore need: the model's graph, the optimizer, shardings."""

  graphdef: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: dict
  abstract_state: dict
  init: Any  # jitted () -> state
  opt_device_shardings: Any = None  # config.optimizer.offload: where the step brings the host-resident moments


def make_setup(c: config_validation.Config, mesh: jax.sharding.Mesh) -> Setup:
  abstract_model = _model_lib(c).abstract(c)
  graphdef, abstract_params = nnx.split(abstract_model)
  param_shardings = sharding.param_shardings(abstract_params, mesh)
  o = c.optimizer
  schedule = optax.warmup_cosine_decay_schedule(0.0, o.lr, max(o.warmup_steps, 1),
                                                max(c.total_steps, o.warmup_steps + 1),
                                                end_value=o.lr * o.end_lr_fraction)
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                   optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
  replicated = NamedSharding(mesh, P())

  def init():
    params = nnx.to_pure_dict(nnx.state(_model_lib(c).build(c, seed=c.seed)))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "ema": params if o.ema_decay > 0 else {}}

  abstract_state = jax.eval_shape(init)
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_state["opt_state"], param_shardings,
                                        transform_non_params=lambda _: replicated)
  opt_device_shardings = None
  if o.offload:
    opt_device_shardings = opt_shardings
    opt_shardings = jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), opt_shardings)
  state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings,
                     "ema": param_shardings if o.ema_decay > 0 else {}}
  return Setup(graphdef=graphdef, tx=tx, schedule=schedule, state_shardings=state_shardings,
               abstract_state=checkpoints.abstract_like(abstract_state, state_shardings),
               init=jax.jit(init, out_shardings=state_shardings), opt_device_shardings=opt_device_shardings)


def jit_train_step(c: config_validation.Config, s: Setup, mesh: jax.sharding.Mesh, batch: dict):
  """The jitted train step of config c, its state donated: the one the trainer runs and `--compile_only`,
  the benchmarks and the tests compile. batch: arrays or ShapeDtypeStructs whose shardings the step takes."""
  return jax.jit(make_train_step(c, s), in_shardings=(s.state_shardings, {k: v.sharding for k, v in batch.items()}),
                 out_shardings=(s.state_shardings, NamedSharding(mesh, P())), donate_argnums=0)


def make_train_step(c: config_validation.Config, s: Setup):
  """(state, batch) -> (state, metrics); a non-finite loss, gradient or update leaves the state unchanged."""
  ema_decay = c.optimizer.ema_decay

  model_loss = {"keyframe": keyframe.loss, "video": video.loss, "autoencoder": autoencoder.loss}[c.task]

  def loss_fn(params, batch, key):
    return model_loss(c, nnx.merge(s.graphdef, params), batch, key)

  def step(state, batch):
    if s.opt_device_shardings is not None:  # offloaded: the moments come to the device for the update
      state = dict(state, opt_state=jax.device_put(state["opt_state"], s.opt_device_shardings))
    key = jax.random.fold_in(jax.random.key(c.seed), state["step"])
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, key)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = s.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = (jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], params)
           if ema_decay > 0 else state["ema"])  # ema_decay 0: no EMA copy ({}) is kept
    # The first non-finite quantity, as 1 + its place in faults.NONFINITE_QUANTITIES (0: all finite).
    bad = jnp.stack([~jnp.isfinite(loss), ~jnp.isfinite(grad_norm), ~jnp.isfinite(optax.tree.norm(updates))])
    nonfinite = jnp.where(jnp.any(bad), jnp.argmax(bad) + 1, 0)
    new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "ema": ema}
    keep = lambda n, old: jnp.where(nonfinite == 0, n, old)
    new = {k: (jax.tree.map(keep, new[k], state[k]) if k != "step" else new[k]) for k in new}
    if s.opt_device_shardings is not None:  # and go back to host memory
      new["opt_state"] = jax.device_put(new["opt_state"], s.state_shardings["opt_state"])
    metrics = {**aux, "grad_norm": grad_norm, "lr": s.schedule(state["step"]), "nonfinite": nonfinite}
    return new, metrics

  return step
