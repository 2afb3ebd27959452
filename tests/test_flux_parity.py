"""Parity of the cinema_jax MM-DiT (one pair, P=1) with diffusers' FluxTransformer2DModel, in fp32."""

from diffusers import FluxTransformer2DModel
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cinema_jax.convert import flux
from cinema_jax.models import mmdit

B, H, W, L = 2, 4, 6, 5  # batch, image grid, text tokens
SIZES = dict(in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
             joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=(4, 6, 6))


def _torch_model(guidance: bool) -> FluxTransformer2DModel:
  torch.manual_seed(0)
  model = FluxTransformer2DModel(patch_size=1, guidance_embeds=guidance, **SIZES).float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and "norm" in name and "linear" not in name:  # RMSNorm scales: around 1
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:  # every Linear, including diffusers' zero-initialised adaLN and output ones
        p.copy_(0.08 * torch.randn_like(p))
  return model


def _config(guidance: bool) -> mmdit.MMDiTConfig:
  return mmdit.MMDiTConfig(
      in_channels=SIZES["in_channels"], hidden=SIZES["num_attention_heads"] * SIZES["attention_head_dim"],
      num_heads=SIZES["num_attention_heads"], mlp_ratio=4.0, depth_double=SIZES["num_layers"],
      depth_single=SIZES["num_single_layers"], context_dim=SIZES["joint_attention_dim"],
      vec_dim=SIZES["pooled_projection_dim"], axes_dim=SIZES["axes_dims_rope"], qkv_bias=True,
      guidance_embed=guidance, attention="xla")


def _numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def _jax_model(cfg: mmdit.MMDiTConfig, params: dict) -> mmdit.MMDiT:
  with nnx.use_eager_sharding(False):  # no mesh in this test: plain unsharded parameters
    model = mmdit.MMDiT(cfg, nnx.Rngs(1))
  flux.load_into(model, params)
  return model


def _inputs(guidance: bool) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  img_ids, txt_ids = (np.array(a[0]) for a in mmdit.position_ids(1, L, H, W))
  img_ids = img_ids + np.array([0, 3, 7], np.int32)  # off-origin rows/cols: RoPE angles differ per axis
  return dict(
      img=rng.standard_normal((B, H * W, SIZES["in_channels"]), np.float32),
      txt=rng.standard_normal((B, L, SIZES["joint_attention_dim"]), np.float32),
      y=rng.standard_normal((B, SIZES["pooled_projection_dim"]), np.float32),
      t=np.array([0.3, 0.85], np.float32),
      guidance=np.array([3.5, 1.25], np.float32) if guidance else None,
      img_ids=img_ids, txt_ids=txt_ids)


def _run_torch(model: FluxTransformer2DModel, x: dict) -> np.ndarray:
  opt = lambda a: None if a is None else torch.from_numpy(a)
  with torch.no_grad():
    out, = model(hidden_states=opt(x["img"]), encoder_hidden_states=opt(x["txt"]),
                 pooled_projections=opt(x["y"]), timestep=opt(x["t"]), guidance=opt(x["guidance"]),
                 img_ids=opt(x["img_ids"]), txt_ids=opt(x["txt_ids"]), return_dict=False)  # ids: [N, 3], [L, 3]
  return out.numpy()


def _run_jax(model: mmdit.MMDiT, x: dict) -> np.ndarray:
  pair = lambda a: None if a is None else jnp.asarray(a)[:, None]  # add the pair axis, P = 1
  ids = lambda a: jnp.broadcast_to(jnp.asarray(a), (B, 1, *a.shape))
  out = model(pair(x["img"]), ids(x["img_ids"]), pair(x["txt"]), ids(x["txt_ids"]), jnp.ones((B, 1, L), bool),
              pair(x["t"]), pair(x["y"]), pair(x["guidance"]))
  return np.asarray(out[:, 0])


@pytest.mark.parametrize("guidance", [True, False])
def test_matches_diffusers(guidance):
  torch_model = _torch_model(guidance)
  cfg = _config(guidance)
  model = _jax_model(cfg, flux.from_diffusers(_numpy_state(torch_model), cfg))
  x = _inputs(guidance)
  want, got = _run_torch(torch_model, x), _run_jax(model, x)
  assert got.shape == want.shape == (B, H * W, SIZES["in_channels"])
  scale = np.abs(want).max()
  assert scale > 0.1  # nothing collapsed to zero, so the comparison means something
  err = np.abs(got - want).max()
  assert err <= 1e-5 * scale, f"max abs error {err:.3g} for output scale {scale:.3g}"


def test_converter_names_bad_tensors():
  cfg = _config(True)
  state = _numpy_state(_torch_model(True))
  del state["transformer_blocks.1.attn.add_k_proj.bias"]
  state["single_transformer_blocks.0.proj_mlp.weight"] = np.zeros((7, 32), np.float32)
  state["transformer_blocks.0.attn.to_qkv.weight"] = np.zeros((96, 32), np.float32)
  with pytest.raises(ValueError) as e:
    flux.from_diffusers(state, cfg)
  msg = str(e.value)
  assert "missing transformer_blocks.1.attn.add_k_proj.bias (expected shape (32,))" in msg
  assert "mis-shaped single_transformer_blocks.0.proj_mlp.weight: (7, 32), expected (128, 32)" in msg
  assert "unexpected transformer_blocks.0.attn.to_qkv.weight" in msg
  # A checkpoint without guidance embedding does not fit a guidance-embedding config.
  with pytest.raises(ValueError, match="missing time_text_embed.guidance_embedder.linear_1.weight"):
    flux.from_diffusers(_numpy_state(_torch_model(False)), cfg)


def test_load_into_names_bad_parameters():
  cfg = _config(False)
  params = flux.from_diffusers(_numpy_state(_torch_model(False)), cfg)
  params["final_layer"]["linear"]["kernel"] = np.zeros((3, 3), np.float32)
  del params["txt_in"]["bias"]
  with nnx.use_eager_sharding(False):
    model = mmdit.MMDiT(cfg, nnx.Rngs(1))
  with pytest.raises(ValueError) as e:
    flux.load_into(model, params)
  assert "mis-shaped final_layer.linear.kernel: (3, 3), expected (32, 8)" in str(e.value)
  assert "missing txt_in.bias" in str(e.value)
