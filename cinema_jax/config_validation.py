"""The run's config as frozen, typed sections that validate themselves.

A config file (configs/*.py) is an ml_collections.ConfigDict: what users write and override from the
command line. `load` converts it once, at start-up, into a `Config`: every field is checked for its type
(ints stay ints, lists become tuples) and range, each section checks its own fields and `Config` the
fields that depend on each other, all with one-line `errors.ConfigError`s that name the field and what was
expected. The code below the commands reads only `Config`s: frozen and hashable, so a config cannot change
after a sampler or a step was built from it, and jit can key on it. `replace` derives a changed copy (a
curriculum stage, sampling overrides), validated again.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar, Mapping

import jax
import ml_collections

from cinema_jax import errors
from cinema_jax import retrieval
from cinema_jax.training import faults

# The checks that need model code import it when they run: this module imports only leaf modules of the
# project, so every module (the models and the data pipeline too) can take a Config.


TASKS = ("keyframe", "video", "autoencoder")


@dataclasses.dataclass(frozen=True)
class Section:
  """A frozen config section at `PATH` (as in config.PATH.field): types checked, then `check()`."""

  PATH: ClassVar[str] = ""

  def __post_init__(self):
    for f in dataclasses.fields(self):
      object.__setattr__(self, f.name, _typed(getattr(self, f.name), _hints(type(self))[f.name], self, f.name))
    self.check()

  def check(self) -> None:
    """One-line ConfigErrors for this section's own fields (types are already checked)."""

  def fail(self, field: str, expected: str) -> typing.NoReturn:
    raise errors.ConfigError(f"{_where(self, field)}={getattr(self, field)!r}: expected {expected}")

  def at_least(self, low: float, *fields: str) -> None:
    for field in fields:
      value = getattr(self, field)
      if value < low:
        self.fail(field, f"{'an int' if isinstance(value, int) else 'a number'} >= {low}")

  def within(self, low: float, high: float, *fields: str) -> None:
    for field in fields:
      value = getattr(self, field)
      if value == value and not low <= value <= high:  # (NaN passes, as in at_least)
        self.fail(field, f"a number in [{low}, {high}]")

  def one_of(self, options, *fields: str) -> None:
    for field in fields:
      if getattr(self, field) not in options:
        self.fail(field, f"one of {', '.join(map(repr, options))}")


@functools.cache
def _hints(cls) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _where(section: Section | type[Section], field: str) -> str:
  return f"config.{section.PATH}.{field}" if section.PATH else f"config.{field}"


def _typed(value: Any, tp: Any, section: Section, field: str) -> Any:
  """value as type tp (an int where a float goes, a tuple for a list), or a ConfigError naming the field."""
  out = _as_type(value, tp)
  if out is _WRONG:
    raise errors.ConfigError(f"{_where(section, field)}={value!r}: expected {_describe(tp)}")
  return out


_WRONG = object()


def _as_type(value: Any, tp: Any) -> Any:
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (types.UnionType, typing.Union):
    for arg in args:
      out = _as_type(value, arg)
      if out is not _WRONG:
        return out
    return _WRONG
  if tp is type(None):
    return value if value is None else _WRONG
  if tp is bool:
    return value if isinstance(value, bool) else _WRONG
  if tp is int:
    return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
  if tp is float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _WRONG
  if tp is str:
    return value if isinstance(value, str) else _WRONG
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      return _WRONG
    kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
    if len(kinds) != len(value):
      return _WRONG
    out = tuple(_as_type(v, k) for v, k in zip(value, kinds))
    return _WRONG if any(v is _WRONG for v in out) else out
  if isinstance(tp, type) and issubclass(tp, Section):
    return value if isinstance(value, tp) else _WRONG
  raise TypeError(f"config type {tp!r} is not supported")


def _describe(tp: Any) -> str:
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (types.UnionType, typing.Union):
    return " or ".join(_describe(a) for a in args)
  if origin is tuple:
    if len(args) == 2 and args[1] is Ellipsis:
      return f"a tuple of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return f"a tuple of {len(args)} ({', '.join(_describe(a) for a in args)})"
  names = {bool: "True or False", int: "an int", float: "a number", str: "a string", type(None): "None"}
  return names.get(tp, f"a section ({getattr(tp, '__name__', tp)})")


