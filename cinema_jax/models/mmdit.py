"""The interleaved MM-DiT (FLUX architecture) over P (caption, keyframe) pairs.

Tensors keep the pair axis: image tokens x_BPND, text tokens c_BPLD, per-pair conditioning vec_BPD.
- Each pair's tokens are modulated by that pair's own vector (adaLN outputs [B, P, 1, D], broadcast
  over the pair's tokens; nothing is gathered per token).
- Double-stream blocks attend within a pair only: pairs are folded into the batch axis, so the
  block-diagonal attention costs P small attentions, never a masked P-times-larger one.
- Single-stream blocks see all pairs: the pair axis is flattened into the sequence; bidirectional in
  training, block-causal (pair i sees pairs <= i) for autoregressive sampling; text padding is masked.
- RoPE ids per token are (pair index, row, col); text tokens of pair i sit at (i, 0, 0).
- Pairs come in groups that share a token grid (GoldenMem levels: older pairs at smaller grids). Each
  group is a dense [B, n, N_group, C] array, oldest group first; double-stream blocks run group by
  group, single-stream blocks concatenate every group's tokens into one attention. Without GoldenMem
  there is one group.

Parameter names follow BFL's FLUX (img_in, txt_in, time_in, vector_in, guidance_in, double_blocks.
{img,txt}_{mod,attn,mlp}, single_blocks.{linear1,linear2,norm,modulation}, final_layer), stacked over
layers for scan; cinema_jax/convert maps the upstream checkpoints onto them.
"""

from __future__ import annotations

import dataclasses

import flax
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from cinema_jax import goldenmem
from cinema_jax import sharding
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
  """Per-call inputs every block needs, per group of pairs: RoPE tables, masks; the attention choice."""

  cos_BPTF: tuple[jax.Array, ...]  # RoPE of each pair's [text; image] tokens
  sin_BPTF: tuple[jax.Array, ...]
  kv_mask_BPT: tuple[jax.Array, ...]  # valid tokens (text padding is False)
  causal: bool
  backend: str

  def group(self, g: int) -> "Context":
    return dataclasses.replace(self, cos_BPTF=(self.cos_BPTF[g],), sin_BPTF=(self.sin_BPTF[g],),
                               kv_mask_BPT=(self.kv_mask_BPT[g],))


def _attend_within_pairs(q_BPTHD, k_BPTHD, v_BPTHD, ctx: Context) -> jax.Array:
  """Attention inside each pair of one group: pairs folded into the batch, no mask over pairs."""
  (cos,), (sin,), (kv_mask,) = ctx.cos_BPTF, ctx.sin_BPTF, ctx.kv_mask_BPT
  q, k = rope.apply(q_BPTHD, cos, sin), rope.apply(k_BPTHD, cos, sin)
  b, p, t, h, d = q.shape
  out = attention_lib.attention(q.reshape(b * p, t, h, d), k.reshape(b * p, t, h, d),
                                v_BPTHD.reshape(b * p, t, h, d), kv_mask_BS=kv_mask.reshape(b * p, t),
                                backend=ctx.backend)
  return out.reshape(b, p, t, h * d)


@flax.struct.dataclass
class KVCache:
  """The context's keys and values in every single-stream block (after QK-norm and RoPE).

  Block-causal attention means context tokens never see a later pair, and double-stream blocks never
  mix pairs, so these do not depend on the keyframe being generated: filled once per new keyframe,
  read at every denoising step.
  """

  k_LBSHD: jax.Array
  v_LBSHD: jax.Array
  mask_BS: jax.Array  # valid context tokens (text padding, and pairs that are not context, are False)


