"""FLUX.1 transformer weights <-> the cinema_jax MM-DiT: BFL's single-file layout and diffusers'.

    python -m cinema_jax.convert.flux --src flux1-dev.safetensors --dst ckpt/flux_dev   # BFL or diffusers in
    python -m cinema_jax.convert.flux --src ckpt/flux_dev --dst out/transformer --to diffusers

In code: `from_bfl(state_dict, cfg)` / `from_diffusers(state_dict, cfg)` give a nested dict shaped
like `nnx.state(MMDiT(cfg), nnx.Param)` (block parameters stacked on a leading layer axis),
`load(path, cfg, mesh)` streams a checkpoint onto a mesh, `to_diffusers` / `to_bfl` go back.

cinema_jax's parameter names are BFL's; the layouts differ in what they fuse and stack:
- torch Linear weights are [out, in]; nnx kernels are [in, out].
- BFL fuses q, k, v into `qkv` ([q | k | v]) and the single blocks' q, k, v and MLP input into
  `linear1`; diffusers keeps them as separate Linears. cinema_jax stacks each block's parameters
  over layers (for scan); both files keep one tensor per layer.
- diffusers' final AdaLayerNormContinuous chunks its projection (scale, shift); BFL's final_layer
  (shift, scale). Every other adaLN projection has BFL's order (shift, scale, gate[, ...]) in both.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import os
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from cinema_jax import errors
from cinema_jax import paths
from cinema_jax.convert import mapping
from cinema_jax.models.mmdit import MMDiTConfig

LAYOUTS = ("bfl", "diffusers")


def _linear(keys: list[str], din: int, sizes: list[int], bias: bool = True, swap: bool = False) -> dict:
  out = {"kernel": mapping.Fused(tuple(f"{k}.weight" for k in keys), tuple(sizes), "kernel", din, swap)}
  if bias:
    out["bias"] = mapping.Fused(tuple(f"{k}.bias" for k in keys), tuple(sizes), "bias", swap_halves=swap)
  return out


def _scale(key: str, dim: int) -> dict:
  return {"scale": mapping.Fused((key,), (dim,), "scale")}


def _diffusers_double(p: str, cfg: MMDiTConfig) -> dict:
  d, m, hd = cfg.hidden, cfg.mlp_hidden, cfg.head_dim
  streams = {  # stream -> diffusers names (q/k/v, out proj, q/k norms, adaLN, feed-forward)
      "img": (("attn.to_q", "attn.to_k", "attn.to_v"), "attn.to_out.0", ("attn.norm_q", "attn.norm_k"),
              "norm1", "ff"),
      "txt": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "attn.to_add_out",
              ("attn.norm_added_q", "attn.norm_added_k"), "norm1_context", "ff_context"),
  }
  out = {}
  for s, (qkv, proj, (nq, nk), mod, ff) in streams.items():
    out[f"{s}_mod"] = {"lin": _linear([f"{p}.{mod}.linear"], d, [6 * d])}
    out[f"{s}_attn"] = {
        "qkv": _linear([f"{p}.{n}" for n in qkv], d, [d] * 3, bias=cfg.qkv_bias),
        "norm": {"query_norm": _scale(f"{p}.{nq}.weight", hd), "key_norm": _scale(f"{p}.{nk}.weight", hd)},
        "proj": _linear([f"{p}.{proj}"], d, [d]),
    }
    out[f"{s}_mlp"] = {"fc1": _linear([f"{p}.{ff}.net.0.proj"], d, [m]), "fc2": _linear([f"{p}.{ff}.net.2"], m, [d])}
  return out


def _diffusers_single(p: str, cfg: MMDiTConfig) -> dict:
  d, m, hd = cfg.hidden, cfg.mlp_hidden, cfg.head_dim
  # diffusers always gives to_q/k/v a bias; BFL's linear1 has one too (qkv_bias only affects double blocks).
  return {
      "linear1": _linear([f"{p}.attn.to_q", f"{p}.attn.to_k", f"{p}.attn.to_v", f"{p}.proj_mlp"], d, [d, d, d, m]),
      "linear2": _linear([f"{p}.proj_out"], d + m, [d]),  # its input is [attention | mlp] in both
      "norm": {"query_norm": _scale(f"{p}.attn.norm_q.weight", hd), "key_norm": _scale(f"{p}.attn.norm_k.weight", hd)},
      "modulation": {"lin": _linear([f"{p}.norm.linear"], d, [3 * d])},
  }


def _bfl_double(p: str, cfg: MMDiTConfig) -> dict:
  d, m, hd = cfg.hidden, cfg.mlp_hidden, cfg.head_dim
  out = {}
  for s in ("img", "txt"):
    out[f"{s}_mod"] = {"lin": _linear([f"{p}.{s}_mod.lin"], d, [6 * d])}
    out[f"{s}_attn"] = {
        "qkv": _linear([f"{p}.{s}_attn.qkv"], d, [3 * d], bias=cfg.qkv_bias),
        "norm": {n: _scale(f"{p}.{s}_attn.norm.{n}.scale", hd) for n in ("query_norm", "key_norm")},
        "proj": _linear([f"{p}.{s}_attn.proj"], d, [d]),
    }
    out[f"{s}_mlp"] = {"fc1": _linear([f"{p}.{s}_mlp.0"], d, [m]), "fc2": _linear([f"{p}.{s}_mlp.2"], m, [d])}
  return out


def _bfl_single(p: str, cfg: MMDiTConfig) -> dict:
  d, m, hd = cfg.hidden, cfg.mlp_hidden, cfg.head_dim
  return {
      "linear1": _linear([f"{p}.linear1"], d, [3 * d + m]),
      "linear2": _linear([f"{p}.linear2"], d + m, [d]),
      "norm": {n: _scale(f"{p}.norm.{n}.scale", hd) for n in ("query_norm", "key_norm")},
      "modulation": {"lin": _linear([f"{p}.modulation.lin"], d, [3 * d])},
  }


def layout(cfg: MMDiTConfig, kind: str) -> mapping.Layout:
  """Where every MM-DiT parameter comes from in a `kind` ("bfl" or "diffusers") checkpoint."""
  if kind not in LAYOUTS:
    raise ValueError(f"unknown FLUX checkpoint layout {kind!r}; known: {', '.join(LAYOUTS)}")
  cfg.validate()
  d = cfg.hidden
  if kind == "diffusers":
    tte = "time_text_embed"
    emb = lambda name, din: {"in_layer": _linear([f"{tte}.{name}.linear_1"], din, [d]),
                             "out_layer": _linear([f"{tte}.{name}.linear_2"], d, [d])}
    top = {"img_in": _linear(["x_embedder"], cfg.in_channels, [d]),
           "txt_in": _linear(["context_embedder"], cfg.context_dim, [d]),
           "time_in": emb("timestep_embedder", 256), "vector_in": emb("text_embedder", cfg.vec_dim),
           "final_layer": {"adaLN_modulation": {"lin": _linear(["norm_out.linear"], d, [2 * d], swap=True)},
                           "linear": _linear(["proj_out"], d, [cfg.in_channels])}}
    if cfg.guidance_embed:
      top["guidance_in"] = emb("guidance_embedder", 256)
    double, single = _diffusers_double, _diffusers_single
    double_name, single_name = "transformer_blocks", "single_transformer_blocks"
  else:
    emb = lambda name, din: {"in_layer": _linear([f"{name}.in_layer"], din, [d]),
                             "out_layer": _linear([f"{name}.out_layer"], d, [d])}
    top = {"img_in": _linear(["img_in"], cfg.in_channels, [d]), "txt_in": _linear(["txt_in"], cfg.context_dim, [d]),
           "time_in": emb("time_in", 256), "vector_in": emb("vector_in", cfg.vec_dim),
           "final_layer": {"adaLN_modulation": {"lin": _linear(["final_layer.adaLN_modulation.1"], d, [2 * d])},
                           "linear": _linear(["final_layer.linear"], d, [cfg.in_channels])}}
    if cfg.guidance_embed:
      top["guidance_in"] = emb("guidance_in", 256)
    double, single = _bfl_double, _bfl_single
    double_name, single_name = "double_blocks", "single_blocks"

  out: mapping.Layout = {path: mapping.Param((f,), stacked=False) for path, f in _flat(top)}
  for ours, theirs, block, n in (("double_blocks", double_name, double, cfg.depth_double),
                                 ("single_blocks", single_name, single, cfg.depth_single)):
    per_layer = [dict(_flat(block(f"{theirs}.{i}", cfg))) for i in range(n)]
    for path in (per_layer[0] if n else {}):
      out[(ours, *path)] = mapping.Param(tuple(layer[path] for layer in per_layer), stacked=True)
  return out


def _flat(tree: dict, prefix: tuple[str, ...] = ()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flat(v, (*prefix, k))
    else:
      yield (*prefix, k), v


def _dtype(cfg: MMDiTConfig):
  return np.dtype(jnp.dtype(cfg.param_dtype))


WRAPPER_PREFIX = "model.diffusion_model."  # single-file checkpoints that wrap BFL's keys (ComfyUI)


def _unwrapped(source):
  return (mapping.StrippedSource(source, WRAPPER_PREFIX)
          if any(k.startswith(WRAPPER_PREFIX) for k in source.keys()) else source)


def detect_layout(keys) -> str:
  keys = set(keys)
  if "double_blocks.0.img_attn.qkv.weight" in keys or "single_blocks.0.linear1.weight" in keys:
    return "bfl"
  if "x_embedder.weight" in keys:
    return "diffusers"
  raise ValueError("not a FLUX transformer checkpoint: neither BFL keys (double_blocks.0.img_attn.qkv.weight) nor "
                   "diffusers keys (x_embedder.weight)")


def from_diffusers(state_dict: Mapping[str, np.ndarray], cfg: MMDiTConfig) -> dict:
  """Nested dict of numpy arrays (cfg.param_dtype) matching `nnx.state(MMDiT(cfg), nnx.Param)`.

  Raises ValueError naming every missing, unexpected or mis-shaped tensor of `state_dict`.
  """
  return _import(state_dict, cfg, "diffusers")


def from_bfl(state_dict: Mapping[str, np.ndarray], cfg: MMDiTConfig) -> dict:
  """As from_diffusers, from BFL's layout (flux1-dev.safetensors)."""
  return _import(state_dict, cfg, "bfl")


