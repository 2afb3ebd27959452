"""The training loop for the keyframe model: one function, read top to bottom.

  mesh -> data -> model + optimizer state, sharded by the logical-axis rules -> restore ->
  jitted, donated step -> loop (log, sample sheet, checkpoint, non-finite guard) -> final save
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from absl import logging
from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from cinema_jax import autoencoder
from cinema_jax import checkpoints
from cinema_jax import distributed
from cinema_jax import faults
from cinema_jax import flops
from cinema_jax import input_space
from cinema_jax import objective
from cinema_jax import sharding
from cinema_jax import toy_clip
from cinema_jax.models import keyframe
from cinema_jax.models import video
from data_pipelines import pipeline
from data_pipelines import precompute
from data_pipelines import records
from data_pipelines import toy_movies


TrainingError = faults.TrainingError
TASKS = ("keyframe", "video", "autoencoder")


# ------------------------------------------------------------------------------------------ config


def validate(c: ml_collections.ConfigDict, reads_data: bool = True) -> None:
  """One-line errors for config values the run cannot use (reads_data=False: compile only)."""
  m = c.model
  if not isinstance(c.total_steps, int) or c.total_steps < 1:
    raise pipeline.ConfigError(f"config.total_steps={c.total_steps!r}: expected an int >= 1")
  h, w = c.data.resolution
  space = input_space.of(c)
  cell = space.cell
  if h % cell or w % cell:
    raise pipeline.ConfigError(f"config.data.resolution={tuple(c.data.resolution)}: not a multiple of "
                               f"model.vae_downsample * model.patch = {cell}")
  if m.text_encoder in ("tokens", "precomputed") and m.text_encoder != c.data.text_source:
    raise pipeline.ConfigError(f"config.model.text_encoder={m.text_encoder!r} needs config.data.text_source="
                               f"{m.text_encoder!r}")
  if reads_data and not space.pixels and not c.data.path and not c.data.toy.autoencoder:
    raise pipeline.ConfigError(f"config.data.path is empty: variant {c.variant!r} reads latents; give pre-computed "
                               "records, or the toy world's autoencoder (config.data.toy.autoencoder, made by python "
                               "-m cinema_jax.train --config=configs/autoencoder.py:toy --workdir=runs/ae)")
  if c.data.toy.autoencoder and space.pixels and c.task != "autoencoder":
    raise pipeline.ConfigError(f"config.data.toy.autoencoder={c.data.toy.autoencoder!r}: this model reads pixels "
                               "(model.vae_downsample=1)")
  if c.objective.prediction not in ("v", "x"):
    raise pipeline.ConfigError(f"config.objective.prediction={c.objective.prediction!r}: expected 'v' or 'x'")
  if c.objective.loss_pairs not in objective.LOSS_PAIRS:
    raise pipeline.ConfigError(f"config.objective.loss_pairs={c.objective.loss_pairs!r}: expected one of "
                               f"{', '.join(objective.LOSS_PAIRS)}")
  if c.data.memory_levels == "goldenmem" and c.data.goldenmem.resize == "pixels" and not space.pixels:
    raise pipeline.ConfigError("config.data.goldenmem.resize='pixels': this model reads pre-computed latents, so "
                               "frames can only be resized as latents (resize='latents')")
  lo, hi = c.objective.context_t
  if not 0 <= lo <= hi < 1:
    raise pipeline.ConfigError(f"config.objective.context_t={tuple(c.objective.context_t)}: expected 0 <= a <= b < 1")
  lo, hi = c.sample.context_t
  if not 0 <= lo <= hi < 1:
    raise pipeline.ConfigError(f"config.sample.context_t={tuple(c.sample.context_t)}: expected 0 <= a <= b < 1")
  _validate_curriculum(c)
  if not isinstance(c.optimizer.offload, bool):
    raise pipeline.ConfigError(f"config.optimizer.offload={c.optimizer.offload!r}: expected True or False")
  if c.optimizer.offload and "pinned_host" not in {m.kind for m in jax.devices()[0].addressable_memories()}:
    raise pipeline.ConfigError(f"config.optimizer.offload=True: {jax.devices()[0].device_kind} devices have no "
                               "pinned host memory to offload to")
  if not isinstance(c.sample.kv_cache, bool):
    raise pipeline.ConfigError(f"config.sample.kv_cache={c.sample.kv_cache!r}: expected True or False")
  if c.sample.mode not in ("autoregressive", "joint"):
    raise pipeline.ConfigError(f"config.sample.mode={c.sample.mode!r}: expected 'autoregressive' or 'joint'")
  if c.nonfinite.policy not in faults.NONFINITE_POLICIES:
    raise pipeline.ConfigError(f"config.nonfinite.policy={c.nonfinite.policy!r}: expected one of "
                               f"{', '.join(faults.NONFINITE_POLICIES)}")
  if not (isinstance(c.nonfinite.max_consecutive, int) and c.nonfinite.max_consecutive >= 1):
    raise pipeline.ConfigError(f"config.nonfinite.max_consecutive={c.nonfinite.max_consecutive!r}: "
                               "expected an int >= 1")
  if c.checkpoint.on_save_error not in faults.SAVE_ERROR_POLICIES:
    raise pipeline.ConfigError(f"config.checkpoint.on_save_error={c.checkpoint.on_save_error!r}: expected one of "
                               f"{', '.join(faults.SAVE_ERROR_POLICIES)}")
  for section, field in (("checkpoint", "every_steps"), ("log", "every_steps")):
    if c[section][field] < 1:
      raise pipeline.ConfigError(f"config.{section}.{field}={c[section][field]!r}: expected an int >= 1")
  if c.task not in TASKS:
    raise pipeline.ConfigError(f"config.task={c.task!r}: expected one of {', '.join(TASKS)}")
  if c.task == "video" and c.log.sample_every_steps:
    raise pipeline.ConfigError(f"config.log.sample_every_steps={c.log.sample_every_steps}: in-training sample sheets "
                               "are the keyframe model's; sample the video model with python -m cinema_jax.sample")
  try:
    if c.task == "autoencoder":
      autoencoder.validate(c)
      return
    if c.task == "video":
      video.validate(c)
    dit, text = keyframe.configs(c)
    dit.validate()
    if text is not None:
      text.validate()
  except ValueError as e:
    raise pipeline.ConfigError(f"config.{e}" if str(e).startswith("model.") else str(e)) from None


def _model_lib(c: ml_collections.ConfigDict):
  """The module that builds the model config.task trains (build, abstract)."""
  return autoencoder if c.task == "autoencoder" else keyframe


@dataclasses.dataclass(frozen=True)
class Stage:
  """Steps first..last (inclusive) train with `config` (the run's config at that stage's window)."""

  first: int
  last: int
  config: ml_collections.ConfigDict


def stages(c: ml_collections.ConfigDict) -> list[Stage]:
  """The progressive long-context curriculum (config.curriculum), or one stage of the whole run."""
  cur = c.curriculum
  if not cur.pairs:
    return [Stage(1, c.total_steps, c)]
  out, first = [], 1
  for pairs, steps in zip(cur.pairs, cur.steps):
    sc = c.copy_and_resolve_references()
    sc.data.num_pairs = int(pairs)
    out.append(Stage(first, first + steps - 1, sc))
    first += steps
  return out


def _validate_curriculum(c: ml_collections.ConfigDict) -> None:
  pairs, steps = tuple(c.curriculum.pairs), tuple(c.curriculum.steps)
  if not pairs and not steps:
    return
  if len(pairs) != len(steps) or not all(isinstance(x, int) and x >= 1 for x in pairs + steps):
    raise pipeline.ConfigError(f"config.curriculum: pairs={pairs} and steps={steps} must be equally long lists of "
                               "ints >= 1")
  if sum(steps) != c.total_steps:
    raise pipeline.ConfigError(f"config.curriculum.steps={steps} sum to {sum(steps)}, config.total_steps is "
                               f"{c.total_steps}")
  if pairs[-1] != c.data.num_pairs:
    raise pipeline.ConfigError(f"config.curriculum.pairs={pairs} ends at {pairs[-1]} pairs, config.data.num_pairs "
                               f"is {c.data.num_pairs} (the model's final window, which sampling uses)")


# ------------------------------------------------------------------------------------------- state


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


def make_setup(c: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Setup:
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


def jit_train_step(c: ml_collections.ConfigDict, s: Setup, mesh: jax.sharding.Mesh, batch: dict):
  """The jitted train step of config c, its state donated: the one the trainer runs and `--compile_only`,
  the benchmarks and the tests compile. batch: arrays or ShapeDtypeStructs whose shardings the step takes."""
  return jax.jit(make_train_step(c, s), in_shardings=(s.state_shardings, {k: v.sharding for k, v in batch.items()}),
                 out_shardings=(s.state_shardings, NamedSharding(mesh, P())), donate_argnums=0)


def make_train_step(c: ml_collections.ConfigDict, s: Setup):
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


# -------------------------------------------------------------------------------------------- loop


def _global_batch(batch: dict, mesh) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, v.ndim), v)
          for k, v in batch.items()}


def train_and_evaluate(c: ml_collections.ConfigDict, workdir: str, stop_at_step: int | None = None) -> dict[str, Any]:
  """Trains to config.total_steps (resuming from workdir's latest checkpoint); returns the last metrics.

  stop_at_step: end this run early at that step with a checkpoint, as a preempted or time-sliced job
  would; the schedule still runs to total_steps, and a later run continues exactly.
  """
  validate(c)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)

  mesh = sharding.make_mesh(c.mesh)
  dp = sharding.data_parallel_size(mesh)
  if c.batch_size % dp:
    raise pipeline.ConfigError(f"config.batch_size={c.batch_size}: not a multiple of the data-parallel size {dp} "
                               f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']})")
  _check_same_model(c, workdir)
  path = precompute.train_path(c.data, workdir, logging.info)
  _check_latents(c, path)
  if c.data.text_source == "tokens" and c.task != "autoencoder":
    vocab = pipeline.text_tokenizer(c.data, path).vocab_size
    if vocab > c.model.text.vocab_size:
      raise pipeline.ConfigError(f"config.model.text.vocab_size={c.model.text.vocab_size}: the tokenizer of {path} "
                                 f"has {vocab} tokens")
  plan = stages(c)
  # text-to-image retrieval: ToyCLIP on pixel keyframes; records of pre-computed latents carry the embeddings
  pixel_records = records.ShotReader(path).index.latent_shape is None
  clip_path = (toy_clip.resolve(c.data, workdir, logging.info)
               if c.data.context_order == "image" and pixel_records else "")

  setup = make_setup(c, mesh)  # outside the mesh context: abstract params keep logical axis names
  with jax.set_mesh(mesh):
    mngr = checkpoints.manager(workdir, c)
    start = mngr.latest_step()
    if start is None:
      state, start = setup.init(), 0
      if c.init_from:
        state = _init_from(c.init_from, state, setup)
    else:
      logging.info("resuming from step %d in %s", start, workdir)
      state = checkpoints.restore(mngr, start, setup.abstract_state)

    writer = _writer(c, workdir)
    sheet = _sample_sheet_fn(c, workdir, setup, mesh)
    guard = faults.NonFiniteGuard(c.nonfinite.policy, c.nonfinite.max_consecutive)
    stage, data_iter, train_step = None, None, None
    window, pending, last = [], None, {}
    t_window = time.perf_counter()
    last_step = min(c.total_steps, stop_at_step or c.total_steps)
    with faults.Preemption() as preemption:
      for step in range(start + 1, last_step + 1):
        if stage is None or step > stage.last:  # a new curriculum stage (or the run's only one)
          stage = next(s for s in plan if s.first <= step <= s.last)
          if data_iter is not None:
            data_iter.close()
          resuming = step == start + 1 and start >= stage.first  # inside this stage: its data position
          same_layout = resuming and checkpoints.has_data_iter_of_this_process(mngr, start)
          if resuming and not same_layout:  # saved by another number of processes: position from the step
            logging.warning("the checkpoint's data position was saved by another number of processes: "
                            "continuing at global batch %d of this stage", start - stage.first + 1)
          data_iter = pipeline.make_pipeline(
              stage.config.data, path, batch_size=c.batch_size, process_index=jax.process_index(),
              process_count=jax.process_count(), image_groups=keyframe.pipeline_image_groups(stage.config),
              embedding_path=clip_path, first_batch=start - stage.first + 1 if resuming and not same_layout else 0
          ).iterator()
          if same_layout:
            checkpoints.restore_data_iter(mngr, start, data_iter)
          train_step = None  # compiled once per stage: the window length changes the shapes
          counter = flops.StepCost(stage.config, frames_per_example=_frames_per_example(stage.config, path))
          logging.info("model: %.2fM parameters; steps %d-%d: %s", counter.num_params / 1e6, stage.first,
                       stage.last, counter.describe())
        batch = _global_batch(next(data_iter), mesh)
        if train_step is None:
          train_step = jit_train_step(stage.config, setup, mesh, batch)
        state, metrics = train_step(state, batch)
        # Fetch the previous step's metrics after dispatching this one: the host never stalls the device.
        if pending is not None:
          window.append(_check(pending, guard, mngr))
        pending = (step, metrics)
        preempted = preemption.requested(step)
        final = step == last_step or preempted
        if step % c.log.every_steps == 0 or final or step == stage.last:
          window.append(_check(pending, guard, mngr))
          pending = None
          elapsed = time.perf_counter() - t_window
          last = dict(_log(c, step, window, elapsed, counter, writer), skipped_steps=guard.skipped)
          window, t_window = [], time.perf_counter()
        if sheet and (step % c.log.sample_every_steps == 0 or step == last_step):
          sheet(state, step, writer)
        if step % c.checkpoint.every_steps == 0 or final:
          if pending is not None:
            window.append(_check(pending, guard, mngr))
            pending = None
          _save(mngr, step, state, data_iter, c, final)
        if preempted:
          logging.warning("preempted at step %d: its checkpoint is committed; exiting", step)
          last["preempted"] = True
          break
    mngr.close()
  if data_iter is not None:
    data_iter.close()
  if writer is not None:
    writer.close()
  return last


_HOW_IT_COMPUTES = ("model.dtype", "model.remat", "model.attention")  # not what the parameters are


def _check_same_model(c: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir with checkpoints holds the model this config builds: one line naming the fields that differ
  (an old pixel-space run resumed with today's latent demo config, say), not a shape error in the restore."""
  if not os.path.isdir(os.path.join(workdir, checkpoints.CHECKPOINT_DIR)):
    return
  try:
    saved = checkpoints.saved_config(workdir)
  except FileNotFoundError:
    return
  flat = lambda model: {f"model.{k}": v for k, v in traverse_util.flatten_dict(model.to_dict(), sep=".").items()}
  now, then = flat(c.model), flat(saved.model)
  diff = [k for k in sorted(now.keys() & then.keys()) if k not in _HOW_IT_COMPUTES and now[k] != then[k]]
  if diff:
    was = " ".join(f"--config.{k}={then[k]}" for k in diff)
    raise pipeline.ConfigError(f"{workdir} holds a checkpoint of another model: " + ", ".join(
        f"{k}={then[k]!r} there, {now[k]!r} in this config" for k in diff) + f"; train into a new --workdir, or "
        f"continue that run with {was}" + (" --config.data.toy.autoencoder=''" if then.get("model.vae_downsample") == 1
                                            and c.data.toy.autoencoder else ""))


def _check_latents(c: ml_collections.ConfigDict, path: str) -> None:
  """A latent dataset's latents have the model's size and channels (one line, not a shape error in the step)."""
  shape = records.ShotReader(path).index.latent_shape
  if shape is None or c.task == "autoencoder":
    return
  space = input_space.of(c)
  want = list(space.frame_shape)
  if list(shape) != want:
    raise pipeline.ConfigError(f"{path} holds {shape[0]}x{shape[1]} latents of {shape[2]} channels; config.data."
                               f"resolution={tuple(c.data.resolution)} with model.vae_downsample={space.downsample} "
                               f"and model.image_channels={space.channels} reads {want[0]}x{want[1]}x{want[2]}")


def _frames_per_example(c: ml_collections.ConfigDict, path: str) -> int:
  """Frames the autoencoder sees per example: every frame of a shot of the dataset."""
  return records.ShotReader(path).index.num_frames if c.task == "autoencoder" else 1


def _init_from(path: str, state: dict, setup: Setup) -> dict:
  """The state with its MM-DiT parameters (and their EMA copy) from a converted FLUX folder."""
  target = checkpoints.abstract_like(state["params"]["dit"], setup.state_shardings["params"]["dit"])
  params_dir = os.path.join(os.path.abspath(path), "params")
  if not os.path.isdir(params_dir):
    raise TrainingError(f"config.init_from={path!r}: no converted parameters there ({params_dir}); make them with "
                        "python -m cinema_jax.convert.flux --src CHECKPOINT --dst DIR")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      dit = ckptr.restore(params_dir, target)
  except (ValueError, KeyError) as e:  # a model of other sizes: Orbax names the mismatch
    raise TrainingError(f"config.init_from={path!r} does not fit config.model: {str(e).splitlines()[0]}") from None
  logging.info("MM-DiT parameters from %s", path)
  params = dict(state["params"], dit=dit)
  # the EMA starts equal to the parameters but in buffers of its own: the step donates both
  ema = dict(state["ema"], dit=jax.tree.map(lambda x: x.copy(), dit)) if state["ema"] else state["ema"]
  return dict(state, params=params, ema=ema)


def _check(pending: tuple[int, dict], guard: faults.NonFiniteGuard, mngr) -> dict[str, float]:
  step, metrics = pending
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  saved = None
  if m["nonfinite"]:
    mngr.wait_until_finished()
    saved = mngr.latest_step()
  return guard.check(step, m, saved)


def _save(mngr, step: int, state, data_iter, c, final: bool) -> None:
  """Saves `step` by config.checkpoint.on_save_error; the run's final save also waits for its commit."""
  try:
    checkpoints.save(mngr, step, state, data_iter, c)
    if final:
      mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except  (OSError, tensorstore and Orbax errors alike)
    distributed.collective_failure(e)  # a save barrier that failed because another process died: exit now
    try:
      saved = mngr.latest_step()
    except Exception:  # pylint: disable=broad-except  (the directory itself may be what failed)
      saved = None
    msg = (f"checkpoint save at step {step} failed ({type(e).__name__}: {e}); the last complete checkpoint "
           f"({'step ' + str(saved) if saved is not None else 'none'}) is intact")
    if c.checkpoint.on_save_error == "stop" or final:
      raise TrainingError(msg + (" (this was the run's last save)" if final else "")) from None
    logging.error("%s; retrying at the next checkpoint step (config.checkpoint.on_save_error='retry')", msg)


def _log(c, step: int, window: list[dict], elapsed: float, counter: "flops.StepCost", writer) -> dict[str, Any]:
  n = len(window)
  out = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
  out.update(step=step, step_time=elapsed / n, examples_per_s=c.batch_size * n / elapsed,
             tokens_per_s=counter.tokens_per_step * n / elapsed)
  out["mfu"] = counter.flops_per_step / out["step_time"] / counter.peak_flops
  logging.info("step %d: loss %.4f, grad norm %.3f, lr %.2e, %.3f s/step, %.1f examples/s, %.0f tokens/s, MFU %.1f%%",
               step, out["loss"], out["grad_norm"], out["lr"], out["step_time"], out["examples_per_s"],
               out["tokens_per_s"], 100 * out["mfu"])
  if writer is not None:
    for k, v in out.items():
      if k != "step":
        writer.add_scalar(f"train/{k}", v, step)
    writer.flush()
  return out


def _writer(c, workdir: str):
  if not c.log.tensorboard or jax.process_index() != 0:
    return None
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(os.path.join(workdir, "tensorboard"))


def _sample_sheet_fn(c, workdir: str, setup: Setup, mesh):
  """A function that samples the first storyline and writes its storyboard, or None when disabled."""
  if not c.log.sample_every_steps or c.data.path or jax.process_index() != 0:
    return None
  from cinema_jax import sampling  # pylint: disable=g-import-not-at-top
  with open(os.path.join(toy_movies.root_for_config(c.data, workdir), "storylines.jsonl")) as f:
    story = json.loads(f.readline())
  clip = toy_clip.load(toy_clip.resolve(c.data, workdir)) if c.data.context_order == "image" else None
  sampler = sampling.Sampler(c, setup.graphdef, clip=clip)

  def write(state, step: int, writer) -> None:
    params = state["ema"] if c.optimizer.ema_decay > 0 else state["params"]
    shots = story["captions"][: c.sample.max_shots or None]
    frames = sampler.keyframes(params, shots, seed=c.seed)
    out = os.path.join(workdir, "samples", f"step_{step:07d}.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    img = sampling.storyboard_image(frames, shots, title=f"{story['title']} - step {step}")
    img.save(out)
    if writer is not None:
      writer.add_image("samples/storyboard", np.asarray(img), step, dataformats="HWC")
    logging.info("sample sheet: %s", out)

  return write
