"""The FLUX autoencoder (diffusers AutoencoderKL: 16 latent channels, scale and shift) in Flax NNX.

Images are NHWC in [-1, 1]. `latents(x)` is what the keyframe model trains on: the posterior mean,
shifted and scaled as FLUX does ((mean - shift) * scale); `decode(z)` undoes that and runs the
decoder. Module and parameter names mirror diffusers' (encoder.down_blocks.0.resnets.1.conv1, ...)
so that cinema_jax/convert/vae.py maps a checkpoint onto them name for name.
"""

from __future__ import annotations

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """FLUX.1's autoencoder by default (diffusers AutoencoderKL config of black-forest-labs/FLUX.1-dev)."""

  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 16
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  scaling_factor: float = 0.3611
  shift_factor: float = 0.1159
  use_quant_conv: bool = False
  use_post_quant_conv: bool = False
  mid_block_add_attention: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Training on CPUs: convolution kernel gradients summed over chunks of this many examples (0: XLA's own).
  kernel_grad_chunk: int = 0

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


def _kw(cfg: VAEConfig) -> dict:
  return {"dtype": jnp.dtype(cfg.dtype), "param_dtype": jnp.dtype(cfg.param_dtype)}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_chunked(x, kernel, strides, padding, dimension_numbers, chunk):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=dimension_numbers)


def _conv_chunked_fwd(x, kernel, strides, padding, dimension_numbers, chunk):
  return _conv_chunked(x, kernel, strides, padding, dimension_numbers, chunk), (x, kernel)


def _conv_chunked_bwd(strides, padding, dimension_numbers, chunk, res, dy):
  x, kernel = res
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=dimension_numbers)
  dx = jax.vjp(lambda x: conv(x, kernel), x)[1](dy)[0]
  dk = sum(jax.vjp(lambda k, i=i: conv(x[i:i + chunk], k), kernel)[1](dy[i:i + chunk])[0]
           for i in range(0, x.shape[0], chunk))
  return dx, dk


_conv_chunked.defvjp(_conv_chunked_fwd, _conv_chunked_bwd)


