"""Pre-computes what FLUX-size training reads: VAE latents, T5 token states, CLIP pooled vectors and
CLIP image embeddings, for every shot of a dataset of pixel records.

  python -m data_pipelines.precompute --src=runs/curated/train --dst=runs/latents/train \
      --vae=FLUX.1-dev/vae --t5=FLUX.1-dev/text_encoder_2 --clip=FLUX.1-dev/text_encoder \
      [--clip_vision=clip-vit-large-patch14] [--t5_len=512] [--text_convention=flux|masked] [--frames] \
      [--batch_size=16] [--process_id=I --num_processes=N]

Each encoder folder holds its config.json, safetensors weights and (text encoders) tokenizer.json, as
in a diffusers FLUX.1 pipeline folder (vae/, text_encoder_2/ with tokenizer_2/, text_encoder/ with
tokenizer/; a tokenizer is looked for in the folder, then in its sibling tokenizer folder).

The output is a dataset of the same movies and shots with `keyframe_latent` instead of the keyframe
PNG, `t5` (by --text_convention: FLUX's T5 states of every position of the caption padded to --t5_len,
or the caption's valid tokens only, the pipeline padding them), `clip_pooled` and, with --clip_vision,
`image_embedding` (and `text_embedding` when --clip_vision is a whole CLIP model); the trainer then never
runs an encoder. With --frames every shot frame's latent too (`frame_latents`, record schema 2), which
the video model (configs/video.py:paper) trains on. Without --t5 and --clip the captions stay text, for
models that run their own text encoder on a tokenizer's tokens (the toy world's, with its toy
autoencoder as --vae); the source's tokenizer.json comes along.
Process p of N encodes movies p, p+N, ... (several hosts or GPUs, no collectives). Each movie is
written whole to DST.work/ as it finishes and skipped when rerun, so a killed job resumes; the process
that finds every movie done assembles DST (atomically, as records.write_dataset does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any

import msgpack
import numpy as np

from cinema_jax import cli
from cinema_jax import encoders
from cinema_jax import errors
from cinema_jax import paths
from cinema_jax import toy_clip
from cinema_jax.models import clip
from cinema_jax.models import vae as vae_model
from cinema_jax.training import autoencoder
from data_pipelines import records
from data_pipelines import tokenizer
from data_pipelines import toy_dataset

@dataclasses.dataclass
class Encoders:
  """The encoders (cinema_jax/encoders.py): images uint8 [B, H, W, 3], captions list[str]."""

  vae: vae_model.AutoencoderKL | None  # None: keyframes and frames stay pixels (PNG); embeddings are added
  text: encoders.FluxText | None  # None: captions stay text (a model with its own text encoder)
  clip_vision: clip.CLIPVisionModelWithProjection | None
  # a whole CLIP model, or the toy world's ToyCLIP (the same interface): caption embeddings in its image space
  retrieval: encoders.ClipEmbedding | toy_clip.ToyClip | None = None

  def latents(self, images_BHWC: np.ndarray) -> np.ndarray:
    return encoders.VAEFrames(self.vae).encode(images_BHWC)

  def text_records(self, captions: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """(T5 states to store per caption [n, D], CLIP pooled vectors [B, D]): by the text convention, every
    position of the padded caption ("flux") or the caption's valid tokens only ("masked": the pipeline pads)."""
    if self.text is None:
      return [None] * len(captions), [None] * len(captions)
    states, mask = self.text.t5_states(captions)
    return [s[:int(m.sum())] for s, m in zip(states, mask)], self.text.pooled(captions)

  @property
  def embeds_images(self) -> bool:
    return self.clip_vision is not None or self.retrieval is not None

  def image_embeddings(self, images_BHWC: np.ndarray) -> np.ndarray:
    if self.clip_vision is None:  # ToyCLIP: no separate vision tower
      return self.retrieval.images(images_BHWC)
    return encoders.image_embeddings(self.clip_vision, images_BHWC)

  def text_embeddings(self, captions: list[str]) -> list[np.ndarray | None]:
    """The captions in the CLIP space of the image embeddings (None without a whole CLIP model)."""
    if self.retrieval is None:
      return [None] * len(captions)
    return list(self.retrieval.texts(captions))


