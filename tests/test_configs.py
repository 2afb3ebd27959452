"""configs/keyframe.py: variants build and validate; flux_dev is FLUX.1-dev's size, checked abstractly; the
Config that config_validation.load makes of them: frozen, typed sections that check their own fields."""

import dataclasses
import json

import jax
import pytest

from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import input_space
from cinema_jax.models import keyframe
from configs import keyframe as keyframe_config


@pytest.mark.parametrize("variant", ["demo", "demo_long", "tiny"])
def test_toy_variants_validate(variant):
  config_validation.load(keyframe_config.get_config(variant))


def test_flux_dev_has_the_flux1_dev_parameter_count():
  c = keyframe_config.get_config("flux_dev")
  assert keyframe_config.get_config() .variant == "flux_dev"  # the default is the paper-scale model
  model = keyframe.abstract(c)  # jax.eval_shape: no memory is allocated
  count = sum(x.size for x in jax.tree.leaves(__import__("flax").nnx.state(model)))
  # BFL's flux1-dev.safetensors holds 11,901,408,320 parameters; same layout, same count.
  assert count == 11_901_408_320
  assert c.model.hidden == 3072 and c.model.num_heads == 24
  assert (c.model.depth_double, c.model.depth_single) == (19, 38)
  assert (c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.grad_clip) == (4e-4, 500, 1.0)


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    keyframe_config.get_config("huge")


@pytest.mark.parametrize("name,arg,field,value", [
    ("goldenmem", "on,16", "data.memory_levels", "goldenmem"), ("goldenmem", "off,48", "data.num_pairs", 48),
    ("goldenmem", "on,16,newest", "objective.loss_pairs", "newest_group"),
    ("retrieval", "recent", "data.context_order", "chronological"), ("retrieval", "mix", "data.retrieval.recency", 0.3),
    ("retrieval", "image", "data.context_order", "image"),
    ("context_noise", "0-0", "sample.context_t", (0.0, 0.0)), ("context_noise", "500-1000", "objective.context_t",
                                                               (0.5, 0.999)),
    ("curriculum", "on", "curriculum.pairs", (1, 4, 16)), ("curriculum", "off", "curriculum.pairs", ())])
def test_ablations_validate_and_change_what_they_say(name, arg, field, value):
  module = __import__(f"configs.ablations.{name}", fromlist=["get_config"])
  c = module.get_config(arg)
  config_validation.load(c)
  got = c
  for part in field.split("."):
    got = got[part]
  assert got == value
  base = keyframe_config.get_config("demo_long").to_dict()
  changed = {k for k, v in c.to_dict().items() if v != base[k]}
  assert changed <= {"data", "objective", "sample", "curriculum", "batch_size"}, changed
  with pytest.raises(ValueError, match=f"configs/ablations/{name}.py: arg 'bogus'"):
    module.get_config("bogus")


@pytest.mark.parametrize("name,arg", [
    ("keyframe", "demo"), ("keyframe", "demo_long"), ("video", "demo"), ("ablations.goldenmem", "on,32"),
    ("ablations.retrieval", "image"), ("ablations.context_noise", "0-0"), ("ablations.curriculum", "on")])
def test_demo_and_ablation_configs_read_the_toy_autoencoders_latents(name, arg):
  c = __import__(f"configs.{name}", fromlist=["get_config"]).get_config(arg)
  space = input_space.of(c)
  assert not space.pixels and space.frame_shape == (16, 32, 4) and space.grid == (4, 8)  # GoldenMem's 3 levels
  assert c.data.toy.autoencoder == keyframe_config.TOY_AUTOENCODER
  config_validation.load(c)


def test_tiny_reads_pixels():  # the benchmarks' configs are the demo's (benchmarks/train_step.py)
  assert input_space.of(keyframe_config.get_config("tiny")).pixels  # tests need no trained autoencoder
  assert not keyframe_config.get_config("tiny").data.toy.autoencoder


