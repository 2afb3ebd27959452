"""The shot-video model: the keyframe model's MM-DiT over K shots of 3D (time, row, col) tokens.

Given every shot's keyframe (its first frame) and caption, it generates frames 1..F-1 of all K shots
at once (the paper's bottom-up stage; LCT's multi-shot layout). The network is the keyframe model
itself (keyframe.KeyframeModel: the same text encoder, blocks and parameter tree, so a keyframe or
FLUX checkpoint initialises it); only the token layout and the RoPE ids differ. Each shot is a pair
of the MM-DiT, modulated by its own timestep; where its keyframe goes is model.video.keyframes:

  in_shot  (default) one pair per shot, [caption; keyframe tokens; clip tokens]: the clean keyframe
           leads its shot's sequence (as FLUX.1 Kontext appends its clean condition image), so the
           double-stream blocks already see it; it shares the shot's adaLN timestep
  pairs    LCT's layout: two pair groups, K keyframe pairs [caption; keyframe] at their own t (~0)
           and K clip pairs [caption; clip] at the shots' t; only single-stream blocks connect them

Keyframes are clean, or lightly noised to t ~ U[objective.context_t] (0 by default), and carry no
loss. Single-stream blocks see every shot: bidirectionally (model.video.shot_attention="full", LCT's
scene-level attention) or block-causally ("causal": shot k sees shots <= k, and with "pairs" every
keyframe), so shots can be extended one at a time. Captions are each shot's own, or every shot's
captions in order (captions="global", a tiled scene caption).

3D patches: patch_t frames x patch x patch pixels (or latents), channels ordered (c, t, ph, pw): with
patch_t = 1 a token is exactly a keyframe token, so FLUX's img_in loads unchanged. A keyframe enters as
patch_t copies of itself, one token per (row, col).

RoPE ids (time, row, col) with a per-shot offset: shot k starts at time k * (1 + F' + shot_gap), F'
the clip's token frames; its keyframe sits at that first-frame slot, clip token frame j at + 1 + j, its
caption's tokens at (start, 0, 0). The gap keeps shots apart on the time axis (LCT's interleaved RoPE).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cinema_jax import config_validation
from cinema_jax import input_space
from cinema_jax.models import keyframe
from cinema_jax.training import objective

SHOT_ATTENTION = ("full", "causal")
KEYFRAMES = ("in_shot", "pairs")
CAPTIONS = ("shot", "global")


def patchify(x_BKFHWC: jax.Array, pt: int, p: int) -> jax.Array:
  """[B, K, F, H, W, C] -> [B, K, (F/pt)(H/p)(W/p), C*pt*p*p], tokens time-major, channels (c, t, ph, pw)."""
  b, k, f, h, w, c = x_BKFHWC.shape
  x = x_BKFHWC.reshape(b, k, f // pt, pt, h // p, p, w // p, p, c)
  x = jnp.einsum("bkfthpwqc->bkfhwctpq", x)
  return x.reshape(b, k, (f // pt) * (h // p) * (w // p), c * pt * p * p)


def unpatchify(x_BKNC: jax.Array, pt: int, p: int, f: int, h: int, w: int) -> jax.Array:
  b, k, _, cc = x_BKNC.shape
  c = cc // (pt * p * p)
  x = x_BKNC.reshape(b, k, f // pt, h // p, w // p, c, pt, p, p)
  x = jnp.einsum("bkfhwctpq->bkfthpwqc", x)
  return x.reshape(b, k, f, h, w, c)


def token_frames(c: config_validation.Config) -> int:
  """F': the clip's frames (all but the keyframe) in tokens along time."""
  return (c.model.video.num_frames - 1) // c.model.video.patch_t


def position_ids(num_shots: int, token_frames_: int, grid: tuple[int, int], num_text: int, gap: int,
                 first_shot: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(keyframe ids [K, h*w, 3], clip ids [K, F'*h*w, 3], text ids [2K, L, 3]) as (time, row, col).

  Shot k (numbered from first_shot) starts at time k * (1 + F' + gap): its keyframe there, its clip's
  token frame j at + 1 + j, its caption's tokens at (start, 0, 0) in both of its pairs.
  """
  gh, gw = grid
  start = (first_shot + np.arange(num_shots, dtype=np.float32)) * (1 + token_frames_ + gap)  # [K]
  rows, cols = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
  rc = np.stack([rows.ravel(), cols.ravel()], -1)  # [h*w, 2]
  kf = np.concatenate([np.broadcast_to(start[:, None, None], (num_shots, gh * gw, 1)),
                       np.broadcast_to(rc, (num_shots, gh * gw, 2))], -1)
  time = start[:, None] + 1 + np.repeat(np.arange(token_frames_, dtype=np.float32), gh * gw)[None]  # [K, F'hw]
  clip = np.concatenate([time[..., None], np.broadcast_to(np.tile(rc, (token_frames_, 1)),
                                                          (num_shots, token_frames_ * gh * gw, 2))], -1)
  txt = np.zeros((2 * num_shots, num_text, 3), np.float32)
  txt[:, :, 0] = np.concatenate([start, start])[:, None]
  return kf, clip, txt


