"""What a training run reads, made before it starts: the entry point (`python -m cinema_jax.train`) calls
`training_inputs` and the loop only finds what it made, so training has no data side effects.

config.data.path is read as it is. A toy config's inputs are built under the workdir when missing, each
step reported: the toy world (data_pipelines/toy_dataset.py), its latents in config.data.toy.autoencoder's
space (data_pipelines/precompute.py), and ToyCLIP for text-to-image retrieval (cinema_jax/toy_clip.py).
"""

from __future__ import annotations

import ml_collections

from cinema_jax import toy_clip
from data_pipelines import precompute
from data_pipelines import records


def training_inputs(c: ml_collections.ConfigDict, workdir: str, log=print) -> str:
  """Builds what config c trains on under workdir when missing; returns the training records' path."""
  path = precompute.train_path(c.data, workdir, log, build=True)
  if c.data.context_order == "image" and records.ShotReader(path).index.latent_shape is None:
    toy_clip.resolve(c.data, workdir, log, build=True)  # pixel records: the pipeline embeds with ToyCLIP
  return path