def _import(state_dict, cfg: MMDiTConfig, kind: str) -> dict:
  source, lay = _unwrapped(mapping.DictSource(state_dict)), layout(cfg, kind)
  mapping.check(source, lay, f"{kind} FLUX state dict")
  return mapping.import_params(source, lay, _dtype(cfg))


def to_diffusers(params: Mapping, cfg: MMDiTConfig) -> dict[str, np.ndarray]:
  """diffusers FluxTransformer2DModel state dict (numpy, torch layout) of MM-DiT parameters."""
  return mapping.export_params(params, layout(cfg, "diffusers"))


def to_bfl(params: Mapping, cfg: MMDiTConfig) -> dict[str, np.ndarray]:
  return mapping.export_params(params, layout(cfg, "bfl"))


def diffusers_config(cfg: MMDiTConfig) -> dict:
  """config.json of the diffusers FluxTransformer2DModel with these sizes (patch 1: tokens are patches)."""
  return {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": cfg.in_channels,
          "num_layers": cfg.depth_double, "num_single_layers": cfg.depth_single, "attention_head_dim": cfg.head_dim,
          "num_attention_heads": cfg.num_heads, "joint_attention_dim": cfg.context_dim,
          "pooled_projection_dim": cfg.vec_dim, "guidance_embeds": cfg.guidance_embed,
          "axes_dims_rope": list(cfg.axes_dim)}


