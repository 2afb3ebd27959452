"""Pre-computes what FLUX-size training reads: VAE latents, T5 token states, CLIP pooled vectors and
CLIP image embeddings, for every shot of a dataset of pixel records.

  python -m data_pipelines.precompute --src=runs/curated/train --dst=runs/latents/train \
      --vae=FLUX.1-dev/vae --t5=FLUX.1-dev/text_encoder_2 --clip=FLUX.1-dev/text_encoder \
      [--clip_vision=clip-vit-large-patch14] [--t5_len=512] [--batch_size=16] [--process_id=I --num_processes=N]

Each encoder folder holds its config.json, safetensors weights and (text encoders) tokenizer.json, as
in a diffusers FLUX.1 pipeline folder (vae/, text_encoder_2/ with tokenizer_2/, text_encoder/ with
tokenizer/; a tokenizer is looked for in the folder, then in its sibling tokenizer folder).

The output is a dataset of the same movies and shots with `keyframe_latent` instead of the keyframe
PNG, `t5` (the caption's valid tokens only: the pipeline pads), `clip_pooled` and, with --clip_vision,
`image_embedding`; the keyframe trainer then never runs an encoder. Shot frames stay in the pixel
dataset (record schema 1 stores frames only beside PNG keyframes).
Process p of N encodes movies p, p+N, ... (several hosts or GPUs, no collectives). Each movie is
written whole to DST.work/ as it finishes and skipped when rerun, so a killed job resumes; the process
that finds every movie done assembles DST (atomically, as records.write_dataset does).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import msgpack
import numpy as np

from cinema_jax.convert import text as text_convert
from cinema_jax.convert import vae as vae_convert
from cinema_jax.models import clip
from cinema_jax.models import t5
from cinema_jax.models import vae
from data_pipelines import records

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # CLIP's image normalisation
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def _config_json(path: str) -> dict:
  f = os.path.join(path, "config.json")
  if not os.path.exists(f):
    raise FileNotFoundError(f"{path}: no config.json (an encoder folder holds config.json and safetensors)")
  with open(f) as fh:
    return json.load(fh)


def _pick(d: dict, cls) -> dict:
  """The fields of dataclass cls that config.json d sets (its dtype is not ours: that is a flag)."""
  return {f.name: (tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name])
          for f in dataclasses.fields(cls)
          if f.name in d and d[f.name] is not None and f.name not in ("dtype", "param_dtype")}


def _tokenizer(path: str, max_len: int) -> text_convert.Tokenizer:
  for folder in (path, os.path.join(os.path.dirname(path.rstrip("/")), os.path.basename(path.rstrip("/")).replace(
      "text_encoder", "tokenizer"))):
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
      return text_convert.Tokenizer(os.path.join(folder, "tokenizer.json"), max_len)
  raise FileNotFoundError(f"{path}: no tokenizer.json there or in its tokenizer folder")


@dataclasses.dataclass
class Encoders:
  """The encoders and their jitted functions: images uint8 [B, H, W, 3], captions list[str]."""

  vae: vae.AutoencoderKL
  t5: t5.T5EncoderModel
  t5_tokenizer: text_convert.Tokenizer
  clip_text: clip.CLIPTextModel
  clip_tokenizer: text_convert.Tokenizer
  clip_vision: clip.CLIPVisionModelWithProjection | None
  image_size: int = 224

  def latents(self, images_BHWC: np.ndarray) -> np.ndarray:
    return np.asarray(_latents(self.vae, jnp.asarray(images_BHWC)))

  def text(self, captions: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """(T5 states of each caption's valid tokens [n, D], CLIP pooled vectors [B, D])."""
    ids, mask = self.t5_tokenizer(captions)
    states = np.asarray(_t5(self.t5, jnp.asarray(ids), jnp.asarray(mask)))
    cids, cmask = self.clip_tokenizer(captions)
    pooled = np.asarray(_clip_text(self.clip_text, jnp.asarray(cids), jnp.asarray(cmask)))
    return [s[:int(m.sum())] for s, m in zip(states, mask)], pooled

  def image_embeddings(self, images_BHWC: np.ndarray) -> np.ndarray:
    return np.asarray(_clip_image(self.clip_vision, jnp.asarray(images_BHWC), self.image_size))


@nnx.jit
def _latents(model, images):
  return model.latents(images.astype(jnp.float32) / 127.5 - 1.0)


@nnx.jit
def _t5(model, ids, mask):
  return model(ids, mask)


@nnx.jit
def _clip_text(model, ids, mask):
  return model(ids, mask)[1]


@nnx.jit(static_argnums=2)
def _clip_image(model, images, size):
  """Centre square crop, resized to the tower's input (bicubic), CLIP-normalised."""
  _, h, w, _ = images.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  x = images[:, top:top + side, left:left + side].astype(jnp.float32) / 255.0
  x = jax.image.resize(x, (x.shape[0], size, size, 3), "bicubic")
  return model((x - CLIP_MEAN) / CLIP_STD)


def load_encoders(vae_path: str, t5_path: str, clip_path: str, clip_vision_path: str = "", t5_len: int = 512,
                  dtype: str = "float32") -> Encoders:
  """The encoders of a FLUX pipeline folder's parts (or any checkpoints of these architectures)."""
  # diffusers' AutoencoderKL defaults where config.json is silent (FLUX's file sets all of these)
  v = {"scaling_factor": 0.18215, "shift_factor": 0.0, "use_quant_conv": True, "use_post_quant_conv": True,
       **{k: x for k, x in _config_json(vae_path).items() if x is not None}}
  vcfg = vae.VAEConfig(**_pick(v, vae.VAEConfig), dtype=dtype)
  vae_model = vae.AutoencoderKL(vcfg, nnx.Rngs(0))
  vae_convert.load_into(vae_model, vae_convert.load_state_dict(vae_path))

  tj = _config_json(t5_path)
  if tj.get("feed_forward_proj", "gated-gelu") != "gated-gelu":
    raise ValueError(f"{t5_path}: feed_forward_proj={tj['feed_forward_proj']!r}; T5 v1.1 (gated-gelu) is supported")
  t5_model = t5.T5EncoderModel(t5.T5Config(**_pick(tj, t5.T5Config), dtype=dtype), nnx.Rngs(0))
  text_convert.load_t5(t5_model, text_convert.load_state_dict(t5_path))

  cj = _config_json(clip_path)
  cj = cj.get("text_config", cj) if cj.get("model_type") == "clip" else cj
  ccfg = clip.CLIPConfig(**_pick(cj, clip.CLIPConfig), dtype=dtype)
  clip_text = clip.CLIPTextModel(ccfg, nnx.Rngs(0))
  text_convert.load_clip(clip_text, text_convert.load_state_dict(clip_path))

  vision, size = None, 224
  if clip_vision_path:
    vj = _config_json(clip_vision_path)
    vj = vj.get("vision_config", vj) if vj.get("model_type") == "clip" else vj
    vision_cfg = clip.CLIPConfig(**_pick(vj, clip.CLIPConfig), dtype=dtype)
    vision, size = clip.CLIPVisionModelWithProjection(vision_cfg, nnx.Rngs(0)), vision_cfg.image_size
    text_convert.load_clip(vision, text_convert.load_state_dict(clip_vision_path))
  return Encoders(vae=vae_model, t5=t5_model, t5_tokenizer=_tokenizer(t5_path, t5_len), clip_text=clip_text,
                  clip_tokenizer=_tokenizer(clip_path, ccfg.max_position_embeddings), clip_vision=vision,
                  image_size=size)


def _movie_file(work: str, m: int) -> str:
  return os.path.join(work, f"movie-{m:06d}.msgpack")


def encode_movie(reader: records.ShotReader, movie: dict[str, Any], enc: Encoders, batch_size: int) -> list[bytes]:
  """The movie's shots as records with latents and embeddings, in shot order."""
  out = []
  recs = movie["records"]
  for start in range(0, len(recs), batch_size):
    chunk = [reader.read_pixels(r, frames=False) for r in recs[start:start + batch_size]]
    shots = [s for s, _, _ in chunk]
    if any(k is None for _, k, _ in chunk):
      raise records.DataError(f"{reader.path}: movie {movie['movie_id']} already holds latents, not keyframe pixels")
    images = np.stack([k for _, k, _ in chunk])
    latents = enc.latents(images)
    states, pooled = enc.text([s.caption for s in shots])
    embeds = enc.image_embeddings(images) if enc.clip_vision is not None else [None] * len(shots)
    for s, lat, st, po, em in zip(shots, latents, states, pooled, embeds):
      out.append(dataclasses.replace(s, keyframe_png=None, frames_png=None, keyframe_latent=lat, t5=st,
                                     clip_pooled=po, image_embedding=em).to_bytes())
  return out


def run(src: str, dst: str, enc: Encoders, process_id: int = 0, num_processes: int = 1, batch_size: int = 16,
        log=print) -> bool:
  """Encodes this process's movies; assembles DST when every movie is done. True when DST is complete."""
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id}: expected 0 <= id < --num_processes={num_processes}")
  if os.path.exists(os.path.join(dst, records.INDEX_FILE)):
    log(f"{dst} is complete")
    return True
  reader = records.ShotReader(src)
  work = f"{os.path.abspath(dst)}.work"
  os.makedirs(work, exist_ok=True)
  mine = list(range(process_id, len(reader.index.movies), num_processes))
  todo = [m for m in mine if not os.path.exists(_movie_file(work, m))]
  log(f"process {process_id} of {num_processes}: {len(mine)} movies, {len(mine) - len(todo)} already done")
  start = time.perf_counter()
  for i, m in enumerate(todo):
    data = msgpack.packb(encode_movie(reader, reader.index.movies[m], enc, batch_size), use_bin_type=True)
    tmp = f"{_movie_file(work, m)}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, _movie_file(work, m))  # whole or absent: a killed run redoes only unfinished movies
    rate = (i + 1) / (time.perf_counter() - start)
    log(f"  movie {m} ({i + 1}/{len(todo)}), {rate:.2f} movies/s, {(len(todo) - i - 1) / rate:.0f} s left")
  missing = [m for m in range(len(reader.index.movies)) if not os.path.exists(_movie_file(work, m))]
  if missing:
    log(f"{len(missing)} movies are not done yet (other processes); the last process to finish assembles {dst}")
    return False
  movies = ([records.Shot.from_bytes(b) for b in msgpack.unpackb(open(_movie_file(work, m), "rb").read(), raw=False)]
            for m in range(len(reader.index.movies)))
  info = dict(reader.index.info, precomputed=True)
  try:
    records.write_dataset(dst, movies, num_shards=len(reader.index.shards), info=info)
  except (records.DataError, OSError):
    if not os.path.exists(os.path.join(dst, records.INDEX_FILE)):  # another process did not just finish it
      raise
  shutil.rmtree(work, ignore_errors=True)
  log(f"{dst}: {sum(len(m['records']) for m in reader.index.movies)} shots with latents and embeddings")
  return True


