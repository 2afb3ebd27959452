"""Parity of the cinema_jax MM-DiT (one pair, P=1) with diffusers' FluxTransformer2DModel, in fp32; the
BFL and diffusers checkpoint layouts; import (streamed onto a mesh) and export."""

import os

from diffusers import FluxTransformer2DModel
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from cinema_jax import checkpoints
from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import sharding
from cinema_jax.convert import flux
from cinema_jax.models import keyframe
from cinema_jax.models import mmdit
from cinema_jax.training import loop
from cinema_jax.training import train_step
from configs import keyframe as keyframe_config

B, H, W, L = 2, 4, 6, 5  # batch, image grid, text tokens
SIZES = dict(in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
             joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=(4, 6, 6))
# more heads, other RoPE axis sizes, one block of each kind
SIZES_B = dict(in_channels=12, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=4,
               joint_attention_dim=20, pooled_projection_dim=6, axes_dims_rope=(2, 2, 4))


def _torch_model(guidance: bool, sizes=SIZES) -> FluxTransformer2DModel:
  torch.manual_seed(0)
  model = FluxTransformer2DModel(patch_size=1, guidance_embeds=guidance, **sizes).float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and "norm" in name and "linear" not in name:  # RMSNorm scales: around 1
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:  # every Linear, including diffusers' zero-initialised adaLN and output ones
        p.copy_(0.08 * torch.randn_like(p))
  return model


def _config(guidance: bool, sizes=SIZES) -> mmdit.MMDiTConfig:
  return mmdit.MMDiTConfig(
      in_channels=sizes["in_channels"], hidden=sizes["num_attention_heads"] * sizes["attention_head_dim"],
      num_heads=sizes["num_attention_heads"], mlp_ratio=4.0, depth_double=sizes["num_layers"],
      depth_single=sizes["num_single_layers"], context_dim=sizes["joint_attention_dim"],
      vec_dim=sizes["pooled_projection_dim"], axes_dim=sizes["axes_dims_rope"], qkv_bias=True,
      guidance_embed=guidance, attention="xla")


def _numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def _jax_model(cfg: mmdit.MMDiTConfig, params: dict) -> mmdit.MMDiT:
  with nnx.use_eager_sharding(False):  # no mesh in this test: plain unsharded parameters
    model = mmdit.MMDiT(cfg, nnx.Rngs(1))
  flux.load_into(model, params)
  return model


