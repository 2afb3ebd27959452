"""ToyCLIP: a small contrastive image/text embedding, for text-to-image context retrieval at toy scale.

The paper orders a new shot's context by CLIP similarity between its caption and the earlier
keyframes. Real data will use CLIP itself (the pretrained-weights issue); the toy world has no CLIP,
so this module trains a small one on the training split's (caption, keyframe) pairs with CLIP's
symmetric InfoNCE loss and a learned temperature:

  text tower   caption -> hashed bag of content words (retrieval.words_embedding) -> linear -> D
  image tower  keyframe -> area-averaged to 8x16x3 pixels -> MLP (one hidden layer) -> D

Both outputs are unit vectors. It takes seconds on a CPU, is deterministic from its seed, and is kept
as one safetensors file (`save` / `load`) beside the run that uses it (`resolve`).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import safetensors
import safetensors.numpy

from cinema_jax import errors
from cinema_jax import goldenmem
from cinema_jax import retrieval
from data_pipelines import records
from data_pipelines import toy_dataset

IMAGE_GRID = (8, 16)  # (h, w) pixels the image tower sees
FILENAME = "toy_clip.safetensors"
_FORMAT = "cinema_jax.toy_clip/1"
_KEYS = ("text_w", "image_w1", "image_b1", "image_w2", "log_scale")


@dataclasses.dataclass(frozen=True)
class ToyClip:
  """Trained weights (numpy); embeds captions and uint8 keyframes into one unit-norm space."""

  params: dict[str, np.ndarray]

  @property
  def dim(self) -> int:
    return int(self.params["text_w"].shape[1])

  def texts(self, captions: list[str]) -> np.ndarray:
    """float32 [N, D] unit vectors."""
    words = np.stack([retrieval.words_embedding(c, self.params["text_w"].shape[0]) for c in captions])
    return _unit(words @ self.params["text_w"])

  def images(self, images_NHWC: np.ndarray) -> np.ndarray:
    """float32 [N, D] unit vectors of uint8 [N, H, W, 3] keyframes (any size; area-averaged down)."""
    p = self.params
    h = np.maximum(image_features(images_NHWC) @ p["image_w1"] + p["image_b1"], 0.0)
    return _unit(h @ p["image_w2"])


def _unit(x: np.ndarray) -> np.ndarray:
  return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def image_features(images_NHWC: np.ndarray) -> np.ndarray:
  """float32 [N, 8 * 16 * 3] in [-1, 1]: the keyframes area-averaged to IMAGE_GRID."""
  if images_NHWC.dtype != np.uint8 or images_NHWC.ndim != 4 or images_NHWC.shape[-1] != 3:
    raise ValueError(f"ToyCLIP embeds uint8 [N, H, W, 3] keyframes, got {images_NHWC.dtype} {images_NHWC.shape}")
  small = goldenmem.resize_frames(images_NHWC, IMAGE_GRID).astype(np.float32)
  return small.reshape(len(small), int(np.prod(small.shape[1:]))) / 127.5 - 1.0


def fit(images_NHWC: np.ndarray, captions: list[str], *, dim: int = 64, hidden: int = 256, steps: int = 600,
        batch_size: int = 256, lr: float = 3e-3, seed: int = 0) -> ToyClip:
  """Trains ToyCLIP on (keyframe, caption) pairs; deterministic from the seed."""
  if len(images_NHWC) != len(captions) or len(captions) < 2:
    raise ValueError(f"ToyCLIP needs >= 2 (keyframe, caption) pairs, got {len(images_NHWC)} and {len(captions)}")
  x_img = jnp.asarray(image_features(images_NHWC))
  x_txt = jnp.asarray(np.stack([retrieval.words_embedding(c) for c in captions]))
  k = jax.random.split(jax.random.key(seed), 4)
  init = lambda key, shape: jax.random.normal(key, shape) / np.sqrt(shape[0])
  params = {"text_w": init(k[0], (x_txt.shape[1], dim)), "image_w1": init(k[1], (x_img.shape[1], hidden)),
            "image_b1": jnp.zeros(hidden), "image_w2": init(k[2], (hidden, dim)),
            "log_scale": jnp.float32(np.log(10.0))}
  opt = optax.adamw(lr, weight_decay=1e-4)
  n, b = len(captions), min(batch_size, len(captions))

  def loss_fn(p, idx):
    t = x_txt[idx] @ p["text_w"]
    i = jax.nn.relu(x_img[idx] @ p["image_w1"] + p["image_b1"]) @ p["image_w2"]
    t, i = (v / jnp.linalg.norm(v, axis=-1, keepdims=True) for v in (t, i))
    logits = jnp.exp(jnp.minimum(p["log_scale"], np.log(100.0))) * t @ i.T  # CLIP caps the scale at 100
    labels = jnp.arange(len(idx))
    return (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2

  @jax.jit
  def step(p, s, key):
    idx = jax.random.choice(key, n, (b,), replace=False)
    loss, g = jax.value_and_grad(loss_fn)(p, idx)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  state = opt.init(params)
  for key in jax.random.split(k[3], steps):
    params, state, _ = step(params, state, key)
  return ToyClip({name: np.asarray(v, np.float32) for name, v in params.items()})


def fit_dataset(path: str, **kw) -> ToyClip:
  """Trains ToyCLIP on every (keyframe, caption) record of a shot-record dataset."""
  reader = records.ShotReader(path)
  try:
    images, captions = [], []
    for r in range(len(reader)):
      shot, keyframe, _ = reader.read_pixels(r, frames=False)
      if keyframe is None:
        raise errors.DataError(f"{reader.where(r)}: ToyCLIP embeds pixel keyframes, this dataset holds latents "
                               "(use CLIP image embeddings pre-computed into the records)")
      images.append(keyframe)
      captions.append(shot.caption)
  finally:
    reader.close()
  return fit(np.stack(images), captions, **kw)


def save(model: ToyClip, path: str) -> None:
  """Writes the weights as one safetensors file, atomically (a reader never sees half a file)."""
  tmp = f"{path}.tmp.{os.getpid()}"
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in model.params.items()}, tmp,
                              metadata={"format": _FORMAT, "image_grid": json.dumps(IMAGE_GRID)})
  os.replace(tmp, path)


def load(path: str) -> ToyClip:
  """Reads weights written by `save`; a file that is not one is named in the error."""
  try:
    with safetensors.safe_open(path, "numpy") as f:
      meta = f.metadata() or {}
      params = {k: f.get_tensor(k) for k in f.keys()}
  except (OSError, safetensors.SafetensorError) as e:
    raise errors.DataError(f"{path}: not a readable ToyCLIP safetensors file ({e})") from None
  if meta.get("format") != _FORMAT or set(params) != set(_KEYS):
    raise errors.DataError(f"{path}: not a ToyCLIP file (format {meta.get('format')!r}, tensors "
                           f"{sorted(params)}; expected {_FORMAT!r} with {list(_KEYS)})")
  d_in = np.prod(IMAGE_GRID) * 3
  if params["image_w1"].shape[0] != d_in or params["text_w"].shape[0] != retrieval.WORDS_DIM:
    raise errors.DataError(f"{path}: input sizes {params['image_w1'].shape[0]} (image) and "
                           f"{params['text_w'].shape[0]} (text); expected {d_in} and {retrieval.WORDS_DIM}")
  return ToyClip(params)


def resolve(data_config, workdir: str, log=lambda msg: None, build: bool = False) -> str:
  """The ToyCLIP file a run uses: config.data.retrieval.embedding, or <workdir>/toy_clip.safetensors,
  trained on the run's training data when missing and build is set (training prepares it so:
  cinema_jax/training/prepare.py); otherwise a missing file is a one-line error."""
  given = data_config.retrieval.embedding
  if given:
    if not os.path.isfile(given):
      raise errors.DataError(f"config.data.retrieval.embedding={given!r}: no such file")
    return given
  path = os.path.join(workdir, FILENAME)
  if not os.path.isfile(path) and not build:
    raise errors.DataError(f"no ToyCLIP at {path} (text-to-image retrieval): the training command trains it "
                           f"(python -m cinema_jax.train --config=... --workdir={workdir})")
  if not os.path.isfile(path):
    data = toy_dataset.train_path(data_config, workdir, log, build)
    log(f"training ToyCLIP on {data} for text-to-image retrieval")
    save(fit_dataset(data), path)
  return path
