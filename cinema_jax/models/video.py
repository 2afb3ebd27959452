"""The shot-video model: the keyframe model's MM-DiT over K shots of 3D (time, row, col) tokens.

Given every shot's keyframe (its first frame) and caption, it generates frames 1..F-1 of all K shots
at once (the paper's bottom-up stage; LCT's multi-shot layout). The network is the keyframe model
itself (keyframe.KeyframeModel: the same text encoder, blocks and parameter tree, so a keyframe or
FLUX checkpoint initialises it); only the token layout and the RoPE ids differ. The sequence is two
of the MM-DiT's pair groups:

  group 0  K keyframe pairs  [caption k; keyframe k]            clean conditions (t ~ U[objective.context_t], ~0)
  group 1  K clip pairs      [caption k; frames 1..F-1 of shot k] each shot its own t; these carry the loss

so every shot is modulated by its own timestep (per-pair adaLN), double-stream blocks see one shot's
keyframe or clip with its caption, and single-stream blocks see all 2K pairs: bidirectionally
(model.video.shot_attention="full", LCT's scene-level attention) or block-causally ("causal": shot k's
clip sees every keyframe and the clips of shots <= k, so shots can be extended one at a time).

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
import ml_collections
import numpy as np

from cinema_jax import objective
from cinema_jax.models import keyframe

SHOT_ATTENTION = ("full", "causal")
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


def clip_frames(c: ml_collections.ConfigDict) -> int:
  """Frames the model generates per shot (all but the keyframe)."""
  return c.model.video.num_frames - 1


def token_frames(c: ml_collections.ConfigDict) -> int:
  """F': the clip's frames in tokens along time."""
  return clip_frames(c) // c.model.video.patch_t


def shot_stride(c: ml_collections.ConfigDict) -> int:
  """RoPE time positions per shot: the keyframe slot, the clip's token frames and the gap."""
  return 1 + token_frames(c) + c.model.video.shot_gap


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


def pair_image_tokens(c: ml_collections.ConfigDict) -> list[int]:
  """Image tokens of each of the 2K pairs (keyframes, then clips)."""
  gh, gw = keyframe.full_grid(c)
  k = c.data.num_pairs
  return [gh * gw] * k + [token_frames(c) * gh * gw] * k


def shot_tokens(c: ml_collections.ConfigDict, batch: dict) -> tuple[jax.Array, jax.Array]:
  """(keyframe tokens [B, K, h*w, C'], clip tokens [B, K, F'*h*w, C']) of a pipeline batch.

  Pixels come as `frames` [B, K, F, H, W, 3] (frame 0 the keyframe; the toy world and PNG datasets),
  latents as `frame_latents` [B, K, F, h, w, C].
  """
  key = "frames" if c.model.vae_downsample == 1 else "frame_latents"
  v = c.model.video
  frames = batch[key]
  if frames.shape[2] != v.num_frames:
    raise ValueError(f"batch['{key}'] has {frames.shape[2]} frames per shot, config.model.video.num_frames is "
                     f"{v.num_frames}")
  return keyframe_tokens(c, frames[:, :, 0]), patchify(frames[:, :, 1:], v.patch_t, c.model.patch)


def keyframe_tokens(c: ml_collections.ConfigDict, keyframes_BKHWC: jax.Array) -> jax.Array:
  """A keyframe as a clip token: patch_t copies of itself along time."""
  pt = c.model.video.patch_t
  x = jnp.broadcast_to(keyframes_BKHWC[:, :, None], (*keyframes_BKHWC.shape[:2], pt, *keyframes_BKHWC.shape[2:]))
  return patchify(x, pt, c.model.patch)


def pair_text(c: ml_collections.ConfigDict, states_BKLE, mask_BKL, pooled_BKV):
  """Per-pair text of the 2K pairs: each shot's caption (model.video.captions="shot"), or every shot's
  captions in order ("global", the tiled scene caption), in both of the shot's pairs. The pooled vector
  (the adaLN input) stays the shot's own."""
  if c.model.video.captions == "global":
    b, k, l, e = states_BKLE.shape
    states_BKLE = jnp.broadcast_to(states_BKLE.reshape(b, 1, k * l, e), (b, k, k * l, e))
    mask_BKL = jnp.broadcast_to(mask_BKL.reshape(b, 1, k * l), (b, k, k * l))
  twice = lambda x: jnp.concatenate([x, x], axis=1)
  return twice(states_BKLE), twice(mask_BKL), twice(pooled_BKV)


def apply(c: ml_collections.ConfigDict, model: keyframe.KeyframeModel, kf_BKNC, clip_BKNC, t_B2K, text,
          guidance_B2K=None, first_shot: int = 0):
  """Network outputs (keyframe pairs', clip pairs') for keyframe and (noisy) clip tokens; t [B, 2K]
  (keyframes first); text = pair_text(...). The raw output: objective.velocity turns it into a velocity."""
  states, mask, pooled = text
  b, k = kf_BKNC.shape[:2]
  kf_ids, clip_ids, txt_ids = position_ids(k, token_frames(c), keyframe.full_grid(c), states.shape[2],
                                           c.model.video.shot_gap, first_shot)
  bcast = lambda ids: jnp.broadcast_to(jnp.asarray(ids), (b, *ids.shape))
  return model.dit((kf_BKNC, clip_BKNC), (bcast(kf_ids), bcast(clip_ids)), states, bcast(txt_ids), mask, t_B2K,
                   pooled, guidance_B2K, causal=c.model.video.shot_attention == "causal")


def loss(c: ml_collections.ConfigDict, model: keyframe.KeyframeModel, batch: dict, key: jax.Array):
  """Flow-matching loss on the clips of K shots, their keyframes clean conditions (objective.flow_loss
  with loss_pairs='newest_group': the clip group carries the loss, the keyframes get t ~ context_t)."""
  o = c.objective
  k_drop, k_flow = jax.random.split(key)
  text = pair_text(c, *objective.drop_captions(k_drop, *model.encode_text(batch), o.caption_dropout))
  kf, clips = shot_tokens(c, batch)
  b, k = kf.shape[:2]
  guidance = jnp.full((b, 2 * k), o.guidance, jnp.float32) if c.model.guidance_embed else None
  run = lambda x_t, t: objective.velocity(apply(c, model, *x_t, t, text, guidance), x_t, t, o.prediction)
  return objective.flow_loss(run, (kf, clips), k_flow, o, num_image_tokens=clips.shape[2])


def validate(c: ml_collections.ConfigDict) -> None:
  """One-line ValueErrors for the model.video fields."""
  v = c.model.video
  if v.shot_attention not in SHOT_ATTENTION:
    raise ValueError(f"config.model.video.shot_attention={v.shot_attention!r}: expected one of {SHOT_ATTENTION}")
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
  if c.data.path == "" and c.data.toy.num_frames != v.num_frames:
    raise ValueError(f"config.data.toy.num_frames={c.data.toy.num_frames} but config.model.video.num_frames="
                     f"{v.num_frames}: the toy world must render the model's frames per shot")
