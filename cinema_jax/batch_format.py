"""The batch format: the names, global shapes and dtypes of the batch a config trains on.

`spec` is what `--compile_only` compiles for (training/aot.py) and what the training loop checks the
pipeline's first batch of every stage against (`check`, training/loop.py), so the pipeline and the
compiled step cannot drift apart silently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import input_space
from cinema_jax.models import keyframe


def spec(c: config_validation.Config) -> dict[str, jax.ShapeDtypeStruct]:
  """Global shapes and dtypes of the batch the pipeline yields for config c (data_pipelines/pipeline.py)."""
  m, b, p, L = c.model, c.batch_size, c.data.num_pairs, c.data.text_len
  s = lambda shape, dtype: jax.ShapeDtypeStruct((b, *shape), jnp.dtype(dtype))
  spec = {"movie": s((), "int32"), "shot_index": s((p,), "int32"), "stride": s((), "int32"),
          "text_mask": s((p, L), "bool")}
  if c.data.text_source == "tokens":
    spec["text_tokens"] = s((p, L), "int32")
  else:
    spec.update(text_states=s((p, L, m.context_dim), "float32"), text_pooled=s((p, m.vec_dim), "float32"))
  groups = keyframe.pipeline_image_groups(c)
  space = input_space.of(c)
  if groups:  # GoldenMem resized in the pipeline: one array per level group
    for g, (n, (h, w)) in enumerate(groups):
      spec[f"image_g{g}"] = s((n, h, w, m.image_channels), "float32")
  else:
    spec[space.image_key] = s((p, *space.frame_shape), "float32")
    if c.data.load_frames:  # every shot's frames (the video model): pixels, or per-frame VAE latents
      frames = m.video.num_frames if c.task == "video" else c.data.toy.num_frames
      spec[space.frames_key] = s((p, frames, *space.frame_shape), "float32")
  return spec


def check(batch: dict, expected: dict[str, jax.ShapeDtypeStruct], source: str) -> None:
  """A one-line error naming the first key of `expected` (spec(c)) that `batch` (global arrays from
  `source`) lacks or holds in another shape or dtype. Keys the step does not read may come along (the
  records' CLIP embeddings)."""
  missing = sorted(set(expected) - set(batch))
  if missing:
    raise errors.DataError(f"{source}: the batch has no {', '.join(missing)}; the config expects "
                           f"{', '.join(sorted(expected))}")
  for k, want in expected.items():
    got = batch[k]
    if tuple(got.shape) != tuple(want.shape) or jnp.dtype(got.dtype) != want.dtype:
      raise errors.DataError(f"{source}: batch[{k!r}] is {got.dtype}{list(got.shape)}, the config expects "
                             f"{want.dtype}{list(want.shape)}")