# -- the sections ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Toy(Section):
  PATH: ClassVar[str] = "data.toy"
  num_movies: int
  seed: int
  num_frames: int
  min_shots: int
  max_shots: int
  autoencoder: str

  def check(self):
    self.at_least(1, "num_movies", "num_frames", "min_shots")
    self.at_least(0, "seed")  # numpy's generators take no negative seed
    if self.max_shots < self.min_shots:
      self.fail("max_shots", f"an int >= data.toy.min_shots={self.min_shots}")


@dataclasses.dataclass(frozen=True)
class Retrieval(Section):
  PATH: ClassVar[str] = "data.retrieval"
  encoder: str
  embedding: str
  recency: float

  def check(self):
    if self.encoder != "words":
      self.fail("encoder", "'words' (context_order 'text' embeds captions as words; 'image' uses the records' "
                "CLIP embeddings or ToyCLIP)")
    self.within(0.0, 1.0, "recency")


@dataclasses.dataclass(frozen=True)
class GoldenMem(Section):
  PATH: ClassVar[str] = "data.goldenmem"
  group_size: int | str
  resize: str
  phi: float

  def check(self):
    if not (self.group_size == "quarters" or (isinstance(self.group_size, int) and self.group_size >= 1)):
      self.fail("group_size", "an int >= 1 or 'quarters'")
    self.one_of(("pixels", "latents"), "resize")
    if not self.phi > 1:
      self.fail("phi", "a number > 1")


MEMORY_LEVELS = ("none", "goldenmem")


@dataclasses.dataclass(frozen=True)
class Data(Section):
  PATH: ClassVar[str] = "data"
  path: str
  toy: Toy
  resolution: tuple[int, int]
  num_pairs: int
  max_stride: int
  max_overlap: float
  seed: int
  num_epochs: int | None
  text_source: str
  tokenizer: str
  text_len: int
  text_convention: str
  load_frames: bool
  context_order: str
  retrieval: Retrieval
  memory_levels: str
  goldenmem: GoldenMem
  worker_count: int
  worker_buffer_size: int
  bad_records: str
  max_bad_fraction: float
  bad_records_min_seen: int

  def check(self):
    if min(self.resolution) < 1:
      self.fail("resolution", "(height, width) in pixels")
    self.at_least(1, "num_pairs", "max_stride", "text_len", "worker_buffer_size", "bad_records_min_seen")
    self.at_least(0, "worker_count", "seed")
    if not 0 <= self.max_overlap < 1:
      self.fail("max_overlap", "a fraction in [0, 1)")
    if self.num_epochs is not None and self.num_epochs < 1:
      self.fail("num_epochs", "None or an int >= 1")
    if self.text_source == "bytes":
      raise errors.ConfigError("config.data.text_source='bytes': byte tokens gave way to the toy world's word tokens "
                               "(text_source='tokens'); a byte-token model cannot be resumed or sampled: retrain it "
                               "with today's configs")
    self.one_of(("tokens", "precomputed"), "text_source")
    self.one_of(("flux", "masked"), "text_convention")
    self.one_of(retrieval.ORDERS, "context_order")
    self.one_of(MEMORY_LEVELS, "memory_levels")
    self.one_of(("error", "skip"), "bad_records")
    self.within(0.0, 1.0, "max_bad_fraction")


@dataclasses.dataclass(frozen=True)
class TextEncoder(Section):
  PATH: ClassVar[str] = "model.text"
  width: int
  depth: int
  num_heads: int
  vocab_size: int
  vec_dim: int

  def check(self):
    self.at_least(1, "width", "depth", "num_heads", "vocab_size", "vec_dim")


@dataclasses.dataclass(frozen=True)
class VideoModel(Section):
  """The video model's own fields (configs/video.py; models/video.validate checks what they need of the
  rest of the config)."""
  PATH: ClassVar[str] = "model.video"
  num_frames: int
  patch_t: int
  shot_attention: str
  keyframes: str
  captions: str
  from_keyframe: bool
  shot_gap: int


@dataclasses.dataclass(frozen=True)
class AutoencoderModel(Section):
  PATH: ClassVar[str] = "model.autoencoder"
  block_out_channels: tuple[int, ...]
  layers_per_block: int
  latent_channels: int
  norm_num_groups: int
  mid_block_attention: bool
  kernel_grad_chunk: int
  edge_weight: float
  corner_weight: float
  border_weight: float
  gradient_weight: float
  l2_weight: float
  kl_weight: float
  frames_per_shot: int

  def check(self):
    if not self.block_out_channels or min(self.block_out_channels) < 1:
      self.fail("block_out_channels", "a non-empty tuple of ints >= 1")
    self.at_least(1, "layers_per_block", "latent_channels", "norm_num_groups")
    self.at_least(0, "kernel_grad_chunk", "frames_per_shot", "edge_weight", "corner_weight", "border_weight",
                  "gradient_weight", "l2_weight", "kl_weight")


