"""Ablation: noisy context. Context pairs at t ~ U[a, b] / 1000 in training (only the last pair carries
loss) and at sampling; the paper found 1..250 best and > 500 losing identities.

  --config=configs/ablations/context_noise.py:1-250    (arg: A-B in thousandths, 0-0 = clean)
"""

from configs import keyframe

RANGES = ("0-0", "1-250", "250-500", "500-1000")


def get_config(arg: str = "1-250"):
  if arg not in RANGES:
    raise ValueError(f"configs/ablations/context_noise.py: arg {arg!r}: expected one of {', '.join(RANGES)}")
  lo, hi = (int(x) / 1000 for x in arg.split("-"))
  hi = min(hi, 0.999)  # t = 1 is pure noise: no context left
  c = keyframe.get_config("demo_long")
  c.objective.loss_pairs = "last"
  c.objective.context_t = (lo, hi)
  c.sample.context_t = (lo, hi)
  return c
