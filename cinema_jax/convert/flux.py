"""diffusers `FluxTransformer2DModel` weights -> the cinema_jax MM-DiT (BFL FLUX layout).

    params = from_diffusers({k: v.float().numpy() for k, v in torch_model.state_dict().items()}, cfg)
    load_into(model, params)

The result is a nested dict shaped like `nnx.state(model, nnx.Param)`, double/single block
parameters stacked on a leading layer axis. Differences from diffusers that the mapping undoes:
- torch Linear weights are [out, in]; nnx kernels are [in, out].
- diffusers keeps q, k, v (and the single blocks' MLP input) as separate Linears; BFL fuses them
  into `qkv` ([q | k | v]) and `linear1` ([q | k | v | mlp]), which is the order the model splits.
- diffusers' final AdaLayerNormContinuous chunks its projection as (scale, shift); BFL's
  final_layer.adaLN_modulation chunks (shift, scale), so the two halves are swapped.
Every other adaLN projection already has BFL's chunk order (shift, scale, gate[, ...]).
"""

from __future__ import annotations

from collections.abc import Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from cinema_jax.models.mmdit import MMDiTConfig


class _Reader:
  """Takes tensors out of a state dict, collecting every problem before raising one error."""

  def __init__(self, state_dict: Mapping[str, np.ndarray], dtype):
    self.sd, self.dtype = state_dict, dtype
    self.used: set[str] = set()
    self.problems: list[str] = []

  def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
    self.used.add(key)
    if key not in self.sd:
      self.problems.append(f"missing {key} (expected shape {shape})")
      return np.zeros(shape, self.dtype)  # a stand-in so the remaining checks still run
    value = np.asarray(self.sd[key])
    if value.shape != shape:
      self.problems.append(f"mis-shaped {key}: {value.shape}, expected {shape}")
      return np.zeros(shape, self.dtype)
    return value.astype(self.dtype)

  def linear(self, prefixes: list[str], din: int, douts: list[int], bias: bool = True) -> dict:
    """One nnx.Linear from torch Linears whose outputs are concatenated in the given order."""
    out = {"kernel": np.concatenate([self.get(f"{p}.weight", (d, din)).T for p, d in zip(prefixes, douts)], 1)}
    if bias:
      out["bias"] = np.concatenate([self.get(f"{p}.bias", (d,)) for p, d in zip(prefixes, douts)])
    return out

  def norm(self, key: str, dim: int) -> dict:
    return {"scale": self.get(f"{key}.weight", (dim,))}

  def finish(self) -> None:
    unexpected = sorted(set(self.sd) - self.used)
    problems = self.problems + [f"unexpected {k} {tuple(np.shape(self.sd[k]))}" for k in unexpected]
    if problems:
      raise ValueError(f"diffusers FLUX state dict does not match the MMDiTConfig ({len(problems)} "
                       "problems):\n  " + "\n  ".join(problems))


def _embedder(r: _Reader, prefix: str, din: int, d: int) -> dict:
  return {"in_layer": r.linear([f"{prefix}.linear_1"], din, [d]),
          "out_layer": r.linear([f"{prefix}.linear_2"], d, [d])}


def _double_block(r: _Reader, p: str, cfg: MMDiTConfig) -> dict:
  d, m, hd = cfg.hidden, cfg.mlp_hidden, cfg.head_dim
  streams = {  # BFL stream -> diffusers names (q/k/v, out proj, q/k norms, adaLN, feed-forward)
      "img": (("attn.to_q", "attn.to_k", "attn.to_v"), "attn.to_out.0", ("attn.norm_q", "attn.norm_k"),
              "norm1", "ff"),
      "txt": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "attn.to_add_out",
              ("attn.norm_added_q", "attn.norm_added_k"), "norm1_context", "ff_context"),
  }
  out = {}
  for s, (qkv, proj, (nq, nk), mod, ff) in streams.items():
    out[f"{s}_mod"] = {"lin": r.linear([f"{p}.{mod}.linear"], d, [6 * d])}
    out[f"{s}_attn"] = {
        "qkv": r.linear([f"{p}.{n}" for n in qkv], d, [d] * 3, bias=cfg.qkv_bias),
        "norm": {"query_norm": r.norm(f"{p}.{nq}", hd), "key_norm": r.norm(f"{p}.{nk}", hd)},
        "proj": r.linear([f"{p}.{proj}"], d, [d]),
    }
    out[f"{s}_mlp"] = {"fc1": r.linear([f"{p}.{ff}.net.0.proj"], d, [m]),
                       "fc2": r.linear([f"{p}.{ff}.net.2"], m, [d])}
  return out


def _single_block(r: _Reader, p: str, cfg: MMDiTConfig) -> dict:
  d, m, hd = cfg.hidden, cfg.mlp_hidden, cfg.head_dim
  # diffusers always gives to_q/k/v a bias; BFL's linear1 has one too (qkv_bias only affects double blocks).
  return {
      "linear1": r.linear([f"{p}.attn.to_q", f"{p}.attn.to_k", f"{p}.attn.to_v", f"{p}.proj_mlp"], d,
                          [d, d, d, m]),
      "linear2": r.linear([f"{p}.proj_out"], d + m, [d]),  # its input is [attention | mlp] in both
      "norm": {"query_norm": r.norm(f"{p}.attn.norm_q", hd), "key_norm": r.norm(f"{p}.attn.norm_k", hd)},
      "modulation": {"lin": r.linear([f"{p}.norm.linear"], d, [3 * d])},
  }


def _stack(blocks: list[dict]) -> dict:
  return jax.tree.map(lambda *xs: np.stack(xs), *blocks)


def from_diffusers(state_dict: Mapping[str, np.ndarray], cfg: MMDiTConfig) -> dict:
  """Nested dict of numpy arrays (cfg.param_dtype) matching `nnx.state(MMDiT(cfg), nnx.Param)`.

  Raises ValueError naming every missing, unexpected or mis-shaped tensor of `state_dict`.
  """
  cfg.validate()
  r = _Reader(state_dict, np.dtype(jnp.dtype(cfg.param_dtype)))
  d, tte = cfg.hidden, "time_text_embed"
  params = {
      "img_in": r.linear(["x_embedder"], cfg.in_channels, [d]),
      "txt_in": r.linear(["context_embedder"], cfg.context_dim, [d]),
      "time_in": _embedder(r, f"{tte}.timestep_embedder", 256, d),
      "vector_in": _embedder(r, f"{tte}.text_embedder", cfg.vec_dim, d),
  }
  if cfg.guidance_embed:
    params["guidance_in"] = _embedder(r, f"{tte}.guidance_embedder", 256, d)
  if cfg.depth_double:
    params["double_blocks"] = _stack([_double_block(r, f"transformer_blocks.{i}", cfg)
                                      for i in range(cfg.depth_double)])
  if cfg.depth_single:
    params["single_blocks"] = _stack([_single_block(r, f"single_transformer_blocks.{i}", cfg)
                                      for i in range(cfg.depth_single)])
  ada = r.linear(["norm_out.linear"], d, [2 * d])
  swap = lambda x: np.concatenate([x[..., d:], x[..., :d]], axis=-1)  # (scale, shift) -> (shift, scale)
  params["final_layer"] = {"adaLN_modulation": {"lin": {k: swap(v) for k, v in ada.items()}},
                           "linear": r.linear(["proj_out"], d, [cfg.in_channels])}
  r.finish()
  return params


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