@dataclasses.dataclass(frozen=True)
class Model(Section):
  PATH: ClassVar[str] = "model"
  hidden: int
  num_heads: int
  depth_double: int
  depth_single: int
  mlp_ratio: float
  axes_dim: tuple[int, ...]
  theta: float
  qkv_bias: bool
  guidance_embed: bool
  image_channels: int
  vae_downsample: int
  patch: int
  text_encoder: str
  context_dim: int
  vec_dim: int
  text: TextEncoder
  dtype: str
  param_dtype: str
  remat: str
  attention: str
  video: VideoModel | None = None  # configs/video.py
  autoencoder: AutoencoderModel | None = None  # configs/autoencoder.py

  def check(self):
    self.at_least(1, "image_channels", "vae_downsample", "patch")
    if self.text_encoder == "bytes":
      raise errors.ConfigError("config.model.text_encoder='bytes': byte tokens gave way to the toy world's word "
                               "tokens (text_encoder='tokens'); a byte-token model cannot be resumed or sampled: "
                               "retrain it")
    self.one_of(("tokens", "precomputed"), "text_encoder")
    self.one_of(("float32", "bfloat16"), "dtype", "param_dtype")


@dataclasses.dataclass(frozen=True)
class Objective(Section):
  PATH: ClassVar[str] = "objective"
  t_mean: float
  t_std: float
  prediction: str
  shift: bool
  loss_pairs: str
  context_t: tuple[float, float]
  caption_dropout: float
  guidance: float

  def check(self):
    from cinema_jax.training import objective  # pylint: disable=import-outside-toplevel
    self.one_of(("v", "x"), "prediction")
    self.one_of(objective.LOSS_PAIRS, "loss_pairs")
    _check_t_range(self, "context_t")
    self.within(0.0, 1.0, "caption_dropout")


def _check_t_range(section: Section, field: str) -> None:
  lo, hi = getattr(section, field)
  if not 0 <= lo <= hi < 1:
    section.fail(field, "(a, b) with 0 <= a <= b < 1")


@dataclasses.dataclass(frozen=True)
class Optimizer(Section):
  PATH: ClassVar[str] = "optimizer"
  lr: float
  warmup_steps: int
  end_lr_fraction: float
  b1: float
  b2: float
  eps: float
  weight_decay: float
  grad_clip: float
  ema_decay: float
  offload: bool

  def check(self):
    # (NaN passes: a NaN learning rate is how the tests make every update non-finite.)
    self.at_least(0, "lr", "warmup_steps", "eps", "weight_decay", "grad_clip")
    self.within(0.0, 1.0, "end_lr_fraction", "b1", "b2", "ema_decay")


@dataclasses.dataclass(frozen=True)
class Curriculum(Section):
  PATH: ClassVar[str] = "curriculum"
  pairs: tuple[int, ...]
  steps: tuple[int, ...]

  def check(self):
    if len(self.pairs) != len(self.steps) or any(x < 1 for x in self.pairs + self.steps):
      raise errors.ConfigError(f"config.curriculum: pairs={self.pairs} and steps={self.steps} must be equally long "
                               "lists of ints >= 1")


@dataclasses.dataclass(frozen=True)
class MeshAcross(Section):
  PATH: ClassVar[str] = "mesh.dcn"
  data: int = 1
  fsdp: int = 1
  context: int = 1
  tensor: int = 1

  def check(self):
    self.at_least(1, "data", "fsdp", "context", "tensor")


@dataclasses.dataclass(frozen=True)
class Mesh(Section):
  """Devices per axis within a slice (one may be -1: the rest); dcn: across slices or hosts."""
  PATH: ClassVar[str] = "mesh"
  data: int
  fsdp: int
  context: int
  tensor: int
  dcn: MeshAcross = MeshAcross()


@dataclasses.dataclass(frozen=True)
class Checkpoint(Section):
  PATH: ClassVar[str] = "checkpoint"
  every_steps: int
  keep: int
  async_save: bool
  on_save_error: str

  def check(self):
    self.at_least(1, "every_steps", "keep")
    self.one_of(faults.SAVE_ERROR_POLICIES, "on_save_error")


@dataclasses.dataclass(frozen=True)
class Nonfinite(Section):
  PATH: ClassVar[str] = "nonfinite"
  policy: str
  max_consecutive: int

  def check(self):
    self.one_of(faults.NONFINITE_POLICIES, "policy")
    self.at_least(1, "max_consecutive")


