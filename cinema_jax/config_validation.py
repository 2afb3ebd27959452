"""Config validation: every field a run reads is checked at start-up, with one-line errors that name the
field and what was expected (`validate`, called by the trainer and `--compile_only`)."""

from __future__ import annotations

import jax
import ml_collections

from cinema_jax import errors
from cinema_jax import input_space
from cinema_jax.models import keyframe
from cinema_jax.models import video
from cinema_jax.training import autoencoder
from cinema_jax.training import faults
from cinema_jax.training import objective


TASKS = ("keyframe", "video", "autoencoder")
# Numeric fields and their ranges [low, high] (None: unbounded): a value outside is a one-line error.
# (NaN passes: a NaN learning rate is how the tests make every update non-finite.)
RANGES = (
    ("batch_size", 1, None), ("sample.num_steps", 1, None), ("sample.max_shots", 0, None),
    ("sample.guidance", 0.0, None), ("optimizer.lr", 0.0, None), ("optimizer.warmup_steps", 0, None),
    ("optimizer.end_lr_fraction", 0.0, 1.0), ("optimizer.b1", 0.0, 1.0), ("optimizer.b2", 0.0, 1.0),
    ("optimizer.eps", 0.0, None), ("optimizer.weight_decay", 0.0, None), ("optimizer.grad_clip", 0.0, None),
    ("optimizer.ema_decay", 0.0, 1.0),
)


def _check_ranges(c: ml_collections.ConfigDict) -> None:
  for field, low, high in RANGES:
    value = c
    for key in field.split("."):
      value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise errors.ConfigError(f"config.{field}={value!r}: expected a number")
    if value < low or (high is not None and value > high):
      raise errors.ConfigError(f"config.{field}={value!r}: expected a number in "
                               f"[{low}, {'inf' if high is None else high}]")