def pair_image_tokens(c: config_validation.Config) -> list[int]:
  """Image tokens of each pair the MM-DiT sees (in_shot: K shots; pairs: K keyframes, then K clips)."""
  gh, gw = keyframe.full_grid(c)
  k, clip = c.data.num_pairs, token_frames(c) * gh * gw
  if c.model.video.keyframes == "in_shot":
    return [gh * gw + clip] * k
  return [gh * gw] * k + [clip] * k


def shot_tokens(c: config_validation.Config, batch: dict) -> tuple[jax.Array, jax.Array]:
  """(keyframe tokens [B, K, h*w, C'], clip tokens [B, K, F'*h*w, C']) of a pipeline batch.

  Pixels come as `frames` [B, K, F, H, W, 3] (frame 0 the keyframe; the toy world and PNG datasets),
  latents as `frame_latents` [B, K, F, h, w, C].
  """
  key = input_space.of(c).frames_key
  v = c.model.video
  frames = batch[key]
  if frames.shape[2] != v.num_frames:
    raise ValueError(f"batch['{key}'] has {frames.shape[2]} frames per shot, config.model.video.num_frames is "
                     f"{v.num_frames}")
  return keyframe_tokens(c, frames[:, :, 0]), patchify(frames[:, :, 1:], v.patch_t, c.model.patch)


def keyframe_tokens(c: config_validation.Config, keyframes_BKHWC: jax.Array) -> jax.Array:
  """A keyframe as a clip token: patch_t copies of itself along time."""
  pt = c.model.video.patch_t
  x = jnp.broadcast_to(keyframes_BKHWC[:, :, None], (*keyframes_BKHWC.shape[:2], pt, *keyframes_BKHWC.shape[2:]))
  return patchify(x, pt, c.model.patch)


def _shot_text(c: config_validation.Config, states_BKLE, mask_BKL):
  """Each shot's caption (model.video.captions="shot"), or every shot's captions in order ("global",
  the tiled scene caption)."""
  if c.model.video.captions == "global":
    b, k, l, e = states_BKLE.shape
    states_BKLE = jnp.broadcast_to(states_BKLE.reshape(b, 1, k * l, e), (b, k, k * l, e))
    mask_BKL = jnp.broadcast_to(mask_BKL.reshape(b, 1, k * l), (b, k, k * l))
  return states_BKLE, mask_BKL


def apply(c: config_validation.Config, model: keyframe.KeyframeModel, kf_BKNC, clip_BKNC, t_BK, t_kf_BK, text,
          guidance_BK=None) -> jax.Array:
  """The network's output [B, K, F'*h*w, C'] for each shot's clip tokens (noisy, at t), given the
  keyframe tokens (clean, or lightly noised to t_kf) and text = (states, mask, pooled) per shot. The raw
  output: objective.velocity turns it into a velocity. The pooled vector (the adaLN input) stays each
  shot's own with either caption mode."""
  states, mask, pooled = text
  states, mask = _shot_text(c, states, mask)
  b, k, n_kf = kf_BKNC.shape[:3]
  kf_ids, clip_ids, txt_ids = position_ids(k, token_frames(c), keyframe.full_grid(c), states.shape[2],
                                           c.model.video.shot_gap)
  bcast = lambda ids: jnp.broadcast_to(jnp.asarray(ids), (b, *ids.shape))
  causal = c.model.video.shot_attention == "causal"
  if c.model.video.keyframes == "in_shot":  # one pair per shot: [caption; keyframe; clip], the shot's t
    img = jnp.concatenate([kf_BKNC, clip_BKNC], axis=2)
    ids = bcast(np.concatenate([kf_ids, clip_ids], axis=1))
    out = model.dit(img, ids, states, bcast(txt_ids[:k]), mask, t_BK, pooled, guidance_BK, causal=causal)
    return out[:, :, n_kf:]
  twice = lambda x: jnp.concatenate([x, x], axis=1)  # keyframe pairs (at t_kf), then clip pairs
  g = None if guidance_BK is None else twice(guidance_BK)
  _, out = model.dit((kf_BKNC, clip_BKNC), (bcast(kf_ids), bcast(clip_ids)), twice(states), bcast(txt_ids),
                     twice(mask), jnp.concatenate([t_kf_BK, t_BK], axis=1), twice(pooled), g, causal=causal)
  return out