def load_encoders(vae_path: str, t5_path: str, clip_path: str, clip_vision_path: str = "", t5_len: int = 512,
                  dtype: str = "float32", text_convention: str = "flux") -> Encoders:
  """The encoders of a FLUX pipeline folder's parts (or any checkpoints of these architectures).
  clip_vision_path: a CLIP vision tower, or a whole CLIP model (then captions are embedded too, for
  retrieval by image: the text tower and projection of the same model)."""
  vision = retrieval = None
  if clip_vision_path:
    if encoders.config_json(clip_vision_path).get("model_type") == "clip":
      retrieval = encoders.ClipEmbedding.load(clip_vision_path, dtype=dtype)
      vision = retrieval.vision
    else:
      vision = encoders.load_clip_vision(clip_vision_path, dtype)
  if bool(t5_path) != bool(clip_path):
    raise ValueError("--t5 and --clip go together (FLUX conditions on both), or neither (captions stay text)")
  return Encoders(vae=encoders.load_vae(vae_path, dtype),
                  text=encoders.FluxText.load(t5_path, clip_path, t5_len, text_convention, dtype) if t5_path else None,
                  clip_vision=vision, retrieval=retrieval)


def _differ(made: dict | None, now: dict) -> str:
  if made is None:
    return "none recorded"
  return ", ".join(f"{k}={made.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(made) | set(now))
                   if made.get(k) != now.get(k))