def conv_with_chunked_kernel_grad(chunk: int):
  """lax.conv_general_dilated (as nnx.Conv calls it) whose kernel gradient is summed over batch chunks.

  XLA:CPU computes a convolution's kernel gradient as one convolution with the output gradient of the
  whole batch as its kernel, and that slows down faster than the batch grows (a 3x3, 64-channel conv on
  32x64 frames: 25 ms for 4 frames, 554 ms for 16, on a 2-core AMD EPYC); over chunks of 4 it stays
  linear. Values are lax's up to the order of the sum.
  """
  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
           feature_group_count=1, precision=None, preferred_element_type=None, out_sharding=None):
    if (any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))) or feature_group_count != 1
        or precision is not None or preferred_element_type is not None or out_sharding is not None):
      raise NotImplementedError("the chunked-gradient convolution is plain: no dilation, groups, precision, sharding")
    pad = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    return _conv_chunked(lhs, rhs, tuple(window_strides), pad, dimension_numbers, chunk)
  return conv


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, cfg: VAEConfig, stride: int = 1) -> nnx.Conv:
  pad = "VALID" if stride > 1 or k == 1 else ((k // 2, k // 2), (k // 2, k // 2))
  extra = ({"conv_general_dilated": conv_with_chunked_kernel_grad(cfg.kernel_grad_chunk)}
           if cfg.kernel_grad_chunk else {})
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=pad, rngs=rngs, **_kw(cfg), **extra)


def _norm(c: int, rngs: nnx.Rngs, cfg: VAEConfig) -> nnx.GroupNorm:
  return nnx.GroupNorm(c, num_groups=cfg.norm_num_groups, epsilon=1e-6, rngs=rngs, **_kw(cfg))


class ResnetBlock2D(nnx.Module):

  def __init__(self, cin: int, cout: int, rngs: nnx.Rngs, cfg: VAEConfig):
    self.norm1, self.conv1 = _norm(cin, rngs, cfg), _conv(cin, cout, 3, rngs, cfg)
    self.norm2, self.conv2 = _norm(cout, rngs, cfg), _conv(cout, cout, 3, rngs, cfg)
    self.conv_shortcut = _conv(cin, cout, 1, rngs, cfg) if cin != cout else None

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    h = self.conv1(jax.nn.silu(self.norm1(x_BHWC)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return (x_BHWC if self.conv_shortcut is None else self.conv_shortcut(x_BHWC)) + h


class Attention(nnx.Module):
  """Single-head self-attention over the pixels of the lowest-resolution feature map."""

  def __init__(self, c: int, rngs: nnx.Rngs, cfg: VAEConfig):
    self.group_norm = _norm(c, rngs, cfg)
    self.to_q, self.to_k, self.to_v = (nnx.Linear(c, c, rngs=rngs, **_kw(cfg)) for _ in range(3))
    self.to_out = nnx.List([nnx.Linear(c, c, rngs=rngs, **_kw(cfg))])  # diffusers: to_out.0 (then dropout)

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    b, h, w, c = x_BHWC.shape
    t = self.group_norm(x_BHWC).reshape(b, h * w, c)
    q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
    scores = jnp.einsum("btc,bsc->bts", q, k, preferred_element_type=jnp.float32) * c ** -0.5
    out = jnp.einsum("bts,bsc->btc", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)
    return x_BHWC + self.to_out[0](out).reshape(b, h, w, c)


class Downsample2D(nnx.Module):

  def __init__(self, c: int, rngs: nnx.Rngs, cfg: VAEConfig):
    self.conv = _conv(c, c, 3, rngs, cfg, stride=2)

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    return self.conv(jnp.pad(x_BHWC, ((0, 0), (0, 1), (0, 1), (0, 0))))  # diffusers pads right and bottom only


class Upsample2D(nnx.Module):

  def __init__(self, c: int, rngs: nnx.Rngs, cfg: VAEConfig):
    self.conv = _conv(c, c, 3, rngs, cfg)

  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    return self.conv(jnp.repeat(jnp.repeat(x_BHWC, 2, axis=1), 2, axis=2))  # nearest, x2


class MidBlock(nnx.Module):

  def __init__(self, c: int, rngs: nnx.Rngs, cfg: VAEConfig):
    self.resnets = nnx.List([ResnetBlock2D(c, c, rngs, cfg) for _ in range(2)])
    self.attentions = nnx.List([Attention(c, rngs, cfg)] if cfg.mid_block_add_attention else [])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.resnets[0](x)
    for attn in self.attentions:
      x = attn(x)
    return self.resnets[1](x)


class Block(nnx.Module):
  """DownEncoderBlock2D (then a downsampler) or UpDecoderBlock2D (then an upsampler)."""

  def __init__(self, cin: int, cout: int, n: int, resample: str | None, rngs: nnx.Rngs, cfg: VAEConfig):
    self.resnets = nnx.List([ResnetBlock2D(cin if i == 0 else cout, cout, rngs, cfg) for i in range(n)])
    if resample == "down":
      self.downsamplers = nnx.List([Downsample2D(cout, rngs, cfg)])
    elif resample == "up":
      self.upsamplers = nnx.List([Upsample2D(cout, rngs, cfg)])

  def __call__(self, x: jax.Array) -> jax.Array:
    for r in self.resnets:
      x = r(x)
    for s in (*getattr(self, "downsamplers", ()), *getattr(self, "upsamplers", ())):
      x = s(x)
    return x


class Encoder(nnx.Module):

  def __init__(self, cfg: VAEConfig, rngs: nnx.Rngs):
    ch, n = cfg.block_out_channels, cfg.layers_per_block
    self.conv_in = _conv(cfg.in_channels, ch[0], 3, rngs, cfg)
    self.down_blocks = nnx.List([Block(ch[max(i - 1, 0)], ch[i], n, "down" if i < len(ch) - 1 else None, rngs, cfg)
                                 for i in range(len(ch))])
    self.mid_block = MidBlock(ch[-1], rngs, cfg)
    self.conv_norm_out = _norm(ch[-1], rngs, cfg)
    self.conv_out = _conv(ch[-1], 2 * cfg.latent_channels, 3, rngs, cfg)  # mean and log-variance

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv_in(x)
    for blk in self.down_blocks:
      x = blk(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nnx.Module):

  def __init__(self, cfg: VAEConfig, rngs: nnx.Rngs):
    ch, n = tuple(reversed(cfg.block_out_channels)), cfg.layers_per_block + 1
    self.conv_in = _conv(cfg.latent_channels, ch[0], 3, rngs, cfg)
    self.mid_block = MidBlock(ch[0], rngs, cfg)
    self.up_blocks = nnx.List([Block(ch[max(i - 1, 0)], ch[i], n, "up" if i < len(ch) - 1 else None, rngs, cfg)
                               for i in range(len(ch))])
    self.conv_norm_out = _norm(ch[-1], rngs, cfg)
    self.conv_out = _conv(ch[-1], cfg.out_channels, 3, rngs, cfg)

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.mid_block(self.conv_in(z))
    for blk in self.up_blocks:
      x = blk(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
  """encode: images [B, H, W, 3] in [-1, 1] -> posterior (mean, logvar) [B, H/8, W/8, 16]; decode back."""

  def __init__(self, cfg: VAEConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder, self.decoder = Encoder(cfg, rngs), Decoder(cfg, rngs)
    z2 = 2 * cfg.latent_channels
    self.quant_conv = _conv(z2, z2, 1, rngs, cfg) if cfg.use_quant_conv else None
    self.post_quant_conv = (_conv(cfg.latent_channels, cfg.latent_channels, 1, rngs, cfg)
                            if cfg.use_post_quant_conv else None)

  def encode(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    moments = self.encoder(x_BHWC)
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def latents(self, x_BHWC: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """What the MM-DiT sees: (z - shift) * scale, z the posterior mean (or a sample, given a key)."""
    mean, logvar = self.encode(x_BHWC)
    z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
    return (z - self.cfg.shift_factor) * self.cfg.scaling_factor

  def decode(self, latents_BhwC: jax.Array) -> jax.Array:
    z = latents_BhwC / self.cfg.scaling_factor + self.cfg.shift_factor
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z)