def velocity(c: config_validation.Config, model: keyframe.KeyframeModel, kf_BKNC, clip_BKNC, t_BK, t_kf_BK, text,
             guidance_BK=None) -> jax.Array:
  """The flow velocity of the clip tokens (apply's output turned into one by config.objective.prediction).

  model.video.from_keyframe (x-prediction): the network predicts each clip token's change from its
  shot's keyframe token at the same (row, col), so an untrained network already holds the keyframe
  still (the final layer starts at zero) and training learns only the motion."""
  out = apply(c, model, kf_BKNC, clip_BKNC, t_BK, t_kf_BK, text, guidance_BK)
  if c.model.video.from_keyframe:
    out = out + jnp.tile(kf_BKNC, (1, 1, clip_BKNC.shape[2] // kf_BKNC.shape[2], 1))
  return objective.velocity(out, clip_BKNC, t_BK, c.objective.prediction)


def loss(c: config_validation.Config, model: keyframe.KeyframeModel, batch: dict, key: jax.Array):
  """objective.flow_loss on the clips of K shots, each shot its own t; the keyframes are conditions at
  t ~ U[objective.context_t] (0: clean) and carry no loss."""
  o = c.objective
  k_drop, k_flow, k_kf_t, k_kf_eps = jax.random.split(key, 4)
  text = objective.drop_captions(k_drop, *model.encode_text(batch), o.caption_dropout)
  kf, clips = shot_tokens(c, batch)
  b, k = kf.shape[:2]
  t_kf = jax.random.uniform(k_kf_t, (b, k), minval=o.context_t[0], maxval=o.context_t[1])
  kf_t = (1 - t_kf[..., None, None]) * kf + t_kf[..., None, None] * jax.random.normal(k_kf_eps, kf.shape, kf.dtype)
  guidance = jnp.full((b, k), o.guidance, jnp.float32) if c.model.guidance_embed else None
  return objective.flow_loss(lambda x_t, t: velocity(c, model, kf_t, x_t, t, t_kf, text, guidance), clips, k_flow, o)


def validate(c: config_validation.Config) -> None:
  """One-line ValueErrors for the model.video fields."""
  v = c.model.video
  if v.shot_attention not in SHOT_ATTENTION:
    raise ValueError(f"config.model.video.shot_attention={v.shot_attention!r}: expected one of {SHOT_ATTENTION}")
  if v.keyframes not in KEYFRAMES:
    raise ValueError(f"config.model.video.keyframes={v.keyframes!r}: expected one of {KEYFRAMES}")
  if v.from_keyframe and c.objective.prediction != "x":
    raise ValueError("config.model.video.from_keyframe=True predicts the clip as a change from its keyframe: it "
                     f"needs config.objective.prediction='x', not {c.objective.prediction!r}")
  if v.captions not in CAPTIONS:
    raise ValueError(f"config.model.video.captions={v.captions!r}: expected one of {CAPTIONS}")
  if not (isinstance(v.num_frames, int) and v.num_frames >= 2):
    raise ValueError(f"config.model.video.num_frames={v.num_frames!r}: expected an int >= 2 (a keyframe and more)")
  if not (isinstance(v.patch_t, int) and v.patch_t >= 1) or (v.num_frames - 1) % v.patch_t:
    raise ValueError(f"config.model.video.patch_t={v.patch_t!r}: must divide the {v.num_frames - 1} generated "
                     f"frames (model.video.num_frames - 1)")
  if not (isinstance(v.shot_gap, int) and v.shot_gap >= 0):
    raise ValueError(f"config.model.video.shot_gap={v.shot_gap!r}: expected an int >= 0")
  if c.objective.loss_pairs != "newest_group":
    raise ValueError(f"config.objective.loss_pairs={c.objective.loss_pairs!r}: the video model trains its clips "
                     "only ('newest_group'); the keyframes are clean conditions")
  if c.data.memory_levels != "none":
    raise ValueError(f"config.data.memory_levels={c.data.memory_levels!r}: the video model sees every keyframe "
                     "at full resolution ('none')")
  if not c.data.load_frames:
    raise ValueError("config.data.load_frames=False: the video model trains on each shot's frames")
  toy_world = c.data.path == "" and (input_space.of(c).pixels or c.data.toy.autoencoder)  # the run's data
  if toy_world and c.data.toy.num_frames != v.num_frames:
    raise ValueError(f"config.data.toy.num_frames={c.data.toy.num_frames} but config.model.video.num_frames="
                     f"{v.num_frames}: the toy world must render the model's frames per shot")
