"""Ablation: GoldenMem on or off at 16, 32 and 48 context pairs (the paper's Table 3).

  --config=configs/ablations/goldenmem.py:on,32           (arg: on|off,PAIRS[,newest])
  --config=configs/ablations/goldenmem.py:on,16,newest    loss on the full-resolution group only; the
                                                          compressed pairs are clean context

Every pair carries loss by default; with GoldenMem that spends most of the signal on denoising the
compressed frames, which sampling never asks for (RESULTS.md, Table 3), hence `newest`.
"""

from configs import keyframe


def get_config(arg: str = "on,16"):
  mode, pairs, loss, *extra = arg.split(",") + ["", ""]
  if mode not in ("on", "off") or pairs not in ("16", "32", "48") or loss not in ("", "newest") or any(extra):
    raise ValueError(f"configs/ablations/goldenmem.py: arg {arg!r}: expected on|off,16|32|48[,newest]")
  c = keyframe.get_config("demo_long")
  c.data.num_pairs = int(pairs)
  c.batch_size = max(1, 64 // int(pairs))  # the same pairs per step at every length
  c.data.memory_levels = "goldenmem" if mode == "on" else "none"
  if loss:
    c.objective.loss_pairs = "newest_group"
  return c