def _attend_across_pairs(qs, ks, vs, ctx: Context, cache_kv=None):
  """One attention over every group's tokens (pair i's queries see pairs <= i when causal).

  qs, ks already rotated. cache_kv: (k [B, S, H, D], v, mask [B, S]) of earlier pairs that every query
  sees. Returns (outputs per group, (k, v) of these tokens flattened [B, T, H, D]).
  """
  flat = lambda x: x.reshape(x.shape[0], -1, *x.shape[3:])
  q = jnp.concatenate([flat(x) for x in qs], axis=1)
  k_new = jnp.concatenate([flat(x) for x in ks], axis=1)
  v_new = jnp.concatenate([flat(x) for x in vs], axis=1)
  mask = jnp.concatenate([m.reshape(m.shape[0], -1) for m in ctx.kv_mask_BPT], axis=1)
  pairs, first = [], 0
  for x in qs:  # static (numpy): the splash kernel then knows the mask's empty tiles at trace time
    pairs.append(np.repeat(first + np.arange(x.shape[1], dtype=np.int32), x.shape[2]))
    first += x.shape[1]
  q_pairs = kv_pairs = np.concatenate(pairs)
  k, v = k_new, v_new
  if cache_kv is not None:  # cached pairs come before every pair here
    ck, cv, cmask = cache_kv
    k, v = jnp.concatenate([ck, k_new], axis=1), jnp.concatenate([cv, v_new], axis=1)
    mask = jnp.concatenate([cmask, mask], axis=1)
    kv_pairs = np.concatenate([np.full((ck.shape[1],), -1, np.int32), q_pairs])
  # the flattened sequence is pair-major, so sharding pairs over 'context' shards it contiguously:
  # ring attention (without a cache: the cache is a sampling-time, single-device-sequence path)
  out = attention_lib.attention(q, k, v, kv_mask_BS=mask, q_pairs_T=q_pairs, kv_pairs_S=kv_pairs,
                                causal=ctx.causal, backend=ctx.backend, context_parallel=cache_kv is None)
  outs, start = [], 0
  for x in qs:
    b, p, t, h, d = x.shape
    outs.append(out[:, start:start + p * t].reshape(b, p, t, h * d))
    start += p * t
  return tuple(outs), (k_new, v_new)


class DoubleStreamBlock(nnx.Module):
  """Separate weights for text and image tokens, one joint attention per pair (of one group)."""

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
    out = _attend_within_pairs(cat(txt_q, img_q), cat(txt_k, img_k), cat(txt_v, img_v), ctx)
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

  def __call__(self, xs_BPTD: tuple[jax.Array, ...], vecs_BPD: tuple[jax.Array, ...], ctx: Context,
               cache_kv=None):
    """(new xs, (k, v) of these tokens); cache_kv: earlier pairs' (k, v, mask) the queries also see."""
    mods = [self.modulation(vec) for vec in vecs_BPD]
    qs, ks, vs, mlps = [], [], [], []
    for x, (shift, scale, _), cos, sin in zip(xs_BPTD, mods, ctx.cos_BPTF, ctx.sin_BPTF):
      h = self.linear1(layers.modulate(self.pre_norm(x), shift, scale))
      qkv = h[..., :3 * self.hidden].reshape(*h.shape[:-1], 3, self.num_heads, -1)
      qs.append(rope.apply(self.norm.query_norm(qkv[..., 0, :, :]), cos, sin))
      ks.append(rope.apply(self.norm.key_norm(qkv[..., 1, :, :]), cos, sin))
      vs.append(qkv[..., 2, :, :])
      mlps.append(h[..., 3 * self.hidden:])
    attn, kv = _attend_across_pairs(qs, ks, vs, ctx, cache_kv)
    xs = tuple(x + gate * self.linear2(jnp.concatenate([a, jax.nn.gelu(m, approximate=True)], axis=-1))
               for x, a, m, (_, _, gate) in zip(xs_BPTD, attn, mlps, mods))
    return xs, kv


class LastLayer(nnx.Module):

  def __init__(self, cfg: MMDiTConfig, rngs: nnx.Rngs):
    kw = _kw(cfg)
    self.norm_final = layers.layer_norm(cfg.hidden, rngs, **kw)
    self.linear = layers.dense(cfg.hidden, cfg.in_channels, ("embed", "in"), rngs, zero_init=True, **kw)
    self.adaLN_modulation = layers.Modulation(cfg.hidden, 2, rngs, **kw)  # pylint: disable=invalid-name

  def __call__(self, x_BPND, vec_BPD):
    shift, scale = self.adaLN_modulation(vec_BPD)
    return self.linear(layers.modulate(self.norm_final(x_BPND), shift, scale))


