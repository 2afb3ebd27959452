"""Test setup: 8 fake CPU devices (before JAX initialises) and small shared toy datasets."""

import os
import tempfile
import time

# Must happen before anything imports jax: sharded code is tested on 8 CPU devices.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA cache for this test run's processes (both pytest workers and the training and
# sampling subprocesses they start, which inherit it): many tests compile the same tiny step.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"cinema_jax_xla_{_RUN}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

from array_record.python import array_record_module  # noqa: E402  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # noqa: E402  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags  # noqa: E402  # pylint: disable=g-import-not-at-top,wrong-import-position

from data_pipelines import toy_dataset  # noqa: E402  # pylint: disable=g-import-not-at-top,wrong-import-position
from data_pipelines import toy_world  # noqa: E402  # pylint: disable=g-import-not-at-top,wrong-import-position

# grain reads absl flags; under pytest nobody parses them.
flags.FLAGS.mark_as_parsed()

def wait_for(condition, timeout_s: float, what: str, procs=(), log=None) -> None:
  """Polls `condition` until it holds; fails the test at the deadline, or as soon as one of `procs`
  (Popen) exits first (with the tail of `log`, a pathlib.Path, when given), instead of going on."""
  deadline = time.monotonic() + timeout_s
  while not condition():
    for p in procs:
      if p.poll() is not None:
        tail = log.read_text()[-3000:] if log is not None else ""
        pytest.fail(f"waiting for {what}: the process exited with {p.returncode} first\n{tail}")
    if time.monotonic() > deadline:
      pytest.fail(f"waiting for {what}: not within {timeout_s:.0f} s")
    time.sleep(0.02)


TINY_WORLD = toy_world.WorldConfig(height=16, width=32, num_frames=2, min_shots=8, max_shots=20)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> str:
  """A small toy-movie dataset (12 training movies, 2 storylines), built once per session."""
  out = str(tmp_path_factory.mktemp("toy") / "data")
  toy_dataset.build(out, num_movies=12, seed=7, world=TINY_WORLD, num_storylines=2, num_shards=3)
  return out


@pytest.fixture(scope="session")
def toy_train(toy_root) -> str:
  return os.path.join(toy_root, "train")


def replace_record(dataset: str, shard: str, position: int, data: bytes) -> None:
  """Rewrites one record of a shard in place (to make corrupt data)."""
  path = os.path.join(dataset, shard)
  reader = array_record_module.ArrayRecordReader(path)
  raw = reader.read_all()
  reader.close()
  raw[position] = data
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for r in raw:
    writer.write(r)
  writer.close()


@pytest.fixture(scope="session")
def toy_autoencoder(tmp_path_factory) -> str:
  """A random autoencoder folder at the toy autoencoder's architecture (2x down, 4 latent channels), as
  configs/autoencoder.py exports it: what the latent road asserts holds for any weights."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from cinema_jax.training import autoencoder  # pylint: disable=import-outside-toplevel
  from cinema_jax.models import vae  # pylint: disable=import-outside-toplevel
  ae = vae.AutoencoderKL(vae.VAEConfig(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                                       norm_num_groups=4, scaling_factor=0.5, shift_factor=0.1), nnx.Rngs(0))
  return autoencoder.save(ae, str(tmp_path_factory.mktemp("toy_autoencoder") / "vae"))


# The tiny keyframe config on the toy autoencoder's 8x16x4 latents of its 16x32 frames: patch 2 keeps
# pixel tiny's 4x8 token grid (and GoldenMem's three levels)
LATENT_TINY = dict(vae_downsample=2, image_channels=4, patch=2)


@pytest.fixture(name="replace_record")
def replace_record_fixture():
  return replace_record


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
  """A workdir of the tiny keyframe config trained 4 steps (EMA decay 0.5), built once per session."""
  from configs import keyframe as keyframe_config  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  c = keyframe_config.get_config("tiny")
  c.update(batch_size=8, total_steps=4)  # 8 fake devices in this process
  c.optimizer.ema_decay = 0.5
  workdir = str(tmp_path_factory.mktemp("tiny_run") / "run")
  helpers.train(c, workdir)
  return workdir


def _tokenizer_json(folder, pad: str, end: str, captions: list[str]) -> None:
  """A BPE tokenizer.json learnt on the captions, ending each text with `end`, padding with `pad`."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=250, special_tokens=[pad, "<unk>", end]))
  tok.post_processor = processors.TemplateProcessing(single=f"$A {end}", special_tokens=[(end, 2)])
  os.makedirs(folder, exist_ok=True)
  tok.save(os.path.join(folder, "tokenizer.json"))


FLUX_T5_LEN = 24  # T5 tokens per caption in the tiny FLUX-like setting (FLUX.1-dev: 512)