@dataclasses.dataclass(frozen=True)
class Log(Section):
  PATH: ClassVar[str] = "log"
  every_steps: int
  sample_every_steps: int
  tensorboard: bool

  def check(self):
    self.at_least(1, "every_steps")
    self.at_least(0, "sample_every_steps")


@dataclasses.dataclass(frozen=True)
class Encoders(Section):
  PATH: ClassVar[str] = "sample.encoders"
  vae: str
  t5: str
  clip: str
  retrieval_clip: str
  t5_on_host: bool
  vae_tile: int

  def check(self):
    self.at_least(0, "vae_tile")


@dataclasses.dataclass(frozen=True)
class Sample(Section):
  PATH: ClassVar[str] = "sample"
  num_steps: int
  guidance: float
  mode: str
  max_shots: int
  context_t: tuple[float, float]
  kv_cache: bool
  param_dtype: str
  encoders: Encoders

  def check(self):
    self.at_least(1, "num_steps")
    self.at_least(0, "max_shots", "guidance")
    self.one_of(("autoregressive", "joint"), "mode")
    _check_t_range(self, "context_t")
    self.one_of(("auto", "float32", "bfloat16"), "param_dtype")


@dataclasses.dataclass(frozen=True)
class Config(Section):
  """A whole run's config; `check` covers the fields that depend on each other."""
  variant: str
  task: str
  seed: int
  init_from: str
  total_steps: int
  batch_size: int
  data: Data
  model: Model
  objective: Objective
  optimizer: Optimizer
  curriculum: Curriculum
  mesh: Mesh
  checkpoint: Checkpoint
  nonfinite: Nonfinite
  log: Log
  sample: Sample

  def check(self):
    from cinema_jax import input_space  # pylint: disable=import-outside-toplevel
    from cinema_jax.models import keyframe  # pylint: disable=import-outside-toplevel
    from cinema_jax.models import video  # pylint: disable=import-outside-toplevel
    from cinema_jax.training import autoencoder  # pylint: disable=import-outside-toplevel
    self.one_of(TASKS, "task")
    self.at_least(1, "total_steps", "batch_size")
    m, d = self.model, self.data
    if (m.video is not None) != (self.task == "video") or (m.autoencoder is not None) != (self.task == "autoencoder"):
      raise errors.ConfigError(f"config.task={self.task!r}: config.model.video is for task 'video' and "
                               "config.model.autoencoder for task 'autoencoder' (configs/video.py, "
                               "configs/autoencoder.py)")
    space = input_space.of(self)
    h, w = d.resolution
    if h % space.cell or w % space.cell:
      raise errors.ConfigError(f"config.data.resolution={d.resolution}: not a multiple of "
                               f"model.vae_downsample * model.patch = {space.cell}")
    if m.text_encoder != d.text_source:
      raise errors.ConfigError(f"config.model.text_encoder={m.text_encoder!r} needs config.data.text_source="
                               f"{m.text_encoder!r}")
    if d.toy.autoencoder and space.pixels and self.task != "autoencoder":
      raise errors.ConfigError(f"config.data.toy.autoencoder={d.toy.autoencoder!r}: this model reads pixels "
                               "(model.vae_downsample=1)")
    if d.memory_levels == "goldenmem" and d.goldenmem.resize == "pixels" and not space.pixels:
      raise errors.ConfigError("config.data.goldenmem.resize='pixels': this model reads pre-computed latents, so "
                               "frames can only be resized as latents (resize='latents')")
    cur = self.curriculum
    if cur.pairs and sum(cur.steps) != self.total_steps:
      raise errors.ConfigError(f"config.curriculum.steps={cur.steps} sum to {sum(cur.steps)}, config.total_steps "
                               f"is {self.total_steps}")
    if cur.pairs and cur.pairs[-1] != d.num_pairs:
      raise errors.ConfigError(f"config.curriculum.pairs={cur.pairs} ends at {cur.pairs[-1]} pairs, "
                               f"config.data.num_pairs is {d.num_pairs} (the model's final window, which sampling "
                               "uses)")
    if self.task == "video" and self.log.sample_every_steps:
      raise errors.ConfigError(f"config.log.sample_every_steps={self.log.sample_every_steps}: in-training sample "
                               "sheets are the keyframe model's; sample the video model with python -m "
                               "cinema_jax.sample")
    try:
      if self.task == "autoencoder":
        autoencoder.validate(self)
        return
      if self.task == "video":
        video.validate(self)
      dit, text = keyframe.configs(self)
      dit.validate()
      if text is not None:
        text.validate()
    except ValueError as e:
      raise errors.ConfigError(f"config.{e}" if str(e).startswith("model.") else str(e)) from None