def load(path: str, cfg: MMDiTConfig, shardings: Mapping | None = None) -> dict:
  """MM-DiT parameters from a BFL or diffusers safetensors checkpoint (file or folder), streamed.

  shardings: a nested dict of NamedSharding like the parameters (sharding.param_shardings); each
  parameter is then read layer by layer and placed shard by shard. Without it, host numpy arrays.
  """
  source = _unwrapped(mapping.open_source(path))
  kind = detect_layout(source.keys())
  lay = layout(cfg, kind)
  mapping.check(source, lay, f"{path} ({kind} layout)")
  if shardings is None:
    return mapping.import_params(source, lay, _dtype(cfg))
  flat = {p: s for p, s in _flat(dict(shardings))}
  return mapping.load_sharded(source, lay, flat, _dtype(cfg))


def load_into(model: nnx.Module, params: Mapping) -> None:
  """Writes `params` (e.g. from `from_diffusers`) into the model's Params, in place.

  Each value takes the dtype and sharding of the Param it replaces, so a model created under a mesh
  stays sharded. Raises ValueError naming any missing, unexpected or mis-shaped parameter.
  """
  state = nnx.state(model, nnx.Param)
  current = dict(nnx.to_flat_state(state))
  new = {tuple(str(k.key) for k in path): leaf
         for path, leaf in jax.tree_util.tree_flatten_with_path(dict(params))[0]}
  name = lambda path: ".".join(map(str, path))
  problems = [f"missing {name(p)}" for p in current if p not in new]
  problems += [f"unexpected {name(p)}" for p in new if p not in current]
  problems += [f"mis-shaped {name(p)}: {np.shape(new[p])}, expected {v.shape}"
               for p, v in current.items() if p in new and np.shape(new[p]) != v.shape]
  if problems:
    raise ValueError("parameters do not match the model:\n  " + "\n  ".join(problems))
  for path, var in current.items():
    old = var.get_value()
    var.set_value(jax.device_put(np.asarray(new[path], dtype=old.dtype), old.sharding))
  nnx.update(model, state)


