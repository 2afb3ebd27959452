"""The training loop of every task (keyframe, video, autoencoder): one function, read top to bottom.

  mesh -> data -> model + optimizer state, sharded by the logical-axis rules -> restore ->
  jitted, donated step -> loop (log, sample sheet, checkpoint, non-finite guard) -> final save
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
from flax import traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from cinema_jax import batch_format
from cinema_jax import checkpoints
from cinema_jax import config_validation
from cinema_jax import distributed
from cinema_jax import errors
from cinema_jax import flops
from cinema_jax import input_space
from cinema_jax import sharding
from cinema_jax import toy_clip
from cinema_jax.models import keyframe
from cinema_jax.training import faults
from cinema_jax.training import train_step
from data_pipelines import pipeline
from data_pipelines import precompute
from data_pipelines import records
from data_pipelines import toy_dataset


def _global_batch(batch: dict, mesh) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, v.ndim), v)
          for k, v in batch.items()}


def train_and_evaluate(c: config_validation.Config, workdir: str, stop_at_step: int | None = None) -> dict[str, Any]:
  """Trains to config.total_steps (resuming from workdir's latest checkpoint); returns the last metrics.

  stop_at_step: end this run early at that step with a checkpoint, as a preempted or time-sliced job
  would; the schedule still runs to total_steps, and a later run continues exactly.
  """
  config_validation.require(c, "train_and_evaluate")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)

  mesh = sharding.make_mesh(c.mesh)
  dp = sharding.data_parallel_size(mesh)
  if c.batch_size % dp:
    raise errors.ConfigError(f"config.batch_size={c.batch_size}: not a multiple of the data-parallel size {dp} "
                             f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']})")
  _check_same_model(c, workdir)
  path = precompute.train_path(c.data, workdir, logging.info)
  _check_latents(c, path)
  if c.data.text_source == "tokens" and c.task != "autoencoder":
    vocab = pipeline.text_tokenizer(c.data, path).vocab_size
    if vocab > c.model.text.vocab_size:
      raise errors.ConfigError(f"config.model.text.vocab_size={c.model.text.vocab_size}: the tokenizer of {path} "
                               f"has {vocab} tokens")
  plan = train_step.stages(c)

  setup = train_step.make_setup(c, mesh)  # outside the mesh context: abstract params keep logical axis names
  with jax.set_mesh(mesh):
    mngr = checkpoints.manager(workdir, c)
    start, state = checkpoints.restore_newest_intact(mngr, setup.abstract_state)
    if start is None:
      state, start = setup.init(), 0
      if c.init_from:
        state = _init_from(c.init_from, state, setup)
    else:
      logging.info("resuming from step %d in %s (verified against its checksums)", start, workdir)

    writer = _writer(c, workdir)
    sheet = _sample_sheet_fn(c, workdir, setup, mesh)
    guard = faults.NonFiniteGuard(c.nonfinite.policy, c.nonfinite.max_consecutive)
    stage, data_iter, step_fn = None, None, None
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
              first_batch=start - stage.first + 1 if resuming and not same_layout else 0
          ).iterator()
          if same_layout:
            checkpoints.restore_data_iter(mngr, start, data_iter)
          step_fn = None  # compiled once per stage: the window length changes the shapes
          counter = flops.StepCost(stage.config, frames_per_example=_frames_per_example(stage.config, path))
          logging.info("model: %.2fM parameters; steps %d-%d: %s", counter.num_params / 1e6, stage.first,
                       stage.last, counter.describe())
        batch = _global_batch(next(data_iter), mesh)
        if step_fn is None:
          batch_format.check(batch, batch_format.spec(stage.config), path)
          step_fn = train_step.jit_train_step(stage.config, setup, mesh, batch)
        state, metrics = step_fn(state, batch)
        _background_save_failed(mngr, c)
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
          logging.warning("%s at step %d: its checkpoint is committed; exiting",
                          "interrupted" if preemption.signal == "SIGINT" else "preempted", step)
          last.update(preempted=True, signal=preemption.signal)
          break
    mngr.close()
  if data_iter is not None:
    data_iter.close()
  if writer is not None:
    writer.close()
  return last


_HOW_IT_COMPUTES = ("model.dtype", "model.remat", "model.attention")  # not what the parameters are


def _check_same_model(c: config_validation.Config, workdir: str) -> None:
  """A workdir with checkpoints holds the model this config builds: one line naming the fields that differ
  (an old pixel-space run resumed with today's latent demo config, say), not a shape error in the restore."""
  if not os.path.isdir(os.path.join(workdir, checkpoints.CHECKPOINT_DIR)):
    return
  try:
    saved = checkpoints.saved_config(workdir)
  except FileNotFoundError:
    return
  flat = lambda model: {f"model.{k}": v for k, v in traverse_util.flatten_dict(model, sep=".").items()}
  now, then = flat(config_validation.to_dict(c.model)), flat(saved.model.to_dict())
  diff = [k for k in sorted(now.keys() & then.keys()) if k not in _HOW_IT_COMPUTES and now[k] != then[k]]
  if diff:
    was = " ".join(f"--config.{k}={then[k]}" for k in diff)
    raise errors.ConfigError(f"{workdir} holds a checkpoint of another model: " + ", ".join(
        f"{k}={then[k]!r} there, {now[k]!r} in this config" for k in diff) + f"; train into a new --workdir, or "
        f"continue that run with {was}" + (" --config.data.toy.autoencoder=''" if then.get("model.vae_downsample") == 1
                                           and c.data.toy.autoencoder else ""))


def _check_latents(c: config_validation.Config, path: str) -> None:
  """A latent dataset's latents have the model's size and channels (one line, not a shape error in the step)."""
  shape = records.ShotReader(path).index.latent_shape
  if shape is None or c.task == "autoencoder":
    return
  space = input_space.of(c)
  want = list(space.frame_shape)
  if list(shape) != want:
    raise errors.ConfigError(f"{path} holds {shape[0]}x{shape[1]} latents of {shape[2]} channels; config.data."
                             f"resolution={tuple(c.data.resolution)} with model.vae_downsample={space.downsample} "
                             f"and model.image_channels={space.channels} reads {want[0]}x{want[1]}x{want[2]}")


def _frames_per_example(c: config_validation.Config, path: str) -> int:
  """Frames the autoencoder sees per example: every frame of a shot of the dataset."""
  return records.ShotReader(path).index.num_frames if c.task == "autoencoder" else 1


def _init_from(path: str, state: dict, setup: train_step.Setup) -> dict:
  """The state with its MM-DiT parameters (and their EMA copy) from a converted FLUX folder."""
  target = checkpoints.abstract_like(state["params"]["dit"], setup.state_shardings["params"]["dit"])
  params_dir = os.path.join(os.path.abspath(path), "params")
  if not os.path.isdir(params_dir):
    raise errors.TrainingError(f"config.init_from={path!r}: no converted parameters there ({params_dir}); make them "
                               "with python -m cinema_jax.convert.flux --src CHECKPOINT --dst DIR")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      dit = ckptr.restore(params_dir, target)
  except (ValueError, KeyError) as e:  # a model of other sizes: Orbax names the mismatch
    raise errors.TrainingError(f"config.init_from={path!r} does not fit config.model: "
                               f"{str(e).splitlines()[0]}") from None
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
    _save_failed(mngr, f"checkpoint save at step {step}", e, c, final)


def _background_save_failed(mngr, c) -> None:
  """An async save whose background commit failed, reported at the next step as a failed save is (not
  at the next save or the end of the run, which may be hours away)."""
  try:
    mngr.check_for_errors()
  except Exception as e:  # pylint: disable=broad-except
    _save_failed(mngr, "the checkpoint save in the background", e, c, final=False)


def _save_failed(mngr, what: str, e: Exception, c, final: bool) -> None:
  """By config.checkpoint.on_save_error: a TrainingError (stop) or a logged error (retry at the next save)."""
  distributed.collective_failure(e)  # a save barrier that failed because another process died: exit now
  try:
    saved = mngr.latest_step()
  except Exception:  # pylint: disable=broad-except  (the directory itself may be what failed)
    saved = None
  detail = " ".join(str(e).split())[:300]
  msg = (f"{what} failed ({type(e).__name__}: {detail}); the last complete checkpoint "
         f"({'step ' + str(saved) if saved is not None else 'none'}) is untouched (a resume verifies it)")
  if c.checkpoint.on_save_error == "stop" or final:
    raise errors.TrainingError(msg + (" (this was the run's last save)" if final else "")) from None
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


def _sample_sheet_fn(c, workdir: str, setup: train_step.Setup, mesh):
  """A function that samples the first storyline and writes its storyboard, or None when disabled."""
  if not c.log.sample_every_steps or c.data.path or jax.process_index() != 0:
    return None
  from cinema_jax.sampling import keyframe_sampler  # pylint: disable=g-import-not-at-top
  with open(os.path.join(toy_dataset.root_for_config(c.data, workdir), "storylines.jsonl")) as f:
    story = json.loads(f.readline())
  clip = toy_clip.load(toy_clip.resolve(c.data, workdir)) if c.data.context_order == "image" else None
  sampler = keyframe_sampler.Sampler(c, setup.graphdef, clip=clip)

  def write(state, step: int, writer) -> None:
    params = state["ema"] if c.optimizer.ema_decay > 0 else state["params"]
    shots = story["captions"][: c.sample.max_shots or None]
    frames = sampler.keyframes(params, shots, seed=c.seed)
    out = os.path.join(workdir, "samples", f"step_{step:07d}.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    img = keyframe_sampler.storyboard_image(frames, shots, title=f"{story['title']} - step {step}")
    img.save(out)
    if writer is not None:
      writer.add_image("samples/storyboard", np.asarray(img), step, dataformats="HWC")
    logging.info("sample sheet: %s", out)

  return write
