"""configs/keyframe.py: variants build and validate; flux_dev is FLUX.1-dev's size, checked abstractly."""

import jax
import pytest

from cinema_jax import config_validation
from cinema_jax import input_space
from cinema_jax.models import keyframe
from configs import keyframe as keyframe_config


@pytest.mark.parametrize("variant", ["demo", "demo_long", "tiny"])
def test_toy_variants_validate(variant):
  config_validation.validate(keyframe_config.get_config(variant))


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
  config_validation.validate(c)
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
  config_validation.validate(c)


def test_tiny_reads_pixels():  # the benchmarks' configs are the demo's (benchmarks/train_step.py)
  assert input_space.of(keyframe_config.get_config("tiny")).pixels  # tests need no trained autoencoder
  assert not keyframe_config.get_config("tiny").data.toy.autoencoder