def test_load_gives_frozen_typed_sections():
  raw = keyframe_config.get_config("tiny")
  c = config_validation.load(raw)
  assert isinstance(c.data, config_validation.Data) and isinstance(c.model.text, config_validation.TextEncoder)
  assert c.model.video is None and c.model.autoencoder is None  # the video and autoencoder configs' sections
  assert isinstance(c.optimizer.lr, float) and isinstance(c.data.resolution, tuple)
  # what the command line and JSON give: an int where a float goes, a list where a tuple goes
  typed = config_validation.replace(c, {"optimizer.lr": 1, "data.resolution": [16, 32]})
  assert type(typed.optimizer.lr) is float and typed.data.resolution == (16, 32)
  assert type(typed.data.resolution) is tuple
  with pytest.raises(dataclasses.FrozenInstanceError):
    c.data.num_pairs = 8
  assert config_validation.load(raw) == c and hash(config_validation.load(raw)) == hash(c)  # jit keys on values
  # what checkpoints save (JSON: lists) loads back to the same config
  assert config_validation.load(json.loads(json.dumps(config_validation.to_dict(c)))) == c
  for module, variant in (("video", "tiny"), ("autoencoder", "tiny")):
    other = config_validation.load(__import__(f"configs.{module}", fromlist=["x"]).get_config(variant))
    assert getattr(other.model, module) is not None
    assert config_validation.load(config_validation.to_dict(other)) == other


@pytest.mark.parametrize("field,value,message", [
    ("data.num_pairs", 2.5, r"config.data.num_pairs=2.5: expected an int$"),
    ("data.num_pairs", True, r"config.data.num_pairs=True: expected an int$"),
    ("optimizer.lr", "fast", r"config.optimizer.lr='fast': expected a number$"),
    ("sample.kv_cache", 1, r"config.sample.kv_cache=1: expected True or False$"),
    ("data.resolution", (16, 32, 3), r"config.data.resolution=\(16, 32, 3\): expected a tuple of 2"),
    ("data.goldenmem.group_size", "halves", r"config.data.goldenmem.group_size='halves': expected an int >= 1 or "),
    ("data.num_epochs", 0, r"config.data.num_epochs=0: expected None or an int >= 1$"),
    ("model.remat", "some", r"config.model.remat='some': expected one of"),
    ("mesh.dcn.data", 0, r"config.mesh.dcn.data=0: expected an int >= 1$"),
    ("checkpoint.keep", 0, r"config.checkpoint.keep=0: expected an int >= 1$"),
])
def test_each_section_checks_its_fields_in_one_line(field, value, message):
  c = config_validation.load(keyframe_config.get_config("tiny"))
  with pytest.raises(errors.ConfigError, match=message):
    config_validation.replace(c, {field: value})


def test_unknown_and_missing_fields_are_named():
  raw = keyframe_config.get_config("tiny")
  with raw.unlocked():
    raw.data.num_pair = 4  # a typo
  with pytest.raises(errors.ConfigError, match=r"^config.data.num_pair: unknown field \(the fields of config.data "
                     r"are path, toy, "):
    config_validation.load(raw)
  saved = config_validation.to_dict(config_validation.load(keyframe_config.get_config("tiny")))
  del saved["sample"]["guidance"]
  with pytest.raises(errors.ConfigError, match=r"^config.sample.guidance: missing$"):
    config_validation.load(saved)
  with pytest.raises(errors.ConfigError, match=r"^config.sample.steps: no such field$"):
    config_validation.replace(config_validation.load(keyframe_config.get_config("tiny")), {"sample.steps": 4})


def test_the_loop_takes_only_a_loaded_config(tmp_path):
  from cinema_jax.training import loop  # pylint: disable=g-import-not-at-top
  with pytest.raises(TypeError, match="train_and_evaluate takes a config_validation.Config"):
    loop.train_and_evaluate(keyframe_config.get_config("tiny"), str(tmp_path))
  assert not list(tmp_path.iterdir())


def test_curriculum_stages_are_the_config_at_each_window():
  from cinema_jax.training import train_step  # pylint: disable=g-import-not-at-top
  raw = keyframe_config.get_config("tiny")
  raw.curriculum.update(pairs=(1, 2, 3), steps=(1, 1, 2))
  c = config_validation.load(raw)
  plan = train_step.stages(c)
  assert [(s.first, s.last, s.config.data.num_pairs) for s in plan] == [(1, 1, 1), (2, 2, 2), (3, 4, 3)]
  assert all(s.config.model == c.model and s.config.optimizer == c.optimizer for s in plan)
