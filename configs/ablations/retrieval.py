"""Ablation: which earlier shots a new shot sees: the most recent, or the most similar captions.

  --config=configs/ablations/retrieval.py:text    (arg: recent|text|mix)
"""

from configs import keyframe

ORDERS = {"recent": ("chronological", 0.0), "text": ("text", 0.0), "mix": ("text", 0.3)}


def get_config(arg: str = "text"):
  if arg not in ORDERS:
    raise ValueError(f"configs/ablations/retrieval.py: arg {arg!r}: expected one of {', '.join(ORDERS)}")
  c = keyframe.get_config("demo_long")
  c.data.context_order, c.data.retrieval.recency = ORDERS[arg]
  return c