def shard_pairs(xs_BPTD: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """Block-boundary constraint: examples over the batch axes, pairs over 'context' (where they divide).

  Double-stream blocks then attend within pairs with no communication; single-stream blocks see the
  pair-major sequence split contiguously, as ring attention expects.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return xs_BPTD
  ctx = mesh.shape.get("context", 1)
  free = jax.sharding.PartitionSpec.UNCONSTRAINED  # tokens and width: XLA's choice (tensor parallelism's)

  def constrain(x):
    batch, pairs = sharding.logical_spec(("batch", "pairs" if x.shape[1] % ctx == 0 else None))
    return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(batch, pairs, free, free))

  return tuple(constrain(x) for x in xs_BPTD)


def _stack(make, n: int, rngs: nnx.Rngs):
  """n copies of a block with parameters stacked on a leading 'layers' axis (for scan)."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(r):
    return make(r)

  return create(rngs)


def _scan(stack: nnx.Module, carry, body, policy_name: str, xs=None):
  """Runs `body(block, carry, x) -> (carry, y)` over the stacked blocks with jax.lax.scan (+ remat);
  x is the layer's slice of xs (or None); returns (carry, ys stacked over layers)."""
  graphdef, state = nnx.split(stack)

  def step(c, layer):
    layer_state, x = layer
    return body(nnx.merge(graphdef, layer_state), c, x)

  policy = REMAT_POLICIES[policy_name]
  if policy_name != "none":
    step = jax.checkpoint(step, policy=policy)
  return jax.lax.scan(step, carry, (state, xs))


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

  def __call__(self, img_BPNC, img_ids_BPN3, txt_BPLE: jax.Array, txt_ids_BPL3: jax.Array,
               txt_mask_BPL: jax.Array, t_BP: jax.Array, y_BPV: jax.Array, guidance_BP: jax.Array | None = None,
               *, causal: bool = False, cache: KVCache | None = None):
    """Velocity [B, P, N, C] of the image tokens of every pair (a tuple of them per group, for groups).

    img: noisy image tokens, [B, P, N, C] or a tuple of groups [B, n_g, N_g, C] (oldest first, the
    n_g summing to P), with img_ids to match; txt: text token states; y: pooled text vector; t: flow
    time per pair in [0, 1] (1 = noise); guidance: FLUX's distilled guidance scale per pair (when
    guidance_embed). causal: block-causal attention across pairs (autoregressive sampling) instead of
    bidirectional. cache: keys and values of earlier pairs (fill_cache) that every pair here also
    sees in the single-stream blocks; the ids must then continue the cached pairs' ids.
    """
    imgs, txts, vecs, ctx = self._embed(img_BPNC, img_ids_BPN3, txt_BPLE, txt_ids_BPL3, txt_mask_BPL, t_BP,
                                        y_BPV, guidance_BP, causal)
    xs = self._double(imgs, txts, vecs, ctx)
    if cache is None:
      xs, _ = _scan(self.single_blocks, xs, lambda blk, c, _: (shard_pairs(blk(c, vecs, ctx)[0]), None),
                    self.cfg.remat)
    else:
      body = lambda blk, c, kv: (blk(c, vecs, ctx, (*kv, cache.mask_BS))[0], None)
      xs, _ = _scan(self.single_blocks, xs, body, self.cfg.remat, (cache.k_LBSHD, cache.v_LBSHD))
    out = tuple(self.final_layer(x[:, :, t.shape[2]:], v).astype(jnp.float32) for x, t, v in zip(xs, txts, vecs))
    return out if isinstance(img_BPNC, (tuple, list)) else out[0]

  def fill_cache(self, img_BPNC, img_ids_BPN3, txt_BPLE: jax.Array, txt_ids_BPL3: jax.Array,
                 txt_mask_BPL: jax.Array, t_BP: jax.Array, y_BPV: jax.Array, guidance_BP: jax.Array | None = None,
                 *, pair_valid_BP: jax.Array | None = None) -> KVCache:
    """The single-stream keys and values of these (context) pairs under block-causal attention.

    Same inputs as __call__. pair_valid: pairs that later pairs may see (the others, e.g. padding
    slots, are masked out of the cache).
    """
    imgs, txts, vecs, ctx = self._embed(img_BPNC, img_ids_BPN3, txt_BPLE, txt_ids_BPL3, txt_mask_BPL, t_BP,
                                        y_BPV, guidance_BP, True)
    xs = self._double(imgs, txts, vecs, ctx)
    _, (k, v) = _scan(self.single_blocks, xs, lambda blk, c, _: blk(c, vecs, ctx), self.cfg.remat)
    masks = ctx.kv_mask_BPT
    if pair_valid_BP is not None:
      valid = (pair_valid_BP,) if len(masks) == 1 else goldenmem.split_pairs(pair_valid_BP, masks)
      masks = tuple(m & pv[..., None] for m, pv in zip(masks, valid))
    return KVCache(k_LBSHD=k, v_LBSHD=v, mask_BS=jnp.concatenate([m.reshape(m.shape[0], -1) for m in masks], 1))

  def _embed(self, img_BPNC, img_ids_BPN3, txt_BPLE, txt_ids_BPL3, txt_mask_BPL, t_BP, y_BPV, guidance_BP,
             causal: bool):
    """Input projections, per-pair conditioning vectors and RoPE tables, cut into the image groups."""
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    grouped = isinstance(img_BPNC, (tuple, list))
    imgs = tuple(img_BPNC) if grouped else (img_BPNC,)
    img_ids = tuple(img_ids_BPN3) if grouped else (img_ids_BPN3,)
    vec = self.time_in(layers.timestep_embedding(t_BP).astype(dtype))
    if self.guidance_in is not None:
      if guidance_BP is None:
        raise ValueError("this model embeds a guidance scale: pass guidance_BP")
      vec = vec + self.guidance_in(layers.timestep_embedding(guidance_BP).astype(dtype))
    vec = vec + self.vector_in(y_BPV.astype(dtype))
    txt = self.txt_in(txt_BPLE.astype(dtype))

    if sum(x.shape[1] for x in imgs) != t_BP.shape[1]:
      raise ValueError(f"image groups hold {sum(x.shape[1] for x in imgs)} pairs, t_BP has {t_BP.shape[1]}")
    vecs, txts = goldenmem.split_pairs(vec, imgs), goldenmem.split_pairs(txt, imgs)
    txt_ids, txt_masks = goldenmem.split_pairs(txt_ids_BPL3, imgs), goldenmem.split_pairs(txt_mask_BPL, imgs)
    cos, sin, masks = [], [], []
    for ids, tids, tmask in zip(img_ids, txt_ids, txt_masks):
      c, s = rope.frequencies(jnp.concatenate([tids.astype(jnp.float32), ids.astype(jnp.float32)], axis=2),
                              cfg.axes_dim, cfg.theta)
      cos.append(c)
      sin.append(s)
      masks.append(jnp.concatenate([tmask, jnp.ones(ids.shape[:3], bool)], axis=2))
    ctx = Context(cos_BPTF=tuple(cos), sin_BPTF=tuple(sin), kv_mask_BPT=tuple(masks), causal=causal,
                  backend=cfg.attention)
    return tuple(self.img_in(x.astype(dtype)) for x in imgs), txts, vecs, ctx

  def _double(self, imgs, txts, vecs, ctx: Context) -> tuple[jax.Array, ...]:
    """The double-stream blocks, group by group; returns each group's [text; image] tokens."""

    def double(blk, carry, _):
      imgs, txts = zip(*(blk(i, t, v, ctx.group(g)) for g, (i, t, v) in enumerate(zip(*carry, vecs))))
      return (shard_pairs(imgs), shard_pairs(txts)), None

    (imgs, txts), _ = _scan(self.double_blocks, (shard_pairs(imgs), shard_pairs(txts)), double, self.cfg.remat)
    return tuple(jnp.concatenate([t, i], axis=2) for t, i in zip(txts, imgs))


def position_ids(num_pairs: int, num_text: int, grid_h: int, grid_w: int) -> tuple[jax.Array, jax.Array]:
  """(img_ids [P, h*w, 3], txt_ids [P, L, 3]) of P pairs at full resolution: (pair, row, col) per image
  token, (pair, 0, 0) per text token."""
  (img,), txt = group_position_ids((grid_h, grid_w), [(num_pairs, (grid_h, grid_w))], num_text)
  return img, txt


def group_position_ids(full_grid: tuple[int, int], groups: list[tuple[int, tuple[int, int]]], num_text: int,
                       first_pair=0):
  """(img_ids per group [n_g, N_g, 3], txt_ids [P, L, 3]) for groups of (num_pairs, token grid).

  Image tokens get (pair, row, col) with rows and cols in full-grid coordinates (a compressed frame
  spans the same extent as a full one); text tokens of pair i sit at (i, 0, 0). Pairs are numbered
  from first_pair (a traced value is fine: pairs that continue a KV cache).
  """
  img, first = [], 0
  for n, grid in groups:
    pos = jnp.asarray(goldenmem.positions(full_grid, grid))
    pair = (first_pair + first + jnp.arange(n, dtype=jnp.float32))[:, None, None]
    img.append(jnp.concatenate([jnp.broadcast_to(pair, (n, pos.shape[0], 1)),
                                jnp.broadcast_to(pos[None], (n, *pos.shape))], axis=-1))
    first += n
  pair = (first_pair + jnp.arange(first, dtype=jnp.float32))[:, None, None]
  txt = jnp.concatenate([jnp.broadcast_to(pair, (first, num_text, 1)), jnp.zeros((first, num_text, 2))], axis=-1)
  return tuple(img), txt
