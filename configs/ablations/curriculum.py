"""Ablation: progressive long-context tuning (1 -> 4 -> 16 pairs) against 16 pairs from the start.

  --config=configs/ablations/curriculum.py:on    (arg: on|off)
"""

from configs import keyframe


def get_config(arg: str = "on"):
  if arg not in ("on", "off"):
    raise ValueError(f"configs/ablations/curriculum.py: arg {arg!r}: expected on|off")
  c = keyframe.get_config("demo_long")
  if arg == "on":
    c.curriculum.pairs = (1, 4, c.data.num_pairs)
    c.curriculum.steps = (c.total_steps // 4, c.total_steps // 4, c.total_steps - 2 * (c.total_steps // 4))
  return c
