"""cinema_jax/memory.py: sizes that cannot fit are refused in one line before any work."""

import pytest

from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import memory
from configs import keyframe as keyframe_config


def _tiny(**data):
  c = keyframe_config.get_config("tiny")
  c.data.update(data)
  return config_validation.load(c, reads_data=False)


def test_a_step_that_cannot_fit_is_refused_and_the_tiny_one_is_not(monkeypatch):
  monkeypatch.setattr(memory, "host_available_bytes", lambda: 8 * 2**30)
  memory.check_training_step(_tiny())
  assert memory.training_step_bytes(_tiny()) < 2**30
  big = _tiny(resolution=(16384, 32768))
  # 33.5M tokens per keyframe (patch 4): the block inputs alone are far beyond 8 GiB
  assert memory.training_step_bytes(big) > 50 * 2**30
  with pytest.raises(errors.ConfigError, match=r"^config\.data\.resolution=\(16384, 32768\) with batch_size=2 and "
                     r"num_pairs=3: a training step needs at least [\d.]+ GiB .* have 8\.0 GiB; lower the resolution"):
    memory.check_training_step(big)


def test_the_bound_grows_with_the_batch_and_the_pairs():
  c = _tiny()
  more_pairs = _tiny(num_pairs=6)
  assert memory.training_step_bytes(more_pairs) > memory.training_step_bytes(c)


def test_frames_too_large_to_render_are_refused(monkeypatch):
  monkeypatch.setattr(memory, "host_available_bytes", lambda: 2**30)
  memory.check_frames("toy world", 8, 32, 64)
  with pytest.raises(errors.ConfigError, match=r"^toy world: 8 frame\(s\) of 60000x60000 need about [\d.]+ GiB in "
                     r"memory to render, this machine has 1\.0 GiB available$"):
    memory.check_frames("toy world", 8, 60000, 60000)