def _inputs(guidance: bool, sizes=SIZES) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  img_ids, txt_ids = (np.array(a[0]) for a in mmdit.position_ids(1, L, H, W))
  img_ids = img_ids + np.array([0, 3, 7], np.int32)  # off-origin rows/cols: RoPE angles differ per axis
  return dict(
      img=rng.standard_normal((B, H * W, sizes["in_channels"]), np.float32),
      txt=rng.standard_normal((B, L, sizes["joint_attention_dim"]), np.float32),
      y=rng.standard_normal((B, sizes["pooled_projection_dim"]), np.float32),
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


@pytest.mark.parametrize("guidance,sizes", [(True, SIZES), (False, SIZES), (True, SIZES_B)])
def test_matches_diffusers(guidance, sizes):
  torch_model = _torch_model(guidance, sizes)
  cfg = _config(guidance, sizes)
  model = _jax_model(cfg, flux.from_diffusers(_numpy_state(torch_model), cfg))
  x = _inputs(guidance, sizes)
  want, got = _run_torch(torch_model, x), _run_jax(model, x)
  assert got.shape == want.shape == (B, H * W, sizes["in_channels"])
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


def test_bfl_layout_is_diffusers_own_bfl_converter():
  # diffusers' single-file converter (BFL -> diffusers) hard-codes FLUX.1's width (3072, MLP 4x), and
  # only ever cuts and reorders the output (row) axis. So feed it BFL tensors of FLUX width with one
  # column, each row a unique number, and check that our two layouts put every row of every
  # parameter in the same place.
  from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
  cfg = mmdit.MMDiTConfig(in_channels=4, depth_double=1, depth_single=1, context_dim=4, vec_dim=4)
  bfl, ours = flux.layout(cfg, "bfl"), flux.layout(cfg, "diffusers")
  state, start = {}, 0
  for param in bfl.values():
    for f in param.layers:
      for k, n in zip(f.keys, f.sizes):
        rows = torch.arange(start, start + n, dtype=torch.float64)
        state[k], start = rows[:, None] if f.kind == "kernel" else rows, start + n
  converted = convert_flux_transformer_checkpoint_to_diffusers(dict(state))
  assert set(converted) == {k for p in ours.values() for f in p.layers for k in f.keys}
  rows = lambda sd, f: np.concatenate([sd[k].numpy().reshape(len(sd[k]), -1)[:, 0] for k in f.keys])
  for path in bfl:
    for fb, fd in zip(bfl[path].layers, ours[path].layers):
      got = flux.mapping._swap(rows(converted, fd)) if fd.swap_halves else rows(converted, fd)  # pylint: disable=protected-access
      want = flux.mapping._swap(rows(state, fb)) if fb.swap_halves else rows(state, fb)  # pylint: disable=protected-access
      np.testing.assert_array_equal(got, want, err_msg=".".join(path))


def test_bfl_and_diffusers_layouts_import_the_same_parameters():
  cfg = _config(True)
  params = flux.from_diffusers(_numpy_state(_torch_model(True)), cfg)
  again = flux.from_bfl(flux.to_bfl(params, cfg), cfg)
  jax.tree.map(np.testing.assert_array_equal, again, params)
  assert "double_blocks.1.img_attn.qkv.weight" in flux.to_bfl(params, cfg)
  wrapped = {f"model.diffusion_model.{k}": v for k, v in flux.to_bfl(params, cfg).items()}  # ComfyUI's files
  jax.tree.map(np.testing.assert_array_equal, flux.from_bfl(wrapped, cfg), params)


def _cli_config():
  """configs/keyframe.py (flux_dev: latents, pre-computed text, fsdp over the 8 devices) at SIZES."""
  c = keyframe_config.get_config("flux_dev")
  c.model.update(image_channels=2, patch=2, hidden=32, num_heads=2, depth_double=2, depth_single=2, context_dim=24,
                 vec_dim=12, axes_dim=(4, 6, 6), guidance_embed=True, dtype="float32")
  return c


def test_import_streams_onto_the_mesh_and_exports_a_checkpoint_diffusers_loads(tmp_path):
  torch_model = _torch_model(True)
  torch_model.save_pretrained(tmp_path / "hf", safe_serialization=True)
  c = _cli_config()
  cfg = keyframe.configs(c)[0]

  # import: every parameter placed with its FSDP sharding, equal to the in-memory conversion
  print(flux.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "ours"), c))
  want = flux.from_diffusers(_numpy_state(torch_model), cfg)
  mesh = sharding.make_mesh(c.mesh)
  abstract = nnx.state(keyframe.abstract(c).dit, nnx.Param)
  shardings = sharding.param_shardings(abstract, mesh)
  streamed = flux.load(str(tmp_path / "hf"), cfg, shardings)
  qkv = streamed["double_blocks"]["img_attn"]["qkv"]["kernel"]
  assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert qkv.addressable_shards[0].data.shape == (2, 32 // 8, 96)  # fsdp over the 8 devices
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), streamed, want)

  # export: diffusers loads it (strictly: every tensor named and shaped) and gives the same outputs
  print(flux._convert_out(str(tmp_path / "ours"), str(tmp_path / "out"), c, "diffusers"))  # pylint: disable=protected-access
  back = FluxTransformer2DModel.from_pretrained(tmp_path / "out", low_cpu_mem_usage=False).float().eval()
  x = _inputs(True)
  np.testing.assert_array_equal(_run_torch(back, x), _run_torch(torch_model, x))
  # and the BFL file reads back to the same parameters
  print(flux._convert_out(str(tmp_path / "ours"), str(tmp_path / "bfl"), c, "bfl"))  # pylint: disable=protected-access
  jax.tree.map(np.testing.assert_array_equal, flux.load(str(tmp_path / "bfl" / "flux.safetensors"), cfg), want)


