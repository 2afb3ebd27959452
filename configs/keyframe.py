"""Keyframe-planning config: `--config=configs/keyframe.py[:VARIANT]`, VARIANT in {demo, tiny}.

  demo  the README's quickstart: the toy world at 32x64, 8 pairs per example
  tiny  the smallest end-to-end setting, for tests and smoke runs

Override any field from the command line: `--config.data.num_pairs=16`.
"""

import ml_collections

from data_pipelines import pipeline

VARIANTS = ("demo", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "demo"
  if variant not in VARIANTS:
    raise ValueError(f"configs/keyframe.py: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.seed = 0
  c.data = pipeline.default_config()
  if variant == "tiny":
    c.data.toy.update(num_movies=6, min_shots=8, max_shots=16, height=16, width=32, num_frames=2)
    c.data.num_pairs = 4
    c.data.global_batch_size = 2
    c.data.text_len = 128
  return c
