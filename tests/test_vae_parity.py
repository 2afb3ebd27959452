"""The FLUX autoencoder against diffusers' AutoencoderKL (small random models, fp32)."""

from diffusers import AutoencoderKL as TorchAutoencoderKL
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cinema_jax.convert import mapping
from cinema_jax.convert import vae as vae_convert
from cinema_jax.models import vae

CONFIGS = {  # FLUX's structure (16 latent channels, scale and shift, no quant convs) at toy widths
    "flux_like": dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, use_quant_conv=False,
                      use_post_quant_conv=False),
    "three_levels_quant": dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
                               use_quant_conv=True, use_post_quant_conv=True),
}


def _models(name: str, tmp_path):
  kw = CONFIGS[name]
  levels = len(kw["block_out_channels"])
  torch.manual_seed(0)
  ref = TorchAutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                           down_block_types=("DownEncoderBlock2D",) * levels,
                           up_block_types=("UpDecoderBlock2D",) * levels, scaling_factor=0.3611, shift_factor=0.1159,
                           **kw).float().eval()
  with torch.no_grad():  # random everything, norms around 1, so every path matters
    for n, p in ref.named_parameters():
      p.copy_(1.0 + 0.1 * torch.randn_like(p) if ("norm" in n and p.ndim == 1 and n.endswith("weight"))
              else 0.1 * torch.randn_like(p))
  ref.save_pretrained(tmp_path / name, safe_serialization=True)
  cfg = vae.VAEConfig(latent_channels=16, **kw)
  model = vae.AutoencoderKL(cfg, nnx.Rngs(0))
  vae_convert.load_into(model, vae_convert.load_state_dict(str(tmp_path / name)))
  return ref, model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encoder_and_decoder_match_diffusers(name, tmp_path):
  ref, model = _models(name, tmp_path)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 24)).astype(np.float32)
  with torch.no_grad():
    dist = ref.encode(torch.from_numpy(x)).latent_dist
    want_latents = ((dist.mean - 0.1159) * 0.3611).numpy()
    z = torch.from_numpy(np.random.default_rng(1).standard_normal(want_latents.shape).astype(np.float32))
    want_image = ref.decode(z / 0.3611 + 0.1159).sample.numpy()
  nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
  got_latents = np.asarray(model.latents(nhwc(x))).transpose(0, 3, 1, 2)
  got_image = np.asarray(model.decode(nhwc(z.numpy()))).transpose(0, 3, 1, 2)
  assert got_latents.shape == (2, 16, 16 // model.cfg.downsample, 24 // model.cfg.downsample)
  for got, want in ((got_latents, want_latents), (got_image, want_image)):
    scale = np.abs(want).max()
    assert scale > 0.1
    assert np.abs(got - want).max() <= 1e-4 * scale, np.abs(got - want).max() / scale
  np.testing.assert_allclose(np.asarray(model.encode(nhwc(x))[1]).transpose(0, 3, 1, 2), dist.logvar.numpy(),
                             atol=1e-4 * np.abs(dist.logvar.numpy()).max())


def test_mismatched_checkpoint_names_every_problem(tmp_path):
  ref, _ = _models("flux_like", tmp_path)
  state = {k: v.numpy() for k, v in ref.state_dict().items()}
  del state["decoder.conv_out.bias"]
  state["encoder.conv_in.weight"] = np.zeros((16, 4, 3, 3), np.float32)
  state["quant_conv.weight"] = np.zeros((32, 32, 1, 1), np.float32)
  model = vae.AutoencoderKL(vae.VAEConfig(latent_channels=16, **CONFIGS["flux_like"]), nnx.Rngs(0))
  with pytest.raises(ValueError) as e:
    vae_convert.load_into(model, state)
  msg = str(e.value)
  assert "missing decoder.conv_out.bias (3,)" in msg
  assert "mis-shaped encoder.conv_in.kernel: (3, 3, 4, 16), expected (3, 3, 3, 16)" in msg, msg
  assert "unexpected quant_conv.kernel" in msg


def test_flux_size_matches_diffusers_parameter_for_parameter():
  # FLUX.1's VAE config (black-forest-labs/FLUX.1-dev, vae/config.json), built abstractly on both sides
  with torch.device("meta"):
    ref = TorchAutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                             layers_per_block=2, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
                             scaling_factor=0.3611, shift_factor=0.1159)
  model = nnx.eval_shape(lambda: vae.AutoencoderKL(vae.VAEConfig(), nnx.Rngs(0)))
  ours = {".".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  paths = {k: mapping.flax_path(k, v.ndim) for k, v in ref.state_dict().items()}
  theirs = {".".join(map(str, paths[k])): mapping.to_flax_layout(np.empty(v.shape, np.int8), paths[k]).shape
            for k, v in ref.state_dict().items()}
  assert ours == theirs
  assert sum(int(np.prod(s)) for s in ours.values()) == 83_819_683
