"""The interleaved MM-DiT (FLUX architecture) over P (caption, keyframe) pairs.

Tensors keep the pair axis: image tokens x_BPND, text tokens c_BPLD, per-pair conditioning vec_BPD.
- Each pair's tokens are modulated by that pair's own vector (adaLN outputs [B, P, 1, D], broadcast
  over the pair's tokens; nothing is gathered per token).
- Double-stream blocks attend within a pair only: pairs are folded into the batch axis, so the
  block-diagonal attention costs P small attentions, never a masked P-times-larger one.
- Single-stream blocks see all pairs: the pair axis is flattened into the sequence; bidirectional in
  training, block-causal (pair i sees pairs <= i) for autoregressive sampling; text padding is masked.
- RoPE ids per token are (pair index, row, col); text tokens of pair i sit at (i, 0, 0).

Parameter names follow BFL's FLUX (img_in, txt_in, time_in, vector_in, guidance_in, double_blocks.
{img,txt}_{mod,attn,mlp}, single_blocks.{linear1,linear2,norm,modulation}, final_layer), stacked over
layers for scan; cinema_jax/convert maps the upstream checkpoints onto them.
"""

from __future__ import annotations

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

from cinema_jax.models import attention as attention_lib
from cinema_jax.models import layers
from cinema_jax.models import rope

