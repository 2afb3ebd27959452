"""data_pipelines/precompute.py: latents and text/image embeddings from small random FLUX-architecture
encoders (diffusers / transformers checkpoints made here), sharded over processes, resumable, and the
output trains a tiny FLUX-layout keyframe model end to end."""

import os

from diffusers import AutoencoderKL as TorchAutoencoderKL
import numpy as np
import pytest
import torch
import transformers

from cinema_jax import trainer
from configs import keyframe as keyframe_config
from data_pipelines import precompute
from data_pipelines import records


def _tokenizer_json(folder, pad: str, end: str, captions: list[str]):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=250, special_tokens=[pad, "<unk>", end]))
  tok.post_processor = processors.TemplateProcessing(single=f"$A {end}", special_tokens=[(end, 2)])
  os.makedirs(folder, exist_ok=True)
  tok.save(os.path.join(folder, "tokenizer.json"))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, toy_train):
  """A FLUX-like pipeline folder: vae/ (16 latent channels, /2), text_encoder_2/ + tokenizer_2/ (T5),
  text_encoder/ + tokenizer/ (CLIP text), and a CLIP vision tower; tokenizers learnt on the captions."""
  root = tmp_path_factory.mktemp("flux_like")
  reader = records.ShotReader(toy_train)
  captions = [reader.read(i).caption for i in range(len(reader))]
  torch.manual_seed(0)
  TorchAutoencoderKL(latent_channels=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                     down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                     use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
                     ).save_pretrained(root / "vae", safe_serialization=True)
  transformers.T5EncoderModel(transformers.T5Config(
      vocab_size=256, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4, feed_forward_proj="gated-gelu")
  ).save_pretrained(root / "text_encoder_2", safe_serialization=True)
  _tokenizer_json(root / "tokenizer_2", "<pad>", "</s>", captions)
  transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=256, hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
      max_position_embeddings=16)).save_pretrained(root / "text_encoder", safe_serialization=True)
  _tokenizer_json(root / "tokenizer", "<|endoftext|>", "<|eos|>", captions)
  transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
      hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8,
      projection_dim=12)).save_pretrained(root / "vision", safe_serialization=True)
  return precompute.load_encoders(str(root / "vae"), str(root / "text_encoder_2"), str(root / "text_encoder"),
                                  str(root / "vision"), t5_len=64)


def test_two_processes_resume_and_assemble_the_dataset(encoders, toy_train, tmp_path):
  dst = str(tmp_path / "latents")
  assert not precompute.run(toy_train, dst, encoders, process_id=0, num_processes=2)  # process 1 not done yet
  work = dst + ".work"
  done = {f: os.stat(os.path.join(work, f)).st_mtime_ns for f in os.listdir(work)}
  assert done and not os.path.exists(dst)
  assert not precompute.run(toy_train, dst, encoders, process_id=0, num_processes=2)  # a rerun redoes nothing
  assert {f: os.stat(os.path.join(work, f)).st_mtime_ns for f in os.listdir(work)} == done
  assert precompute.run(toy_train, dst, encoders, process_id=1, num_processes=2)  # the last one assembles
  assert not os.path.exists(work)

  src, out = records.ShotReader(toy_train), records.ShotReader(dst)
  assert len(out) == len(src) and out.index.latent_shape == [8, 16, 16]
  assert out.index.embeddings == {"t5": [-1, 32], "clip_pooled": [24], "image_embedding": [12]}
  lengths = {out.read(r).t5.shape[0] for m in out.index.movies for r in m["records"]}
  assert len(lengths) > 1  # each caption keeps its own token count
  movie = src.index.movies[3]
  shot, pixels, _ = src.read_pixels(movie["records"][1], frames=False)
  got = out.read(out.index.movies[3]["records"][1])
  assert got.caption == shot.caption and got.keyframe_png is None
  np.testing.assert_allclose(got.keyframe_latent, encoders.latents(pixels[None])[0], rtol=1e-5, atol=1e-6)
  states, pooled = encoders.text([shot.caption])
  np.testing.assert_allclose(got.t5, states[0], rtol=1e-5, atol=1e-6)
  assert 0 < got.t5.shape[0] < 64  # the caption's own tokens, not the padding
  np.testing.assert_allclose(got.clip_pooled, pooled[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.image_embedding, encoders.image_embeddings(pixels[None])[0], rtol=1e-5, atol=1e-6)


def test_precomputed_records_train_a_flux_layout_keyframe_model(encoders, toy_train, tmp_path):
  dst = str(tmp_path / "latents")
  assert precompute.run(toy_train, dst, encoders)
  c = keyframe_config.get_config("flux_dev")  # latents, T5 states, CLIP pooled vectors, guidance embedding
  c.update(total_steps=2, batch_size=8)
  c.data.update(path=dst, resolution=(16, 32), num_pairs=3, text_len=16)
  c.model.update(hidden=32, num_heads=2, depth_double=1, depth_single=1, axes_dim=(4, 6, 6), vae_downsample=2,
                 context_dim=32, vec_dim=24, dtype="float32", remat="none")
  c.checkpoint.update(async_save=False)
  c.log.update(every_steps=1, tensorboard=False)
  metrics = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
