"""Ablation: which earlier shots a new shot sees: the most recent, the most similar captions (text to
text), or the keyframes most similar to the new caption (text to image, in ToyCLIP's space).

  --config=configs/ablations/retrieval.py:text    (arg: recent|text|mix|image)
"""

from configs import keyframe

ORDERS = {"recent": ("chronological", 0.0), "text": ("text", 0.0), "mix": ("text", 0.3), "image": ("image", 0.0)}


def get_config(arg: str = "text"):
  if arg not in ORDERS:
    raise ValueError(f"configs/ablations/retrieval.py: arg {arg!r}: expected one of {', '.join(ORDERS)}")
  c = keyframe.get_config("demo_long")
  c.data.context_order, c.data.retrieval.recency = ORDERS[arg]
  return c
