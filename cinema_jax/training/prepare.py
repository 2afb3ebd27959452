"""What a training run reads, made before it starts: the entry point (`python -m cinema_jax.train`) calls
`training_inputs` and the loop only finds what it made, so training has no data side effects.

config.data.path is read as it is. A toy config's inputs are built under the workdir when missing, each
step reported: the toy world (data_pipelines/toy_dataset.py), and, pre-computed into records beside it
(data_pipelines/precompute.py), its latents in config.data.toy.autoencoder's space and, for text-to-image
retrieval, ToyCLIP's embeddings (cinema_jax/toy_clip.py, trained on the world first).
"""

from __future__ import annotations

from cinema_jax import config_validation
from data_pipelines import precompute


def training_inputs(c: config_validation.Config, workdir: str, log=print) -> str:
  """Builds what config c trains on under workdir when missing; returns the training records' path."""
  return precompute.train_path(c.data, workdir, log, build=True)
