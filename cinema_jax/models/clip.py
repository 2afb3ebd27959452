"""CLIP's text tower (FLUX's pooled vector, CLIP-L) and vision tower (image embeddings for retrieval)
in Flax NNX.

Module and parameter names mirror transformers' CLIPTextModel and CLIPVisionModelWithProjection, so
checkpoints map on name for name (cinema_jax/convert/text.py). Text: causal self-attention plus the
padding mask, the pooled vector is the final state at the end-of-text token. Vision: a class token
and patch embeddings, pre- and post-LayerNorm, a projection of the class token's state.
"""

from __future__ import annotations

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

ACTIVATIONS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
               "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """One tower. Defaults: CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14, as FLUX.1 uses it)."""

  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  vocab_size: int = 49408  # text
  max_position_embeddings: int = 77  # text
  eos_token_id: int = 2  # text; 2: the original configs, where the end token is the largest id
  image_size: int = 224  # vision
  patch_size: int = 14  # vision
  num_channels: int = 3  # vision
  projection_dim: int = 768  # vision
  dtype: str = "float32"
  param_dtype: str = "float32"


def _kw(cfg: CLIPConfig) -> dict:
  return {"dtype": jnp.dtype(cfg.dtype), "param_dtype": jnp.dtype(cfg.param_dtype)}


def _ln(cfg: CLIPConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs, **_kw(cfg))


class CLIPAttention(nnx.Module):

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nnx.Linear(d, d, rngs=rngs, **_kw(cfg)) for _ in range(4))
    self.num_heads = cfg.num_attention_heads

  def __call__(self, x_BLD: jax.Array, allowed_B1LL: jax.Array | None) -> jax.Array:
    b, length, d = x_BLD.shape
    heads = lambda t: t.reshape(b, length, self.num_heads, d // self.num_heads)
    q, k, v = heads(self.q_proj(x_BLD)), heads(self.k_proj(x_BLD)), heads(self.v_proj(x_BLD))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * (d // self.num_heads) ** -0.5
    if allowed_B1LL is not None:
      scores = jnp.where(allowed_B1LL, scores, jnp.finfo(jnp.float32).min)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)
    return self.out_proj(out.reshape(b, length, d))


class CLIPMLP(nnx.Module):

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, rngs=rngs, **_kw(cfg))
    self.fc2 = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs, **_kw(cfg))
    self.act = ACTIVATIONS[cfg.hidden_act]

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    self.self_attn, self.mlp = CLIPAttention(cfg, rngs), CLIPMLP(cfg, rngs)
    self.layer_norm1, self.layer_norm2 = _ln(cfg, rngs), _ln(cfg, rngs)

  def __call__(self, x: jax.Array, allowed) -> jax.Array:
    x = x + self.self_attn(self.layer_norm1(x), allowed)
    return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    self.layers = nnx.List([CLIPEncoderLayer(cfg, rngs) for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x: jax.Array, allowed) -> jax.Array:
    for layer in self.layers:
      x = layer(x, allowed)
    return x


class CLIPTextEmbeddings(nnx.Module):

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, **_kw(cfg))
    self.position_embedding = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs, **_kw(cfg))


class CLIPTextTransformer(nnx.Module):

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    self.embeddings, self.encoder, self.final_layer_norm = (CLIPTextEmbeddings(cfg, rngs), CLIPEncoder(cfg, rngs),
                                                            _ln(cfg, rngs))


class CLIPTextModel(nnx.Module):
  """token ids [B, L] (+ mask) -> (token states [B, L, D], pooled vector [B, D] at the end token)."""

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    self.text_model = CLIPTextTransformer(cfg, rngs)
    self.eos_token_id = cfg.eos_token_id

  def __call__(self, ids_BL: jax.Array, mask_BL: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    return _text_states(self.text_model, self.eos_token_id, ids_BL, mask_BL)


def _text_states(t: CLIPTextTransformer, eos_token_id: int, ids_BL, mask_BL):
  """(token states, pooled vector at the end-of-text token) of a causal text tower."""
  b, length = ids_BL.shape
  x = t.embeddings.token_embedding(ids_BL) + t.embeddings.position_embedding(jnp.arange(length))[None]
  allowed = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if mask_BL is not None:
    allowed = allowed & mask_BL.astype(bool)[:, None, None, :]
  states = t.final_layer_norm(t.encoder(x, allowed))
  # the end-of-text token: the largest id in the original configs, else the first eos id
  eos = jnp.argmax(ids_BL, -1) if eos_token_id == 2 else jnp.argmax(ids_BL == eos_token_id, -1)
  return states, states[jnp.arange(b), eos]


class CLIPTextModelWithProjection(nnx.Module):
  """token ids [B, L] -> text embedding [B, projection_dim] (not normalised): the pooled vector projected
  into CLIP's joint text-image space (retrieval scores captions against image embeddings there)."""

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    self.text_model = CLIPTextTransformer(cfg, rngs)
    self.eos_token_id = cfg.eos_token_id
    self.text_projection = nnx.Linear(cfg.hidden_size, cfg.projection_dim, use_bias=False, rngs=rngs, **_kw(cfg))

  def __call__(self, ids_BL: jax.Array, mask_BL: jax.Array | None = None) -> jax.Array:
    return self.text_projection(_text_states(self.text_model, self.eos_token_id, ids_BL, mask_BL)[1])


class CLIPVisionEmbeddings(nnx.Module):

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    d, p = cfg.hidden_size, cfg.patch_size
    self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (d,), jnp.dtype(cfg.param_dtype)))
    self.patch_embedding = nnx.Conv(cfg.num_channels, d, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                                    rngs=rngs, **_kw(cfg))
    self.position_embedding = nnx.Embed((cfg.image_size // p) ** 2 + 1, d, rngs=rngs, **_kw(cfg))

  def __call__(self, pixels_BHWC: jax.Array) -> jax.Array:
    patches = self.patch_embedding(pixels_BHWC)
    b, _, _, d = patches.shape
    cls = jnp.broadcast_to(self.class_embedding.get_value().astype(patches.dtype), (b, 1, d))
    x = jnp.concatenate([cls, patches.reshape(b, -1, d)], axis=1)
    return x + self.position_embedding(jnp.arange(x.shape[1]))[None]


class CLIPVisionTransformer(nnx.Module):

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    self.embeddings = CLIPVisionEmbeddings(cfg, rngs)
    self.pre_layrnorm = _ln(cfg, rngs)  # (sic: the checkpoint's name)
    self.encoder = CLIPEncoder(cfg, rngs)
    self.post_layernorm = _ln(cfg, rngs)


class CLIPVisionModelWithProjection(nnx.Module):
  """pixels [B, H, W, 3], CLIP-normalised -> image embedding [B, projection_dim] (not normalised)."""

  def __init__(self, cfg: CLIPConfig, rngs: nnx.Rngs):
    self.vision_model = CLIPVisionTransformer(cfg, rngs)
    self.visual_projection = nnx.Linear(cfg.hidden_size, cfg.projection_dim, use_bias=False, rngs=rngs, **_kw(cfg))

  def __call__(self, pixels_BHWC: jax.Array) -> jax.Array:
    v = self.vision_model
    states = v.encoder(v.pre_layrnorm(v.embeddings(pixels_BHWC)), None)
    return self.visual_projection(v.post_layernorm(states[:, 0]))
