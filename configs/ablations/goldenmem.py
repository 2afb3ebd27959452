"""Ablation: GoldenMem on or off at 16, 32 and 48 context pairs (the paper's Table 3).

  --config=configs/ablations/goldenmem.py:on,32    (arg: on|off,PAIRS)
"""

from configs import keyframe


def get_config(arg: str = "on,16"):
  mode, _, pairs = arg.partition(",")
  if mode not in ("on", "off") or pairs not in ("16", "32", "48"):
    raise ValueError(f"configs/ablations/goldenmem.py: arg {arg!r}: expected on|off,16|32|48")
  c = keyframe.get_config("demo_long")
  c.data.num_pairs = int(pairs)
  c.batch_size = max(1, 64 // int(pairs))  # the same pairs per step at every length
  c.data.memory_levels = "goldenmem" if mode == "on" else "none"
  return c