@pytest.fixture(scope="session")
def flux_folders(tmp_path_factory, toy_train) -> dict:
  """A tiny FLUX.1-like pipeline folder with random weights, as diffusers lays one out: vae/ (16 latent
  channels, /2), text_encoder_2/ + tokenizer_2/ (T5), text_encoder/ + tokenizer/ (CLIP text),
  transformer/ (FluxTransformer2DModel with guidance embedding); and clip/, a whole CLIP model (text
  and vision towers, tokenizer) for retrieval and evaluation. Tokenizers are learnt on the toy captions."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from diffusers import AutoencoderKL, FluxTransformer2DModel  # pylint: disable=g-import-not-at-top
  from data_pipelines import records  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("flux_like")
  reader = records.ShotReader(toy_train)
  captions = [reader.read(i).caption for i in range(len(reader))]
  torch.manual_seed(0)
  AutoencoderKL(latent_channels=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
                ).save_pretrained(root / "vae", safe_serialization=True)
  transformers.T5EncoderModel(transformers.T5Config(
      vocab_size=256, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4, feed_forward_proj="gated-gelu")
  ).save_pretrained(root / "text_encoder_2", safe_serialization=True)
  _tokenizer_json(root / "tokenizer_2", "<pad>", "</s>", captions)
  text_cfg = dict(vocab_size=256, hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=16)
  transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_cfg)).save_pretrained(
      root / "text_encoder", safe_serialization=True)
  _tokenizer_json(root / "tokenizer", "<|endoftext|>", "<|eos|>", captions)
  transformers.CLIPModel(transformers.CLIPConfig(
      text_config=text_cfg, projection_dim=12, vision_config=dict(
          hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
          patch_size=8))).save_pretrained(root / "clip", safe_serialization=True)
  _tokenizer_json(root / "clip", "<|endoftext|>", "<|eos|>", captions)
  flux = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24,
                                guidance_embeds=True, axes_dims_rope=(4, 6, 6))
  with torch.no_grad():  # diffusers zero-initialises the adaLN and output layers: make every weight count
    for name, p in flux.named_parameters():
      p.copy_(1.0 + 0.1 * torch.randn_like(p) if p.ndim == 1 and "norm" in name and "linear" not in name
              else 0.08 * torch.randn_like(p))
  flux.save_pretrained(root / "transformer", safe_serialization=True)
  return {k: str(root / k) for k in ("vae", "text_encoder_2", "text_encoder", "clip", "transformer")} | {
      "root": str(root)}


def flux_config(**data):
  """configs/keyframe.py's FLUX.1-dev layout at the size of flux_folders' transformer and encoders."""
  from configs import keyframe as keyframe_config  # pylint: disable=g-import-not-at-top
  c = keyframe_config.get_config("flux_dev")
  c.data.update({"resolution": (16, 32), "num_pairs": 3, "text_len": FLUX_T5_LEN, **data})
  c.model.update(hidden=32, num_heads=2, depth_double=1, depth_single=1, axes_dim=(4, 6, 6), vae_downsample=2,
                 context_dim=32, vec_dim=24, dtype="float32", remat="none", attention="xla")
  c.mesh.update(data=-1, fsdp=1)
  c.checkpoint.update(async_save=False)
  c.log.update(every_steps=1, tensorboard=False)
  c.sample.update(num_steps=4, param_dtype="float32")
  return c


@pytest.fixture(name="flux_config")
def flux_config_fixture():
  return flux_config


@pytest.fixture(scope="session")
def flux_run(tmp_path_factory, flux_folders, toy_train) -> dict:
  """What a FLUX.1 user does, at flux_folders' size: the transformer converted (convert.flux), the toy
  world pre-computed by the encoders (FLUX's text convention, every shot frame's latent), and a keyframe model
  trained 2 steps from the converted weights (init_from, EMA decay 0.5): {"converted", "data", "workdir", "metrics"}."""
  from cinema_jax import config_validation  # pylint: disable=g-import-not-at-top
  from cinema_jax.training import loop  # pylint: disable=g-import-not-at-top
  from cinema_jax.convert import flux  # pylint: disable=g-import-not-at-top
  from data_pipelines import precompute  # pylint: disable=g-import-not-at-top
  f, root = flux_folders, tmp_path_factory.mktemp("flux_run")
  converted, data = str(root / "converted"), str(root / "latents")
  flux.import_checkpoint(f["transformer"], converted, flux_config())
  enc = precompute.load_encoders(f["vae"], f["text_encoder_2"], f["text_encoder"], f["clip"], t5_len=FLUX_T5_LEN)
  precompute.run(toy_train, data, enc, batch_size=32, log=lambda msg: None, frames=True)  # + frame latents
  c = flux_config(path=data)
  c.update(total_steps=2, batch_size=8, init_from=converted)
  c.optimizer.update(ema_decay=0.5, lr=1e-2, warmup_steps=1)
  metrics = loop.train_and_evaluate(config_validation.load(c), str(root / "run"))
  return {"converted": converted, "data": data, "workdir": str(root / "run"), "metrics": metrics}