# -- conversion -----------------------------------------------------------------------------------------


def load(c: ml_collections.ConfigDict | Mapping[str, Any], reads_data: bool = True) -> Config:
  """The frozen, validated Config of a ConfigDict (or of the nested dict a checkpoint saved).

  reads_data=False: a run that reads no training data (--compile_only, sampling) need not say where it is.
  """
  if type(c).__name__ == "_ErrorConfig":  # ml_collections' stand-in for a config file that failed to load
    try:
      c.to_dict()
    except IOError as e:
      cause = e.__cause__ or e
      raise errors.ConfigError(f"--config: the config file cannot be loaded ({' '.join(str(cause).split())})") from None
  raw = c.to_dict() if isinstance(c, ml_collections.ConfigDict) else c
  config = load_section(Config, raw)
  if reads_data:
    _check_data_source(config)
  if config.optimizer.offload:
    memories = {m.kind for m in jax.devices()[0].addressable_memories()}
    if "pinned_host" not in memories:
      raise errors.ConfigError(f"config.optimizer.offload=True: {jax.devices()[0].device_kind} devices have no "
                               "pinned host memory to offload to")
  return config


def require(c: Any, who: str) -> None:
  """TypeError unless c is a loaded Config: what takes one keys compiled programs on it or keeps it."""
  if not isinstance(c, Config):
    raise TypeError(f"{who} takes a config_validation.Config (config_validation.load of the config file's "
                    f"ConfigDict), not a {type(c).__name__}")


def _check_data_source(c: Config) -> None:
  from cinema_jax import input_space  # pylint: disable=import-outside-toplevel
  if not input_space.of(c).pixels and not c.data.path and not c.data.toy.autoencoder:
    raise errors.ConfigError(f"config.data.path is empty: variant {c.variant!r} reads latents; give pre-computed "
                             "records, or the toy world's autoencoder (config.data.toy.autoencoder, made by python "
                             "-m cinema_jax.train --config=configs/autoencoder.py:toy --workdir=runs/ae)")


def load_section(cls: type[Section], raw: Mapping[str, Any]) -> Section:
  """The section cls of a ConfigDict or nested dict (load: the whole Config)."""
  if isinstance(raw, ml_collections.ConfigDict):
    raw = raw.to_dict()
  where = f"config.{cls.PATH}" if cls.PATH else "config"
  if not isinstance(raw, Mapping):
    raise errors.ConfigError(f"{where}={raw!r}: expected a section of fields")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(raw) - set(fields))
  if unknown:
    raise errors.ConfigError(f"{where}.{unknown[0]}: unknown field (the fields of {where} are {', '.join(fields)})")
  kwargs = {}
  for name, f in fields.items():
    if name not in raw:
      if f.default is dataclasses.MISSING:
        raise errors.ConfigError(f"{where}.{name}: missing")
      continue
    value, section = raw[name], _section_type(_hints(cls)[name])
    kwargs[name] = load_section(section, value) if section is not None and value is not None else value
  return cls(**kwargs)


def _section_type(tp: Any) -> type[Section] | None:
  for arg in (tp, *typing.get_args(tp)):
    if isinstance(arg, type) and issubclass(arg, Section):
      return arg
  return None


def to_dict(c: Section) -> dict[str, Any]:
  """The nested dict of a Config (what checkpoints save, `load` reads back); absent sections left out."""
  out = {}
  for f in dataclasses.fields(c):
    value = getattr(c, f.name)
    if isinstance(value, Section):
      out[f.name] = to_dict(value)
    elif value is not None or _section_type(_hints(type(c))[f.name]) is None:
      out[f.name] = value
  return out


def replace(c: Config, updates: Mapping[str, Any]) -> Config:
  """c with fields changed by dotted path ({"data.num_pairs": 16, "sample.guidance": 1.0}), validated as
  `load` validates."""
  changed = to_dict(c)
  for path, value in updates.items():
    *parents, field = path.split(".")
    node = changed
    for key in parents:
      if not isinstance(node.get(key), dict):
        raise errors.ConfigError(f"config.{path}: no such field")
      node = node[key]
    if field not in node:
      raise errors.ConfigError(f"config.{path}: no such field")
    node[field] = value
  return load_section(Config, changed)