def check_against_model(lay: mapping.Layout, abstract_params: Mapping) -> None:
  """The layout builds exactly the model's parameters, at their shapes (abstract_params: eval_shape'd)."""
  model = {p: tuple(x.shape) for p, x in _flat(dict(abstract_params))}
  ours = {p: param.shape() for p, param in lay.items()}
  name = lambda p: ".".join(p)
  problems = [f"the model has {name(p)} {s}, the layout does not" for p, s in model.items() if p not in ours]
  problems += [f"the layout has {name(p)}, the model does not" for p in ours if p not in model]
  problems += [f"{name(p)}: the layout builds {ours[p]}, the model has {s}" for p, s in model.items()
               if p in ours and ours[p] != s]
  if problems:
    raise ValueError("conversion layout and model disagree:\n  " + "\n  ".join(problems))


IMPORTED = ("params", "cinema_jax_convert.json")  # what an import writes into its folder


def import_checkpoint(src: str, dst: str, c, overwrite: bool = False) -> str:
  """A BFL or diffusers FLUX transformer at src -> dst/params (Orbax), for config c's model; a summary line.
  dst: a new or empty folder, or (overwrite) one an earlier import wrote."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from cinema_jax import sharding  # pylint: disable=import-outside-toplevel
  from cinema_jax.models import keyframe  # pylint: disable=import-outside-toplevel
  paths.existing(src, "--src")
  paths.output_folder(dst, "--dst", IMPORTED, overwrite)  # before any work
  cfg = keyframe.configs(c)[0]
  abstract = nnx.state(keyframe.abstract(c).dit, nnx.Param)  # eval_shape: the shapes the config gives
  source = _unwrapped(mapping.open_source(src))
  kind = detect_layout(source.keys())
  lay = layout(cfg, kind)
  check_against_model(lay, nnx.to_pure_dict(abstract))
  mapping.check(source, lay, f"{src} ({kind} layout)")
  # one process's devices: conversion is a single-host job; the trainer re-shards on restore
  shardings = sharding.param_shardings(abstract, sharding.make_mesh(c.mesh, jax.local_devices()))
  params = mapping.load_sharded(source, lay, dict(_flat(shardings)), _dtype(cfg))
  with ocp.StandardCheckpointer() as ckptr:  # written whole (a temp folder renamed) or not at all
    ckptr.save(os.path.abspath(os.path.join(dst, "params")), params, force=overwrite)
    ckptr.wait_until_finished()
  with open(os.path.join(dst, "cinema_jax_convert.json"), "w") as f:
    json.dump({"source": os.path.abspath(src), "layout": kind, "variant": c.variant,
               "model": diffusers_config(cfg)}, f, indent=1)
  return f"{src} ({kind} layout, {sum(int(np.prod(p.shape())) for p in lay.values()):,} parameters) -> {dst}/params"


def _convert_out(src: str, dst: str, c, kind: str, overwrite: bool = False) -> str:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from cinema_jax.models import keyframe  # pylint: disable=import-outside-toplevel
  paths.existing(os.path.join(src, "params"), "--src", "folder")
  paths.output_folder(dst, "--dst", ("diffusion_pytorch_model.safetensors", "config.json", "flux.safetensors"),
                      overwrite)
  cfg = keyframe.configs(c)[0]
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.abspath(os.path.join(src, "params")))
  lay = layout(cfg, kind)
  check_against_model(lay, params)
  tensors = mapping.export_params(params, lay)
  os.makedirs(dst, exist_ok=True)
  name = "diffusion_pytorch_model.safetensors" if kind == "diffusers" else "flux.safetensors"
  mapping.save_safetensors(tensors, os.path.join(dst, name))
  if kind == "diffusers":
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(diffusers_config(cfg), f, indent=1)
  return f"{src}/params -> {os.path.join(dst, name)} ({kind} layout, {len(tensors)} tensors)"


def main(argv: list[str]) -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from cinema_jax import cli  # pylint: disable=import-outside-toplevel
  from cinema_jax import config_validation  # pylint: disable=import-outside-toplevel
  config = config_flags.DEFINE_config_file("config", "configs/keyframe.py", "The model's config[:variant].",
                                           lock_config=True)
  src = flags.DEFINE_string("src", None, "BFL or diffusers safetensors (file or folder); with --to: a converted "
                            "cinema_jax folder.", required=True)
  dst = flags.DEFINE_string("dst", None, "Output folder: new or empty.", required=True)
  overwrite = flags.DEFINE_bool("overwrite", False, "Replace what an earlier conversion wrote in --dst.")
  to = flags.DEFINE_enum("to", "cinema_jax", ("cinema_jax", *LAYOUTS), "cinema_jax: import (an Orbax checkpoint "
                         "of the MM-DiT parameters); diffusers / bfl: export such a folder to safetensors.")

  def run(args):
    if len(args) > 1:
      sys.exit(f"error: unexpected arguments {args[1:]}")
    try:
      c = config_validation.load(config.value, reads_data=False)
      if to.value == "cinema_jax":
        print(import_checkpoint(src.value, dst.value, c, overwrite.value), flush=True)
      else:
        print(_convert_out(src.value, dst.value, c, to.value, overwrite.value), flush=True)
    except (errors.DataError, ValueError, FileNotFoundError) as e:
      sys.exit(f"error: {e}")

  app.run(run, argv=argv, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  main(sys.argv)
