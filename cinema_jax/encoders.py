"""The frozen encoders around the MM-DiT, one interface for every model:

  captions -> text conditioning   TokenText (word tokens; the model's own encoder runs them) |
                                  FluxText (T5 states + CLIP pooled vector, from tokenizer.json files)
  model frames -> pixels          PixelFrames (pixel-space models) | VAEFrames (AutoencoderKL, tiled above
                                  a size, as diffusers' tiled_decode)
  captions, keyframes -> vectors  ClipEmbedding (CLIP text and vision towers with their projections, for
                                  retrieval and evaluation; ToyCLIP is the toy world's stand-in)

Loading takes encoder folders as diffusers and transformers save them (config.json, safetensors,
tokenizer.json in the folder or its sibling tokenizer folder). Every encoder's parameters are placed
on the host or sharded over a mesh (`place`), in the sampling dtype.

FLUX's text convention ("flux"): T5 sees the caption padded to the text length (512 for FLUX.1-dev)
without an attention mask, every position's state is kept and none is masked in the MM-DiT, as
FLUX.1-dev was trained and as diffusers' FluxPipeline feeds it. "masked": T5 runs with the padding
mask and the MM-DiT masks the padding (how this project's own runs trained before).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from cinema_jax import input_space
from cinema_jax.convert import text as text_convert
from cinema_jax.convert import vae as vae_convert
from cinema_jax.models import clip
from cinema_jax.models import t5
from cinema_jax.models import vae
from data_pipelines import tokenizer as tokenizer_lib

TEXT_CONVENTIONS = ("flux", "masked")
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # CLIP's image normalisation
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


# ------------------------------------------------------------------------------------------ loading


def config_json(path: str) -> dict:
  f = os.path.join(path, "config.json")
  if not os.path.exists(f):
    raise FileNotFoundError(f"{path}: no config.json (an encoder folder holds config.json and safetensors)")
  with open(f) as fh:
    return json.load(fh)


def _pick(d: dict, cls) -> dict:
  """The fields of dataclass cls that config.json d sets (its dtype is not ours: that is an argument)."""
  return {f.name: (tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name])
          for f in dataclasses.fields(cls)
          if f.name in d and d[f.name] is not None and f.name not in ("dtype", "param_dtype")}


def tokenizer(path: str, max_len: int) -> tokenizer_lib.Tokenizer:
  """The tokenizer.json of an encoder folder, or of its sibling tokenizer folder (diffusers' layout)."""
  base = path.rstrip("/")
  sibling = os.path.join(os.path.dirname(base), os.path.basename(base).replace("text_encoder", "tokenizer"))
  for folder in (path, sibling):
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
      return tokenizer_lib.Tokenizer(os.path.join(folder, "tokenizer.json"), max_len)
  raise FileNotFoundError(f"{path}: no tokenizer.json there or in {sibling}")


def load_vae(path: str, dtype: str = "float32") -> vae.AutoencoderKL:
  # diffusers' AutoencoderKL defaults where config.json is silent (FLUX's file sets all of these)
  v = {"scaling_factor": 0.18215, "shift_factor": 0.0, "use_quant_conv": True, "use_post_quant_conv": True,
       **{k: x for k, x in config_json(path).items() if x is not None}}
  model = vae.AutoencoderKL(vae.VAEConfig(**_pick(v, vae.VAEConfig), dtype=dtype, param_dtype=dtype), nnx.Rngs(0))
  vae_convert.load_into(model, vae_convert.load_state_dict(path))
  return model


def load_t5(path: str, dtype: str = "float32") -> t5.T5EncoderModel:
  tj = config_json(path)
  if tj.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
    raise ValueError(f"{path}: feed_forward_proj={tj['feed_forward_proj']!r}; T5 v1.1 (gated-gelu) is supported")
  model = t5.T5EncoderModel(t5.T5Config(**_pick(tj, t5.T5Config), dtype=dtype, param_dtype=dtype), nnx.Rngs(0))
  text_convert.load_t5(model, text_convert.load_state_dict(path))
  return model


def _clip_config(path: str, tower: str, dtype: str) -> clip.CLIPConfig:
  j = config_json(path)
  if j.get("model_type") == "clip":  # a whole CLIPModel: its towers share the top-level projection size
    j = {**j[f"{tower}_config"], **({"projection_dim": j["projection_dim"]} if "projection_dim" in j else {})}
  return clip.CLIPConfig(**_pick(j, clip.CLIPConfig), dtype=dtype, param_dtype=dtype)


def load_clip_text(path: str, dtype: str = "float32", projection: bool = False):
  """CLIPTextModel (FLUX's pooled vector), or with projection CLIPTextModelWithProjection (retrieval)."""
  cfg = _clip_config(path, "text", dtype)
  model = (clip.CLIPTextModelWithProjection if projection else clip.CLIPTextModel)(cfg, nnx.Rngs(0))
  text_convert.load_clip(model, text_convert.load_state_dict(path))
  return model


def load_clip_vision(path: str, dtype: str = "float32") -> clip.CLIPVisionModelWithProjection:
  model = clip.CLIPVisionModelWithProjection(_clip_config(path, "vision", dtype), nnx.Rngs(0))
  text_convert.load_clip(model, text_convert.load_state_dict(path))
  return model


# ---------------------------------------------------------------------------------------- placement


def placement(shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> NamedSharding:
  """Where `place` puts a frozen encoder's parameter of this shape: split over the whole mesh along its
  largest dimension the mesh size divides, replicated when none does."""
  spec = [None] * len(shape)
  d = next((d for d in sorted(range(len(shape)), key=lambda d: -shape[d]) if shape[d] % mesh.size == 0), None)
  if d is not None:
    spec[d] = tuple(mesh.axis_names)
  return NamedSharding(mesh, P(*spec))


def place(model: nnx.Module, mesh: jax.sharding.Mesh | None) -> nnx.Module:
  """Puts a frozen encoder's parameters on the host (mesh None: the first CPU device) or sharded over the
  mesh by `placement`; XLA gathers them as the encoder runs. In place; returns the model."""
  state = nnx.state(model)
  where = (lambda _: jax.devices("cpu")[0]) if mesh is None else (lambda x: placement(x.shape, mesh))
  nnx.update(model, jax.tree.map(lambda x: jax.device_put(x, where(x)), state))
  return model


def bytes_per_device(tree: Any) -> int:
  """The most bytes any one device holds of a tree of arrays (parameters of a sharded model)."""
  per: dict[Any, int] = {}
  for x in jax.tree.leaves(tree):
    if isinstance(x, jax.Array):
      for s in x.addressable_shards:
        per[s.device] = per.get(s.device, 0) + s.data.nbytes
  return max(per.values(), default=0)


def gib(n: int) -> str:
  return f"{n / 2 ** 30:.2f} GiB"


# --------------------------------------------------------------------------------------------- text


class TokenText:
  """Captions -> token ids for a model that runs its own text encoder (the toy world's word tokens)."""

  def __init__(self, tokenizer: tokenizer_lib.Tokenizer):
    self.tokenizer = tokenizer
    self.text_len = tokenizer.max_len

  def __call__(self, captions: list[str]) -> dict[str, np.ndarray]:
    ids, mask = self.tokenizer(captions)
    return {"text_tokens": ids, "text_mask": mask}


@nnx.jit
def _t5_states(model, ids, mask):
  return model(ids, mask).astype(jnp.float32)


@nnx.jit
def _clip_pooled(model, ids):
  return model(ids)[1].astype(jnp.float32)


class FluxText:
  """Captions -> T5 token states and CLIP pooled vectors, as FLUX.1 conditions on them.

  convention "flux": T5 runs on the caption padded to text_len with no attention mask and every
  state is kept (the mask is all ones); "masked": T5 masks the padding and so does the MM-DiT.
  CLIP's pooled vector is read at the end-of-text token of a causal tower, so padding never reaches it.
  """

  def __init__(self, t5_model, t5_tokenizer: tokenizer_lib.Tokenizer, clip_model,
               clip_tokenizer: tokenizer_lib.Tokenizer, convention: str = "flux"):
    if convention not in TEXT_CONVENTIONS:
      raise ValueError(f"text convention {convention!r}: expected one of {', '.join(TEXT_CONVENTIONS)}")
    self.t5, self.t5_tokenizer, self.clip, self.clip_tokenizer = t5_model, t5_tokenizer, clip_model, clip_tokenizer
    self.convention = convention
    self.text_len = t5_tokenizer.max_len

  @classmethod
  def load(cls, t5_path: str, clip_path: str, text_len: int, convention: str = "flux", dtype: str = "float32",
           mesh: jax.sharding.Mesh | None = None, t5_on_host: bool = False) -> "FluxText":
    """From encoder folders; T5 on the host or sharded over the mesh, CLIP over the mesh."""
    t5_model, clip_model = load_t5(t5_path, dtype), load_clip_text(clip_path, dtype)
    if t5_on_host or mesh is not None:
      place(t5_model, None if t5_on_host else mesh)
    if mesh is not None:
      place(clip_model, mesh)
    clip_len = clip_model.text_model.embeddings.position_embedding.num_embeddings
    return cls(t5_model, tokenizer(t5_path, text_len), clip_model, tokenizer(clip_path, clip_len), convention)

  def t5_states(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(states [K, text_len, D], mask [K, text_len]) by the convention."""
    ids, mask = self.t5_tokenizer(captions)
    if self.convention == "flux":
      return np.asarray(_t5_states(self.t5, jnp.asarray(ids), None)), np.ones(ids.shape, bool)
    states = np.asarray(_t5_states(self.t5, jnp.asarray(ids), jnp.asarray(mask)))
    return states * mask[..., None], mask

  def pooled(self, captions: list[str]) -> np.ndarray:
    ids, _ = self.clip_tokenizer(captions)
    return np.asarray(_clip_pooled(self.clip, jnp.asarray(ids)))

  def __call__(self, captions: list[str]) -> dict[str, np.ndarray]:
    states, mask = self.t5_states(captions)
    return {"text_states": states, "text_mask": mask, "text_pooled": self.pooled(captions)}

  def params(self) -> dict:
    return {"t5": nnx.state(self.t5), "clip": nnx.state(self.clip)}


# ------------------------------------------------------------------------------------------- images


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255]."""
  return np.clip(np.rint((np.asarray(pixels, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(images):
  """uint8 [0, 255] -> float32 [-1, 1] (NumPy or JAX arrays alike)."""
  return images.astype(np.float32) / 127.5 - 1.0


class PixelFrames:
  """A pixel-space model's frames are its pixels."""

  def decode(self, frames_NHWC: np.ndarray) -> np.ndarray:
    return np.asarray(frames_NHWC, np.float32)

  def encode(self, images_NHWC: np.ndarray) -> np.ndarray:
    """uint8 images -> the model's frames."""
    return from_uint8(np.asarray(images_NHWC))

  def params(self) -> dict:
    return {}


@nnx.jit
def _vae_latents(model, images):
  return model.latents(from_uint8(images)).astype(jnp.float32)


@nnx.jit
def _vae_decode(model, z):
  return model.decoder(z).astype(jnp.float32)


class VAEFrames:
  """Latents (the MM-DiT's frames) -> pixels in [-1, 1] by an AutoencoderKL's decoder.

  Latents larger than `tile` (in latent pixels, either side; 0: never) are decoded in overlapping tiles
  blended linearly, as diffusers' AutoencoderKL.tiled_decode does (tile_latent_min_size = tile,
  tile_overlap_factor = overlap), so that decoder memory stays that of one tile."""

  def __init__(self, model: vae.AutoencoderKL, tile: int = 0, overlap: float = 0.25):
    if tile < 0 or not 0 <= overlap < 1:
      raise ValueError(f"VAE tiling: tile={tile}, overlap={overlap}: expected tile >= 0 and 0 <= overlap < 1")
    self.model, self.tile, self.overlap = model, tile, overlap

  @classmethod
  def load(cls, path: str, dtype: str = "float32", mesh: jax.sharding.Mesh | None = None, tile: int = 0,
           overlap: float = 0.25) -> "VAEFrames":
    model = load_vae(path, dtype)
    if mesh is not None:
      place(model, mesh)
    return cls(model, tile, overlap)

  @property
  def downsample(self) -> int:
    return self.model.cfg.downsample

  def encode(self, images_NHWC: np.ndarray) -> np.ndarray:
    """uint8 images -> latents (the posterior mean, shifted and scaled, as pre-computation writes them)."""
    return np.asarray(_vae_latents(self.model, jnp.asarray(images_NHWC)))

  def decode(self, latents_NhwC: np.ndarray) -> np.ndarray:
    cfg = self.model.cfg
    z = jnp.asarray(latents_NhwC, jnp.float32) / cfg.scaling_factor + cfg.shift_factor
    if self.model.post_quant_conv is not None:  # 1x1: the same per tile or whole
      z = self.model.post_quant_conv(z)
    h, w = z.shape[1:3]
    if not self.tile or (h <= self.tile and w <= self.tile):
      return np.asarray(_vae_decode(self.model, z))
    return self._tiled(z)

  def _tiled(self, z: jax.Array) -> np.ndarray:
    t, f = self.tile, self.downsample
    stride = int(t * (1 - self.overlap))
    blend = int(t * f * self.overlap)  # in pixels
    limit = t * f - blend
    rows = [[np.array(_vae_decode(self.model, z[:, i:i + t, j:j + t])) for j in range(0, z.shape[2], stride)]
            for i in range(0, z.shape[1], stride)]
    # in place and in this order, as diffusers blends: a tile takes the (already blended) tile above it,
    # then the one to its left
    out_rows = []
    for i, row in enumerate(rows):
      out = []
      for j, tile in enumerate(row):
        if i > 0:
          _blend(rows[i - 1][j], tile, blend, axis=1)
        if j > 0:
          _blend(row[j - 1], tile, blend, axis=2)
        out.append(tile[:, :limit, :limit])
      out_rows.append(np.concatenate(out, axis=2))
    return np.concatenate(out_rows, axis=1)

  def params(self) -> dict:
    return nnx.state(self.model)


def _blend(a: np.ndarray, b: np.ndarray, extent: int, axis: int) -> None:
  """b's first `extent` rows (axis 1) or columns (axis 2) fade in from a's last ones, in place."""
  n = min(a.shape[axis], b.shape[axis], extent)
  for y in range(n):
    src = np.take(a, -extent + y, axis=axis)
    idx = (slice(None), y) if axis == 1 else (slice(None), slice(None), y)
    b[idx] = src * (1 - y / extent) + b[idx] * (y / extent)


def for_model(c, text=None, frames=None):
  """(text, frames) a sampler of config c's model uses: the given ones, or the data's tokenizer and
  pixels where the model needs no other; a one-line error where it does."""
  if text is None and c.model.text_encoder != "tokens":
    raise ValueError("this model conditions on T5 states and CLIP pooled vectors: sampling needs the T5 and CLIP "
                     "encoders (--t5, --clip or config.sample.encoders; encoders.FluxText)")
  if frames is None and not input_space.of(c).pixels:
    if not c.data.toy.autoencoder:
      raise ValueError("this model makes VAE latents: sampling needs the VAE decoder (--vae or "
                       "config.sample.encoders.vae; encoders.VAEFrames)")
    frames = VAEFrames.load(c.data.toy.autoencoder)  # the toy world's own autoencoder
  return text or TokenText(tokenizer_lib.for_data(c.data)), frames or PixelFrames()


# ------------------------------------------------------------------------------------------- CLIP


@nnx.jit(static_argnums=2)
def _clip_images(model, images_BHWC, size: int):
  """uint8 [B, H, W, 3] -> image embeddings; a wide (or tall) frame is embedded as its square tiles
  side by side (two halves of a 2:1 keyframe), averaged, so that no part of it is cropped away."""
  b, h, w, _ = images_BHWC.shape
  side = min(h, w)
  n = max(h, w) // side
  x = images_BHWC.astype(jnp.float32) / 255.0
  if w >= h:
    off = (w - n * side) // 2
    tiles = [x[:, :side, off + i * side:off + (i + 1) * side] for i in range(n)]
  else:
    off = (h - n * side) // 2
    tiles = [x[:, off + i * side:off + (i + 1) * side, :side] for i in range(n)]
  x = jnp.concatenate(tiles)  # [n * B, side, side, 3]
  x = jax.image.resize(x, (x.shape[0], size, size, 3), "bicubic")
  emb = model((x - CLIP_MEAN) / CLIP_STD).astype(jnp.float32)
  return emb.reshape(n, b, -1).mean(axis=0)


@nnx.jit
def _clip_text_embeds(model, ids):
  return model(ids).astype(jnp.float32)


class ClipEmbedding:
  """A CLIP model's text and image embeddings in its joint space, L2-normalised: texts(captions) [K, D],
  images(uint8 [K, H, W, 3]) [K, D]. The interface ToyCLIP (cinema_jax/toy_clip.py) also has."""

  def __init__(self, text_model, text_tokenizer: tokenizer_lib.Tokenizer | None,
               vision_model: clip.CLIPVisionModelWithProjection):
    self.text_model, self.text_tokenizer, self.vision = text_model, text_tokenizer, vision_model
    self.image_size = vision_model.vision_model.embeddings.position_embedding.num_embeddings
    p = vision_model.vision_model.embeddings.patch_embedding.kernel_size[0]
    self.image_size = int(round(math.sqrt(self.image_size - 1))) * p
    self.dim = vision_model.visual_projection.out_features

  @classmethod
  def load(cls, path: str, vision_path: str | None = None, dtype: str = "float32") -> "ClipEmbedding":
    """From a whole CLIP folder (CLIPModel: text and vision towers, projections, tokenizer.json), or its
    text tower with projection at `path` and the vision tower at `vision_path`."""
    text = load_clip_text(path, dtype, projection=True)
    tok = tokenizer(path, text.text_model.embeddings.position_embedding.num_embeddings)
    return cls(text, tok, load_clip_vision(vision_path or path, dtype))

  def texts(self, captions: list[str]) -> np.ndarray:
    if self.text_tokenizer is None:
      raise ValueError("this CLIP embedding was loaded without its text tower")
    ids, _ = self.text_tokenizer(captions)
    return _normalise(np.asarray(_clip_text_embeds(self.text_model, jnp.asarray(ids))))

  def images(self, frames_KHWC: np.ndarray) -> np.ndarray:
    return _normalise(np.asarray(_clip_images(self.vision, jnp.asarray(frames_KHWC), self.image_size)))


def image_embeddings(vision_model, frames_KHWC: np.ndarray) -> np.ndarray:
  """A CLIP vision tower's embeddings of uint8 frames (not normalised: what precompute stores)."""
  size = ClipEmbedding(None, None, vision_model).image_size
  return np.asarray(_clip_images(vision_model, jnp.asarray(frames_KHWC), size))


def _normalise(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