def _claim_work(work: str, settings: dict, overwrite: bool) -> None:
  """The work folder's movies were encoded with `settings` (recorded on first use), or it starts again
  (overwrite), or a one-line refusal: movies made two ways never mix in one dataset."""
  path = os.path.join(work, "settings.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      made = json.load(f)
    if made == settings:
      return
    if not overwrite:
      raise errors.DataError(f"{work} holds movies encoded with other settings ({_differ(made, settings)}); rerun "
                             "with those, or --overwrite to start again")
    shutil.rmtree(work)
  os.makedirs(work, exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(settings, f, sort_keys=True)
  os.replace(tmp, path)


def _movie_file(work: str, m: int) -> str:
  return os.path.join(work, f"movie-{m:06d}.msgpack")


def encode_movie(reader: records.ShotReader, movie: dict[str, Any], enc: Encoders, batch_size: int,
                 frames: bool = False) -> list[bytes]:
  """The movie's shots as records with latents and embeddings (frames: every shot frame's latent too), in
  shot order. Every encoder call sees batch_size shots (a movie's last chunk is padded), so each encoder
  compiles once for the whole job."""
  out = []
  recs = movie["records"]
  for start in range(0, len(recs), batch_size):
    chunk = [reader.read_pixels(r, frames=frames) for r in recs[start:start + batch_size]]
    shots = [s for s, _, _ in chunk]
    if any(k is None for _, k, _ in chunk):
      raise errors.DataError(f"{reader.path}: movie {movie['movie_id']} already holds latents, not keyframe pixels")
    pad = batch_size - len(chunk)
    images = np.stack([k for _, k, _ in chunk] + [np.zeros_like(chunk[0][1])] * pad)
    captions = [s.caption for s in shots] + [shots[-1].caption] * pad
    pixels = enc.vae is None
    latents = [None] * len(captions) if pixels else enc.latents(images)
    states, pooled = enc.text_records(captions)
    embeds = enc.image_embeddings(images) if enc.embeds_images else [None] * len(captions)
    frame_latents = [None] * len(chunk)
    if frames and not pixels:  # the frames batch_size at a time: the keyframes' compiled shape, and their memory
      clips = np.stack([f for _, _, f in chunk] + [np.zeros_like(chunk[0][2])] * pad)  # [B, F, H, W, 3]
      flat = clips.reshape(-1, *clips.shape[2:])
      lat = np.concatenate([enc.latents(flat[i:i + batch_size]) for i in range(0, len(flat), batch_size)])
      frame_latents = list(lat.reshape(*clips.shape[:2], *lat.shape[1:])[:len(chunk)])
    for s, lat, fl, st, po, em, te in zip(shots, latents, frame_latents, states, pooled, embeds,
                                          enc.text_embeddings(captions)):
      kept = {"keyframe_png": s.keyframe_png, "frames_png": s.frames_png} if pixels else {
          "keyframe_png": None, "frames_png": None, "keyframe_latent": lat, "frame_latents": fl}
      out.append(dataclasses.replace(s, **kept, t5=st, clip_pooled=po, image_embedding=em,
                                     text_embedding=te).to_bytes())
  return out


def check_destination(dst: str, settings: dict | None, overwrite: bool) -> bool:
  """True when DST is already complete with these settings; refuses in one line a DST that is a file, holds
  what this command did not write, or (without overwrite) latents made with other settings."""
  paths.writable_folder(dst, "--dst")
  if os.path.exists(os.path.join(dst, records.INDEX_FILE)):
    made = records.Index.load(dst).info.get("precompute_settings")
    if settings is None or made == settings:
      return True
    if not overwrite:
      raise errors.DataError(f"--dst={dst} holds latents made with other settings ({_differ(made, settings)}); give "
                             "another --dst, or --overwrite to make it again")
  elif os.path.isdir(dst) and os.listdir(dst):
    raise errors.DataError(f"--dst={dst} holds other files ({', '.join(sorted(os.listdir(dst))[:3])}), not a dataset "
                           "this command wrote; give a new or empty folder")
  return False


def run(src: str, dst: str, enc: Encoders, process_id: int = 0, num_processes: int = 1, batch_size: int = 16,
        log=print, frames: bool = False, settings: dict | None = None, overwrite: bool = False) -> bool:
  """Encodes this process's movies; assembles DST when every movie is done. True when DST is complete.
  frames: also every shot frame's latent (the video model's input; the source must store frames); with
  enc.vae None, the frames are kept as they are. settings: what made the encoders (the command's flags):
  DST and its work folder record them, and a rerun with other settings is refused unless overwrite (which
  starts again); a DST folder that is not this command's output is always refused."""
  if not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id}: expected 0 <= id < --num_processes={num_processes}")
  work = f"{os.path.abspath(dst)}.work"
  settings = None if settings is None else json.loads(json.dumps(dict(settings, src=os.path.abspath(src),
                                                                      frames=frames)))
  if check_destination(dst, settings, overwrite):
    log(f"{dst} is complete")
    return True
  if settings is not None:
    _claim_work(work, settings, overwrite)
  reader = records.ShotReader(src)
  if frames and not reader.index.num_frames:
    raise errors.DataError(f"--frames: {src} stores no shot frames (curate with --frames N, or toy_movies)")
  os.makedirs(work, exist_ok=True)
  mine = list(range(process_id, len(reader.index.movies), num_processes))
  todo = [m for m in mine if not os.path.exists(_movie_file(work, m))]
  log(f"process {process_id} of {num_processes}: {len(mine)} movies, {len(mine) - len(todo)} already done")
  start = time.perf_counter()
  for i, m in enumerate(todo):
    data = msgpack.packb(encode_movie(reader, reader.index.movies[m], enc, batch_size, frames), use_bin_type=True)
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
  info = dict(reader.index.info, precomputed=True, **({"precompute_settings": settings} if settings else {}))
  if enc.text is not None:
    info.update(text_convention=enc.text.convention, text_len=enc.text.text_len)
  try:
    records.write_dataset(dst, movies, num_shards=len(reader.index.shards), info=info, overwrite=overwrite,
                          num_frames=reader.index.num_frames if frames or enc.vae is None else 0)
  except (errors.DataError, OSError):
    if not os.path.exists(os.path.join(dst, records.INDEX_FILE)):  # another process did not just finish it
      raise
  if enc.text is None:
    _copy_tokenizer(src, dst)
  shutil.rmtree(work, ignore_errors=True)
  log(f"{dst}: {sum(len(m['records']) for m in reader.index.movies)} shots with latents and embeddings")
  return True


def train_path(data_config, workdir: str, log=print, build: bool = False) -> str:
  """The training records a data config reads: config.data.path, or the toy world's under workdir, in the
  latents of config.data.toy.autoencoder when one is named (`toy_latents`), or as pixels with ToyCLIP's
  embeddings for retrieval by image (`toy_embeddings`). build: make what is missing
  (cinema_jax/training/prepare.py); otherwise what is missing is a one-line error."""
  if data_config.path:
    return data_config.path
  if data_config.toy.autoencoder:
    return toy_latents(data_config, workdir, log, build)
  if data_config.context_order == "image":
    return toy_embeddings(data_config, workdir, log, build)
  return toy_dataset.train_path(data_config, workdir, log, build)


def toy_embeddings(data_config, workdir: str, log=print, build: bool = True) -> str:
  """The toy world's training split in pixels with ToyCLIP's embeddings of keyframes and captions (what
  retrieval by image reads, as CLIP's on real data), pre-computed on first use beside the world:
  <toy root>/embedded-<digest of ToyCLIP and the options>/train."""
  root = toy_dataset.root_for_config(data_config, workdir, log, build)
  clip_file = toy_clip.resolve(data_config, workdir, log, build)
  digest = hashlib.sha1()
  with open(clip_file, "rb") as fh:
    digest.update(fh.read())
  digest.update(f"frames={bool(data_config.load_frames)}".encode())
  dst = os.path.join(root, f"embedded-{digest.hexdigest()[:10]}", "train")
  if not os.path.exists(os.path.join(dst, records.INDEX_FILE)):
    if not build:
      raise errors.DataError(f"the toy world's ToyCLIP embeddings are not pre-computed ({dst}): the training "
                             f"command does it (python -m cinema_jax.train --config=... --workdir={workdir})")
    log(f"pre-computing ToyCLIP's embeddings of the toy world into {dst}")
    enc = Encoders(vae=None, text=None, clip_vision=None, retrieval=toy_clip.load(clip_file))
    run(os.path.join(root, "train"), dst, enc, frames=bool(data_config.load_frames), log=log)
  return dst


def toy_latents(data_config, workdir: str, log=print, build: bool = True) -> str:
  """The toy world's training split as latents of the autoencoder folder config.data.toy.autoencoder (and
  every shot frame's, with config.data.load_frames; with context_order "image", ToyCLIP's embeddings of
  keyframes and captions), pre-computed on first use beside the world:
  <toy root>/latents-<digest of the autoencoder, ToyCLIP and the options>/train."""
  ae = data_config.toy.autoencoder
  files = [os.path.join(ae, "config.json"), os.path.join(ae, "diffusion_pytorch_model.safetensors")]
  if not all(os.path.exists(f) for f in files):
    parent, leaf = os.path.split(os.path.normpath(ae))
    make = (f"--workdir={parent or '.'} (it ends by writing {ae})" if leaf == autoencoder.EXPORT_DIR else
            f"--workdir=AE and pass --config.data.toy.autoencoder=AE/{autoencoder.EXPORT_DIR}")
    raise errors.DataError(f"config.data.toy.autoencoder={ae!r}: no autoencoder there; train the toy autoencoder "
                           f"first: python -m cinema_jax.train --config=configs/autoencoder.py:toy {make}")
  root = toy_dataset.root_for_config(data_config, workdir, log, build)
  embedding = None
  if data_config.context_order == "image":  # retrieval by image reads the records' embeddings (as CLIP's)
    files.append(toy_clip.resolve(data_config, workdir, log, build))
    embedding = toy_clip.load(files[-1])
  digest = hashlib.sha1()
  for f in files:
    with open(f, "rb") as fh:
      digest.update(fh.read())
  digest.update(f"frames={bool(data_config.load_frames)}".encode())
  dst = os.path.join(root, f"latents-{digest.hexdigest()[:10]}", "train")
  if not os.path.exists(os.path.join(dst, records.INDEX_FILE)) and not build:
    raise errors.DataError(f"the toy world's latents of {ae} are not pre-computed ({dst}): the training command "
                           f"does it (python -m cinema_jax.train --config=... --workdir={workdir})")
  if not os.path.exists(os.path.join(dst, records.INDEX_FILE)):
    log(f"pre-computing the toy world's latents with {ae} into {dst}")
    enc = dataclasses.replace(load_encoders(ae, "", ""), retrieval=embedding)
    run(os.path.join(root, "train"), dst, enc, frames=bool(data_config.load_frames), log=log)
  return dst


def _copy_tokenizer(src: str, dst: str) -> None:
  """The source's tokenizer.json into DST (captions stay text: the model tokenises them as before)."""
  try:
    path = tokenizer.beside(src)
  except FileNotFoundError:
    return
  out = os.path.join(dst, tokenizer.FILE)
  if not os.path.exists(out):
    shutil.copyfile(path, f"{out}.tmp-{os.getpid()}")
    os.replace(f"{out}.tmp-{os.getpid()}", out)


def main(argv) -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  f = {
      "src": flags.DEFINE_string("src", None, "Dataset of pixel records.", required=True),
      "dst": flags.DEFINE_string("dst", None, "Output dataset.", required=True),
      "vae": flags.DEFINE_string("vae", None, "AutoencoderKL folder (config.json + safetensors).", required=True),
      "t5": flags.DEFINE_string("t5", "", "T5 encoder folder (+ tokenizer.json); none: captions stay text."),
      "clip": flags.DEFINE_string("clip", "", "CLIP text encoder folder (+ tokenizer.json); with --t5."),
      "clip_vision": flags.DEFINE_string("clip_vision", "", "CLIP vision tower folder (image embeddings), or a whole "
                                         "CLIP model (also caption embeddings: context_order 'image' training)."),
      "t5_len": flags.DEFINE_integer("t5_len", 512, "T5 tokens per caption (FLUX.1-dev: 512; the model's "
                                     "config.data.text_len).", lower_bound=1),
      "text_convention": flags.DEFINE_enum("text_convention", "flux", encoders.TEXT_CONVENTIONS,
                                           "The model's config.model.text_convention: 'flux' keeps T5's states of "
                                           "every position of the padded caption, unmasked (FLUX.1-dev); 'masked' "
                                           "the caption's tokens only."),
      "batch_size": flags.DEFINE_integer("batch_size", 16, "Shots per encoder call.", lower_bound=1),
      "frames": flags.DEFINE_bool("frames", False, "Also each shot frame's VAE latent (the video model's input)."),
      "process_id": flags.DEFINE_integer("process_id", 0, "This process's index.", lower_bound=0),
      "num_processes": flags.DEFINE_integer("num_processes", 1, "How many processes share the work.", lower_bound=1),
      "overwrite": flags.DEFINE_bool("overwrite", False, "Make --dst again when it (or its work folder) was made "
                                     "with other settings."),
  }

  def go(args):
    if len(args) > 1:
      sys.exit(f"error: unexpected arguments {args[1:]}")
    v = {k: flag.value for k, flag in f.items()}
    try:
      # everything the flags name is checked before the encoders load (minutes for T5-XXL)
      records.Index.load(paths.existing(v["src"], "--src", "folder"))
      for flag in ("vae", "t5", "clip", "clip_vision"):
        if v[flag]:
          paths.existing(v[flag], f"--{flag}", "folder")
      if not 0 <= v["process_id"] < v["num_processes"]:
        raise ValueError(f"--process_id={v['process_id']}: expected 0 <= id < --num_processes={v['num_processes']}")
      check_destination(v["dst"], None, v["overwrite"])
      enc = load_encoders(v["vae"], v["t5"], v["clip"], v["clip_vision"], v["t5_len"],
                          text_convention=v["text_convention"])
      settings = {k: v[k] for k in ("vae", "t5", "clip", "clip_vision", "t5_len", "text_convention")}
      run(v["src"], v["dst"], enc, v["process_id"], v["num_processes"], v["batch_size"], frames=v["frames"],
          settings=settings, overwrite=v["overwrite"])
    except (ValueError, FileNotFoundError, errors.DataError) as e:
      sys.exit(f"error: {e}")

  app.run(go, argv=argv, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  main(sys.argv)