def validate(c: ml_collections.ConfigDict, reads_data: bool = True) -> None:
  """One-line errors for config values the run cannot use (reads_data=False: compile only)."""
  m = c.model
  if not isinstance(c.total_steps, int) or c.total_steps < 1:
    raise errors.ConfigError(f"config.total_steps={c.total_steps!r}: expected an int >= 1")
  _check_ranges(c)
  h, w = c.data.resolution
  space = input_space.of(c)
  cell = space.cell
  if h % cell or w % cell:
    raise errors.ConfigError(f"config.data.resolution={tuple(c.data.resolution)}: not a multiple of "
                             f"model.vae_downsample * model.patch = {cell}")
  if m.text_encoder in ("tokens", "precomputed") and m.text_encoder != c.data.text_source:
    raise errors.ConfigError(f"config.model.text_encoder={m.text_encoder!r} needs config.data.text_source="
                             f"{m.text_encoder!r}")
  if reads_data and not space.pixels and not c.data.path and not c.data.toy.autoencoder:
    raise errors.ConfigError(f"config.data.path is empty: variant {c.variant!r} reads latents; give pre-computed "
                             "records, or the toy world's autoencoder (config.data.toy.autoencoder, made by python "
                             "-m cinema_jax.train --config=configs/autoencoder.py:toy --workdir=runs/ae)")
  if c.data.toy.autoencoder and space.pixels and c.task != "autoencoder":
    raise errors.ConfigError(f"config.data.toy.autoencoder={c.data.toy.autoencoder!r}: this model reads pixels "
                             "(model.vae_downsample=1)")
  if c.objective.prediction not in ("v", "x"):
    raise errors.ConfigError(f"config.objective.prediction={c.objective.prediction!r}: expected 'v' or 'x'")
  if c.objective.loss_pairs not in objective.LOSS_PAIRS:
    raise errors.ConfigError(f"config.objective.loss_pairs={c.objective.loss_pairs!r}: expected one of "
                             f"{', '.join(objective.LOSS_PAIRS)}")
  if c.data.memory_levels == "goldenmem" and c.data.goldenmem.resize == "pixels" and not space.pixels:
    raise errors.ConfigError("config.data.goldenmem.resize='pixels': this model reads pre-computed latents, so "
                             "frames can only be resized as latents (resize='latents')")
  lo, hi = c.objective.context_t
  if not 0 <= lo <= hi < 1:
    raise errors.ConfigError(f"config.objective.context_t={tuple(c.objective.context_t)}: expected 0 <= a <= b < 1")
  lo, hi = c.sample.context_t
  if not 0 <= lo <= hi < 1:
    raise errors.ConfigError(f"config.sample.context_t={tuple(c.sample.context_t)}: expected 0 <= a <= b < 1")
  _validate_curriculum(c)
  if not isinstance(c.optimizer.offload, bool):
    raise errors.ConfigError(f"config.optimizer.offload={c.optimizer.offload!r}: expected True or False")
  if c.optimizer.offload and "pinned_host" not in {m.kind for m in jax.devices()[0].addressable_memories()}:
    raise errors.ConfigError(f"config.optimizer.offload=True: {jax.devices()[0].device_kind} devices have no "
                             "pinned host memory to offload to")
  if not isinstance(c.sample.kv_cache, bool):
    raise errors.ConfigError(f"config.sample.kv_cache={c.sample.kv_cache!r}: expected True or False")
  if c.sample.mode not in ("autoregressive", "joint"):
    raise errors.ConfigError(f"config.sample.mode={c.sample.mode!r}: expected 'autoregressive' or 'joint'")
  if c.nonfinite.policy not in faults.NONFINITE_POLICIES:
    raise errors.ConfigError(f"config.nonfinite.policy={c.nonfinite.policy!r}: expected one of "
                             f"{', '.join(faults.NONFINITE_POLICIES)}")
  if not (isinstance(c.nonfinite.max_consecutive, int) and c.nonfinite.max_consecutive >= 1):
    raise errors.ConfigError(f"config.nonfinite.max_consecutive={c.nonfinite.max_consecutive!r}: "
                             "expected an int >= 1")
  if c.checkpoint.on_save_error not in faults.SAVE_ERROR_POLICIES:
    raise errors.ConfigError(f"config.checkpoint.on_save_error={c.checkpoint.on_save_error!r}: expected one of "
                             f"{', '.join(faults.SAVE_ERROR_POLICIES)}")
  for section, field in (("checkpoint", "every_steps"), ("log", "every_steps")):
    if c[section][field] < 1:
      raise errors.ConfigError(f"config.{section}.{field}={c[section][field]!r}: expected an int >= 1")
  if c.task not in TASKS:
    raise errors.ConfigError(f"config.task={c.task!r}: expected one of {', '.join(TASKS)}")
  if c.task == "video" and c.log.sample_every_steps:
    raise errors.ConfigError(f"config.log.sample_every_steps={c.log.sample_every_steps}: in-training sample sheets "
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
    raise errors.ConfigError(f"config.{e}" if str(e).startswith("model.") else str(e)) from None


def _validate_curriculum(c: ml_collections.ConfigDict) -> None:
  pairs, steps = tuple(c.curriculum.pairs), tuple(c.curriculum.steps)
  if not pairs and not steps:
    return
  if len(pairs) != len(steps) or not all(isinstance(x, int) and x >= 1 for x in pairs + steps):
    raise errors.ConfigError(f"config.curriculum: pairs={pairs} and steps={steps} must be equally long lists of "
                             "ints >= 1")
  if sum(steps) != c.total_steps:
    raise errors.ConfigError(f"config.curriculum.steps={steps} sum to {sum(steps)}, config.total_steps is "
                             f"{c.total_steps}")
  if pairs[-1] != c.data.num_pairs:
    raise errors.ConfigError(f"config.curriculum.pairs={pairs} ends at {pairs[-1]} pairs, config.data.num_pairs "
                             f"is {c.data.num_pairs} (the model's final window, which sampling uses)")
