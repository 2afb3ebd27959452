"""What sampling loads: a model's parameters only, and the encoders around it.

Parameters come from a training workdir (the EMA copy, or the raw parameters: a partial Orbax restore
that reads neither the optimizer's moments nor the other copy) or from a converted FLUX folder
(`python -m cinema_jax.convert.flux`), straight onto a mesh of the sampler's own in the sampling dtype.
The encoders (cinema_jax/encoders.py) come from the folders named in config.sample.encoders (or the
sample command's flags): T5 and CLIP for models on T5/CLIP states, the VAE for latent models, and a
whole CLIP model for retrieval by image on real data (ToyCLIP on the toy world).
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
from flax import nnx
import jax
import orbax.checkpoint as ocp

from cinema_jax import checkpoints
from cinema_jax import config_validation
from cinema_jax import encoders
from cinema_jax import input_space
from cinema_jax import sharding
from cinema_jax import toy_clip
from cinema_jax.models import keyframe
from configs import keyframe as keyframe_config
from configs import video as video_config


def sampling_dtype(name: str) -> str:
  """config.sample.param_dtype: "auto" is bfloat16 on accelerators, float32 on CPUs."""
  if name == "auto":
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return name  # (config_validation.Sample checked it)


def saved_config(workdir: str) -> config_validation.Config:
  """A workdir's training config, over today's defaults of its variant (fields added since it was saved),
  loaded (validated) as the train command loads it; sampling reads no training data."""
  def defaults(raw):
    if raw.get("task", "keyframe") == "video":
      c = video_config.get_config(raw.get("variant", "paper"))
    else:
      c = keyframe_config.get_config(raw.get("variant", "flux_dev"))
    if "text_convention" not in raw.get("data", {}):  # runs from before the field trained the masked way
      c.data.text_convention = "masked"
    if "autoencoder" not in raw.get("data", {}).get("toy", {}):  # runs from before the toy latents: pixels
      c.data.toy.autoencoder = ""
    return c

  return config_validation.load(checkpoints.saved_config(workdir, defaults), reads_data=False)


def _target(c: config_validation.Config, mesh, dtype: str, model=None):
  """(graphdef, abstract parameters placed on mesh by the rules table, in dtype)."""
  graphdef, abstract = nnx.split(keyframe.abstract(c) if model is None else model)
  shardings = sharding.param_shardings(abstract, mesh)
  return graphdef, jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype, sharding=s),
                                nnx.to_pure_dict(abstract), shardings)


def restore_params(workdir: str, c: config_validation.Config, raw_params: bool = False, dtype: str = "float32",
                   mesh=None, model=None) -> tuple[Any, dict, int]:
  """(graphdef, parameters, step) of the latest checkpoint: the EMA copy (or the raw parameters, or the
  only copy a run without EMA keeps), and nothing else of the training state. model: the abstract
  model the checkpoint holds (default: the keyframe or video model of c)."""
  mesh = mesh or sharding.make_mesh(c.mesh)
  graphdef, target = _target(c, mesh, dtype, model)
  which = "params" if raw_params or not c.optimizer.ema_decay > 0 else "ema"
  mngr = checkpoints.manager(workdir, read_only=True)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(os.path.abspath(workdir), checkpoints.CHECKPOINT_DIR)}")
  # read in the dtype it was saved in, verified against its checksums, then cast: a damaged checkpoint
  # is refused (errors.CheckpointError), never sampled from
  saved_dtype = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, c.model.param_dtype, sharding=x.sharding),
                             target)
  try:
    restored = checkpoints.restore_params(mngr, step, {which: saved_dtype})[which]
  finally:
    mngr.close()
  if c.model.param_dtype != dtype:
    restored = jax.tree.map(lambda x: _cast_and_free(x, dtype), restored)
  return graphdef, restored, step


def _cast_and_free(x: jax.Array, dtype: str) -> jax.Array:
  """x in dtype, x's own buffers freed: cast array by array, the load's peak is the saved copy (FLUX.1-dev's
  float32 transformer, 44 GiB), not the saved copy and the cast one together."""
  y = x.astype(dtype)
  x.delete()  # the runtime frees it once the cast that reads it is done
  return y


def converted_params(path: str, c: config_validation.Config, dtype: str = "float32", mesh=None) -> tuple[Any, dict]:
  """(graphdef, parameters) of a converted FLUX folder (its params/: the MM-DiT's), for config c's model."""
  if c.model.text_encoder != "precomputed":
    raise ValueError(f"--flux={path}: a FLUX transformer conditions on T5/CLIP states; config variant {c.variant!r} "
                     "is a toy model (config.model.text_encoder='tokens')")
  params_dir = os.path.join(os.path.abspath(path), "params")
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f"--flux={path}: no converted parameters there ({params_dir}); make them with "
                            "python -m cinema_jax.convert.flux --src CHECKPOINT --dst DIR")
  mesh = mesh or sharding.make_mesh(c.mesh)
  graphdef, target = _target(c, mesh, dtype)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      dit = ckptr.restore(params_dir, target["dit"])
  except (ValueError, KeyError) as e:
    raise ValueError(f"--flux={path} does not fit the config's model: {str(e).splitlines()[0]}") from None
  return graphdef, {"dit": dit}


def load(workdir: str, raw_params: bool = False, dtype: str = "auto"):
  """(config, graphdef, sampling params, step) of the latest checkpoint in workdir (EMA unless raw)."""
  c = saved_config(workdir)
  graphdef, params, step = restore_params(workdir, c, raw_params, sampling_dtype(dtype))
  return c, graphdef, params, step


def encoders_for(c: config_validation.Config, dtype: str = "float32", mesh=None):
  """(text, frames) for the Sampler: None where the model needs none (its own tokenizer's tokens,
  pixel frames), else loaded from config.sample.encoders; one-line errors for what is missing."""
  e = c.sample.encoders
  text = frames = None
  if c.model.text_encoder == "precomputed":
    if not e.t5 or not e.clip:
      raise ValueError("this model conditions on T5 states and CLIP pooled vectors: give the encoder folders "
                       "(--t5=FLUX.1-dev/text_encoder_2 --clip=FLUX.1-dev/text_encoder, or config.sample.encoders)")
    text = encoders.FluxText.load(e.t5, e.clip, c.data.text_len, c.data.text_convention, dtype, mesh=mesh,
                                  t5_on_host=bool(e.t5_on_host))
  space = input_space.of(c)
  if not space.pixels:
    vae_path = e.vae or c.data.toy.autoencoder  # the toy world's own autoencoder
    if not vae_path:
      raise ValueError("this model makes VAE latents: give the autoencoder folder (--vae=FLUX.1-dev/vae, or "
                       "config.sample.encoders.vae)")
    frames = encoders.VAEFrames.load(vae_path, dtype, mesh=mesh, tile=int(e.vae_tile))
    if frames.downsample != space.downsample or frames.model.cfg.latent_channels != space.channels:
      raise ValueError(f"--vae={vae_path}: a {frames.downsample}x autoencoder with {frames.model.cfg.latent_channels} "
                       f"latent channels; the model reads {space.downsample}x, {space.channels} channels")
  return text, frames


def retrieval_clip(c: config_validation.Config, workdir: str = "", dtype: str = "float32"):
  """The image/text embedding context_order "image" scores with (None for other orders): the CLIP model
  of config.sample.encoders.retrieval_clip (real data: the one whose image embeddings the records hold),
  or the run's ToyCLIP (trained into workdir on first use: retrieval by image can be a sampling-time
  choice for a model trained with another context order)."""
  if c.data.context_order != "image":
    return None
  if c.sample.encoders.retrieval_clip:
    return encoders.ClipEmbedding.load(c.sample.encoders.retrieval_clip, dtype=dtype)
  if c.data.path and c.model.text_encoder == "precomputed":
    raise ValueError("config.data.context_order='image' on real data scores with CLIP: give the CLIP model folder "
                     "(--retrieval_clip=clip-vit-large-patch14, or config.sample.encoders.retrieval_clip)")
  return toy_clip.load(toy_clip.resolve(c.data, workdir, logging.info, build=True))


def memory_report(params, text=None, frames=None) -> str:
  """Parameter memory per device (the most any device holds) of the transformer and each encoder."""
  parts = [("transformer", params)]
  if text is not None:
    parts += [("T5", nnx.state(text.t5)), ("CLIP", nnx.state(text.clip))]
  if frames is not None and hasattr(frames, "model"):
    parts.append(("VAE", nnx.state(frames.model)))
  def where(p):
    leaf = next((x for x in jax.tree.leaves(p) if isinstance(x, jax.Array)), None)
    on_host = leaf is not None and jax.default_backend() != "cpu" and next(iter(leaf.devices())).platform == "cpu"
    return " (host)" if on_host else ""

  return "parameters per device: " + ", ".join(f"{name} {encoders.gib(encoders.bytes_per_device(p))}{where(p)}"
                                                for name, p in parts)