REMAT_POLICIES = {
    "none": None,  # no rematerialisation: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
  """Sizes and switches of the MM-DiT; FLUX.1-dev's values are the defaults."""

  in_channels: int = 64  # channels of one image token (16 latent channels x 2 x 2 patch for FLUX)
  hidden: int = 3072
  num_heads: int = 24
  mlp_ratio: float = 4.0
  depth_double: int = 19
  depth_single: int = 38
  context_dim: int = 4096  # text token states (T5-XXL)
  vec_dim: int = 768  # pooled text vector (CLIP-L)
  axes_dim: tuple[int, int, int] = (16, 56, 56)  # RoPE channels per id axis; sums to the head dim
  theta: float = 10000.0
  qkv_bias: bool = True
  guidance_embed: bool = True
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: str = "none"  # a key of REMAT_POLICIES
  attention: str = "auto"  # a backend of attention.attention

  @property
  def head_dim(self) -> int:
    return self.hidden // self.num_heads

  @property
  def mlp_hidden(self) -> int:
    return int(self.hidden * self.mlp_ratio)

  def validate(self) -> None:
    if self.hidden % self.num_heads:
      raise ValueError(f"model.hidden={self.hidden} is not a multiple of model.num_heads={self.num_heads}")
    if sum(self.axes_dim) != self.head_dim:
      raise ValueError(f"model.axes_dim={self.axes_dim} sums to {sum(self.axes_dim)}, the head dim is "
                       f"{self.head_dim}")
    if any(d % 2 for d in self.axes_dim):
      raise ValueError(f"model.axes_dim={self.axes_dim}: every axis needs an even number of channels")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat={self.remat!r}: expected one of {sorted(REMAT_POLICIES)}")
    if self.attention not in attention_lib.BACKENDS:
      raise ValueError(f"model.attention={self.attention!r}: expected one of {attention_lib.BACKENDS}")


def _kw(cfg: MMDiTConfig) -> dict:
  return {"dtype": jnp.dtype(cfg.dtype), "param_dtype": jnp.dtype(cfg.param_dtype)}


class QKNorm(nnx.Module):

  def __init__(self, head_dim: int, rngs: nnx.Rngs, **kw):
    self.query_norm = layers.rms_norm(head_dim, rngs, **kw)
    self.key_norm = layers.rms_norm(head_dim, rngs, **kw)


class SelfAttention(nnx.Module):
  """qkv projection + QK RMSNorm + output projection of one stream of a double block."""

  def __init__(self, cfg: MMDiTConfig, rngs: nnx.Rngs):
    kw = _kw(cfg)
    self.qkv = layers.dense(cfg.hidden, 3 * cfg.hidden, ("embed", "qkv"), rngs, use_bias=cfg.qkv_bias, **kw)
    self.norm = QKNorm(cfg.head_dim, rngs, **kw)
    self.proj = layers.dense(cfg.hidden, cfg.hidden, ("qkv", "embed"), rngs, **kw)
    self.num_heads = cfg.num_heads

  def qkv_heads(self, x_BPTD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    qkv = self.qkv(x_BPTD).reshape(*x_BPTD.shape[:-1], 3, self.num_heads, -1)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    return self.norm.query_norm(q), self.norm.key_norm(k), v


class MLP(nnx.Module):

  def __init__(self, cfg: MMDiTConfig, rngs: nnx.Rngs):
    kw = _kw(cfg)
    self.fc1 = layers.dense(cfg.hidden, cfg.mlp_hidden, ("embed", "mlp"), rngs, **kw)
    self.fc2 = layers.dense(cfg.mlp_hidden, cfg.hidden, ("mlp", "embed"), rngs, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


@dataclasses.dataclass(frozen=True)
class Context:
  """Per-call inputs every block needs: RoPE tables, masks, the attention choice."""

  cos_BPTF: jax.Array  # RoPE of each pair's [text; image] tokens
  sin_BPTF: jax.Array
  kv_mask_BPT: jax.Array  # valid tokens (text padding is False)
  causal: bool
  backend: str


def _attend(q_BPTHD, k_BPTHD, v_BPTHD, ctx: Context, *, across_pairs: bool) -> jax.Array:
  """Attention with RoPE; within each pair, or across all pairs. Returns [B, P, T, H*D]."""
  q = rope.apply(q_BPTHD, ctx.cos_BPTF, ctx.sin_BPTF)
  k = rope.apply(k_BPTHD, ctx.cos_BPTF, ctx.sin_BPTF)
  b, p, t, h, d = q.shape
  if across_pairs:
    pairs = jnp.repeat(jnp.arange(p), t)
    out = attention_lib.attention(
        q.reshape(b, p * t, h, d), k.reshape(b, p * t, h, d), v_BPTHD.reshape(b, p * t, h, d),
        kv_mask_BS=ctx.kv_mask_BPT.reshape(b, p * t), q_pairs_T=pairs, kv_pairs_S=pairs,
        causal=ctx.causal, backend=ctx.backend)
  else:  # pairs folded into the batch: block-diagonal attention without a mask over pairs
    out = attention_lib.attention(
        q.reshape(b * p, t, h, d), k.reshape(b * p, t, h, d), v_BPTHD.reshape(b * p, t, h, d),
        kv_mask_BS=ctx.kv_mask_BPT.reshape(b * p, t), backend=ctx.backend)
  return out.reshape(b, p, t, h * d)


class DoubleStreamBlock(nnx.Module):
  """Separate weights for text and image tokens, one joint attention per pair."""

  def __init__(self, cfg: MMDiTConfig, rngs: nnx.Rngs):
    kw = _kw(cfg)
    for s in ("img", "txt"):
      setattr(self, f"{s}_mod", layers.Modulation(cfg.hidden, 6, rngs, **kw))
      setattr(self, f"{s}_norm1", layers.layer_norm(cfg.hidden, rngs, **kw))
      setattr(self, f"{s}_attn", SelfAttention(cfg, rngs))
      setattr(self, f"{s}_norm2", layers.layer_norm(cfg.hidden, rngs, **kw))
      setattr(self, f"{s}_mlp", MLP(cfg, rngs))

  def __call__(self, img_BPND, txt_BPLD, vec_BPD, ctx: Context):
    img_mod, txt_mod = self.img_mod(vec_BPD), self.txt_mod(vec_BPD)
    img_q, img_k, img_v = self.img_attn.qkv_heads(layers.modulate(self.img_norm1(img_BPND), *img_mod[:2]))
    txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(layers.modulate(self.txt_norm1(txt_BPLD), *txt_mod[:2]))
    cat = lambda a, b: jnp.concatenate([a, b], axis=2)  # each pair's sequence is [text; image]
    out = _attend(cat(txt_q, img_q), cat(txt_k, img_k), cat(txt_v, img_v), ctx, across_pairs=False)
    num_txt = txt_BPLD.shape[2]
    txt_out, img_out = out[:, :, :num_txt], out[:, :, num_txt:]
    img = img_BPND + img_mod[2] * self.img_attn.proj(img_out)
    img = img + img_mod[5] * self.img_mlp(layers.modulate(self.img_norm2(img), *img_mod[3:5]))
    txt = txt_BPLD + txt_mod[2] * self.txt_attn.proj(txt_out)
    txt = txt + txt_mod[5] * self.txt_mlp(layers.modulate(self.txt_norm2(txt), *txt_mod[3:5]))
    return img, txt


class SingleStreamBlock(nnx.Module):
  """One stream over all pairs' [text; image] tokens; fused qkv+MLP input, parallel attention and MLP."""

  def __init__(self, cfg: MMDiTConfig, rngs: nnx.Rngs):
    kw = _kw(cfg)
    self.hidden, self.num_heads = cfg.hidden, cfg.num_heads
    self.linear1 = layers.dense(cfg.hidden, 3 * cfg.hidden + cfg.mlp_hidden, ("embed", "mlp"), rngs, **kw)
    self.linear2 = layers.dense(cfg.hidden + cfg.mlp_hidden, cfg.hidden, ("mlp", "embed"), rngs, **kw)
    self.norm = QKNorm(cfg.head_dim, rngs, **kw)
    self.pre_norm = layers.layer_norm(cfg.hidden, rngs, **kw)
    self.modulation = layers.Modulation(cfg.hidden, 3, rngs, **kw)

  def __call__(self, x_BPTD, vec_BPD, ctx: Context):
    shift, scale, gate = self.modulation(vec_BPD)
    h = self.linear1(layers.modulate(self.pre_norm(x_BPTD), shift, scale))
    qkv, mlp = h[..., :3 * self.hidden], h[..., 3 * self.hidden:]
    qkv = qkv.reshape(*qkv.shape[:-1], 3, self.num_heads, -1)
    q = self.norm.query_norm(qkv[..., 0, :, :])
    k = self.norm.key_norm(qkv[..., 1, :, :])
    attn = _attend(q, k, qkv[..., 2, :, :], ctx, across_pairs=True)
    out = self.linear2(jnp.concatenate([attn, jax.nn.gelu(mlp, approximate=True)], axis=-1))
    return x_BPTD + gate * out


class LastLayer(nnx.Module):

  def __init__(self, cfg: MMDiTConfig, rngs: nnx.Rngs):
    kw = _kw(cfg)
    self.norm_final = layers.layer_norm(cfg.hidden, rngs, **kw)
    self.linear = layers.dense(cfg.hidden, cfg.in_channels, ("embed", "in"), rngs, zero_init=True, **kw)
    self.adaLN_modulation = layers.Modulation(cfg.hidden, 2, rngs, **kw)  # pylint: disable=invalid-name

  def __call__(self, x_BPND, vec_BPD):
    shift, scale = self.adaLN_modulation(vec_BPD)
    return self.linear(layers.modulate(self.norm_final(x_BPND), shift, scale))


def _stack(make, n: int, rngs: nnx.Rngs):
  """n copies of a block with parameters stacked on a leading 'layers' axis (for scan)."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(r):
    return make(r)

  return create(rngs)


def _scan(stack: nnx.Module, carry, body, policy_name: str):
  """Runs `body(block, carry) -> carry` over the stacked blocks with jax.lax.scan (+ remat)."""
  graphdef, state = nnx.split(stack)

  def step(c, layer_state):
    return body(nnx.merge(graphdef, layer_state), c), None

  policy = REMAT_POLICIES[policy_name]
  if policy_name != "none":
    step = jax.checkpoint(step, policy=policy)
  carry, _ = jax.lax.scan(step, carry, state)
  return carry


class MMDiT(nnx.Module):
  """FLUX-architecture MM-DiT over interleaved pairs; predicts the flow velocity of every image token."""

  def __init__(self, cfg: MMDiTConfig, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    kw = _kw(cfg)
    self.img_in = layers.dense(cfg.in_channels, cfg.hidden, ("in", "embed"), rngs, **kw)
    self.txt_in = layers.dense(cfg.context_dim, cfg.hidden, ("in", "embed"), rngs, **kw)
    self.time_in = layers.MLPEmbedder(256, cfg.hidden, rngs, **kw)
    self.vector_in = layers.MLPEmbedder(cfg.vec_dim, cfg.hidden, rngs, **kw)
    self.guidance_in = layers.MLPEmbedder(256, cfg.hidden, rngs, **kw) if cfg.guidance_embed else None
    self.double_blocks = _stack(lambda r: DoubleStreamBlock(cfg, r), cfg.depth_double, rngs)
    self.single_blocks = _stack(lambda r: SingleStreamBlock(cfg, r), cfg.depth_single, rngs)
    self.final_layer = LastLayer(cfg, rngs)

  def __call__(self, img_BPNC: jax.Array, img_ids_BPN3: jax.Array, txt_BPLE: jax.Array, txt_ids_BPL3: jax.Array,
               txt_mask_BPL: jax.Array, t_BP: jax.Array, y_BPV: jax.Array, guidance_BP: jax.Array | None = None,
               *, causal: bool = False) -> jax.Array:
    """Velocity [B, P, N, C] of the image tokens of every pair.

    img: noisy image tokens; txt: text token states; y: pooled text vector; t: flow time per pair in
    [0, 1] (1 = noise); guidance: FLUX's distilled guidance scale per pair (when guidance_embed).
    causal: block-causal attention across pairs (autoregressive sampling) instead of bidirectional.
    """
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    img = self.img_in(img_BPNC.astype(dtype))
    txt = self.txt_in(txt_BPLE.astype(dtype))
    vec = self.time_in(layers.timestep_embedding(t_BP).astype(dtype))
    if self.guidance_in is not None:
      if guidance_BP is None:
        raise ValueError("this model embeds a guidance scale: pass guidance_BP")
      vec = vec + self.guidance_in(layers.timestep_embedding(guidance_BP).astype(dtype))
    vec = vec + self.vector_in(y_BPV.astype(dtype))

    ids = jnp.concatenate([txt_ids_BPL3, img_ids_BPN3], axis=2)
    cos, sin = rope.frequencies(ids, cfg.axes_dim, cfg.theta)
    mask = jnp.concatenate([txt_mask_BPL, jnp.ones(img_ids_BPN3.shape[:3], bool)], axis=2)
    ctx = Context(cos_BPTF=cos, sin_BPTF=sin, kv_mask_BPT=mask, causal=causal, backend=cfg.attention)

    img, txt = _scan(self.double_blocks, (img, txt), lambda blk, c: blk(c[0], c[1], vec, ctx), cfg.remat)
    x = jnp.concatenate([txt, img], axis=2)
    x = _scan(self.single_blocks, x, lambda blk, c: blk(c, vec, ctx), cfg.remat)
    img = x[:, :, txt.shape[2]:]
    return self.final_layer(img, vec).astype(jnp.float32)


def position_ids(num_pairs: int, num_text: int, grid_h: int, grid_w: int) -> tuple[jax.Array, jax.Array]:
  """(img_ids [P, h*w, 3], txt_ids [P, L, 3]): (pair, row, col) per image token, (pair, 0, 0) per text token."""
  pair = jnp.arange(num_pairs, dtype=jnp.int32)
  rows, cols = jnp.meshgrid(jnp.arange(grid_h), jnp.arange(grid_w), indexing="ij")
  grid = jnp.stack([rows.ravel(), cols.ravel()], axis=-1).astype(jnp.int32)
  img = jnp.concatenate([jnp.broadcast_to(pair[:, None, None], (num_pairs, grid_h * grid_w, 1)),
                         jnp.broadcast_to(grid[None], (num_pairs, grid_h * grid_w, 2))], axis=-1)
  txt = jnp.concatenate([jnp.broadcast_to(pair[:, None, None], (num_pairs, num_text, 1)),
                         jnp.zeros((num_pairs, num_text, 2), jnp.int32)], axis=-1)
  return img, txt