def test_conversion_never_replaces_what_it_did_not_write_and_replaces_its_own_only_when_asked(tmp_path):
  _torch_model(True).save_pretrained(tmp_path / "hf", safe_serialization=True)
  c, hf, ours = _cli_config(), str(tmp_path / "hf"), tmp_path / "ours"
  (tmp_path / "a_file").write_text("mine")
  with pytest.raises(errors.DataError, match=r"^--dst=.*a_file is a file; expected a folder"):
    flux.import_checkpoint(hf, str(tmp_path / "a_file"), c)
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "todo.txt").write_text("mine")
  with pytest.raises(errors.DataError, match=r"^--dst=.*notes holds other files \(todo.txt\)"):
    flux.import_checkpoint(hf, str(tmp_path / "notes"), c)
  flux.import_checkpoint(hf, str(ours), c)
  with pytest.raises(errors.DataError, match=r"already holds cinema_jax_convert.json, params; .* --overwrite"):
    flux.import_checkpoint(hf, str(ours), c)
  flux.import_checkpoint(hf, str(ours), c, overwrite=True)
  assert sorted(p.name for p in ours.iterdir()) == ["cinema_jax_convert.json", "params"]
  flux._convert_out(str(ours), str(tmp_path / "out"), c, "bfl")  # pylint: disable=protected-access
  with pytest.raises(errors.DataError, match=r"already holds flux.safetensors"):
    flux._convert_out(str(ours), str(tmp_path / "out"), c, "bfl")  # pylint: disable=protected-access
  assert (tmp_path / "a_file").read_text() == "mine" and (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_the_convert_command_refuses_a_file_as_dst_in_one_line_and_exits(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  (tmp_path / "a_file").write_text("mine")
  done = subprocess.run([sys.executable, "-m", "cinema_jax.convert.flux", f"--src={tmp_path / 'a_file'}",
                         f"--dst={tmp_path / 'a_file'}", "--config=configs/keyframe.py:tiny"],
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
                        text=True, check=False, timeout=120)  # it hung after a traceback once
  assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].endswith("is a file; expected a folder "
                                                                               "(new or empty)"), done.stderr
  assert "Traceback" not in done.stderr and (tmp_path / "a_file").read_text() == "mine"


def test_pickle_checkpoints_are_refused_never_loaded(tmp_path):
  torch.save({"x": torch.zeros(1)}, tmp_path / "diffusion_pytorch_model.bin")
  for path in (tmp_path / "diffusion_pytorch_model.bin", tmp_path):
    with pytest.raises(ValueError, match="never unpickles"):
      flux.load(str(path), _config(True))
  with pytest.raises(ValueError, match="not a FLUX transformer checkpoint"):
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    flux.load(str(tmp_path / "other.safetensors"), _config(True))


def test_training_starts_from_converted_weights(tmp_path, toy_train):
  c = keyframe_config.get_config("tiny")  # its MM-DiT: 48 channels in, 32 wide, 2 heads, 1 + 1 blocks
  cfg = keyframe.configs(c)[0]
  torch.manual_seed(1)
  torch_model = FluxTransformer2DModel(
      patch_size=1, in_channels=cfg.in_channels, num_layers=1, num_single_layers=1, attention_head_dim=cfg.head_dim,
      num_attention_heads=cfg.num_heads, joint_attention_dim=cfg.context_dim, pooled_projection_dim=cfg.vec_dim,
      axes_dims_rope=cfg.axes_dim, guidance_embeds=False)
  torch_model.save_pretrained(tmp_path / "hf", safe_serialization=True)
  flux.import_checkpoint(str(tmp_path / "hf"), str(tmp_path / "ours"), c)
  c.update(init_from=str(tmp_path / "ours"), total_steps=1, batch_size=8)
  c.data.update(path=toy_train)
  loop.train_and_evaluate(config_validation.load(c), str(tmp_path / "run"))
  # step 1's learning rate is 0 (warm-up): the saved parameters and EMA are the converted ones
  state = checkpoints.restore(checkpoints.manager(str(tmp_path / "run"), read_only=True), 1,
                              train_step.make_setup(c, sharding.make_mesh(c.mesh)).abstract_state)
  want = flux.from_diffusers(_numpy_state(torch_model), cfg)
  for tree in (state["params"]["dit"], state["ema"]["dit"]):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6), tree, want)

  c.init_from = str(tmp_path / "nowhere")
  with pytest.raises(errors.TrainingError, match="no converted parameters there"):
    loop.train_and_evaluate(config_validation.load(c), str(tmp_path / "run2"))