def main(argv) -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  f = {
      "src": flags.DEFINE_string("src", None, "Dataset of pixel records.", required=True),
      "dst": flags.DEFINE_string("dst", None, "Output dataset.", required=True),
      "vae": flags.DEFINE_string("vae", None, "AutoencoderKL folder (config.json + safetensors).", required=True),
      "t5": flags.DEFINE_string("t5", None, "T5 encoder folder (+ tokenizer.json).", required=True),
      "clip": flags.DEFINE_string("clip", None, "CLIP text encoder folder (+ tokenizer.json).", required=True),
      "clip_vision": flags.DEFINE_string("clip_vision", "", "CLIP vision tower folder (image embeddings)."),
      "t5_len": flags.DEFINE_integer("t5_len", 512, "T5 tokens per caption (FLUX.1-dev: 512)."),
      "batch_size": flags.DEFINE_integer("batch_size", 16, "Shots per encoder call."),
      "process_id": flags.DEFINE_integer("process_id", 0, "This process's index."),
      "num_processes": flags.DEFINE_integer("num_processes", 1, "How many processes share the work."),
  }

  def go(args):
    if len(args) > 1:
      sys.exit(f"error: unexpected arguments {args[1:]}")
    v = {k: flag.value for k, flag in f.items()}
    try:
      enc = load_encoders(v["vae"], v["t5"], v["clip"], v["clip_vision"], v["t5_len"])
      run(v["src"], v["dst"], enc, v["process_id"], v["num_processes"], v["batch_size"])
    except (ValueError, FileNotFoundError, records.DataError) as e:
      sys.exit(f"error: {e}")

  app.run(go, argv=argv)


if __name__ == "__main__":
  main(sys.argv)
