"""T5 v1.1 encoder, CLIP text and CLIP vision towers against transformers (small random models,
fp32, loaded from safetensors), and tokenizers read from tokenizer.json."""

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cinema_jax.convert import text
from data_pipelines import tokenizer as tokenizer_lib
from cinema_jax.models import clip
from cinema_jax.models import t5


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1.0 + 0.1 * torch.randn_like(p) if ("norm" in name and p.ndim == 1 and name.endswith("weight"))
              else 0.2 * torch.randn_like(p))
  return model.float().eval()


def _close(got, want, rel=1e-4):
  got, want = np.asarray(got), np.asarray(want)
  scale = np.abs(want).max()
  assert scale > 0.1 and np.abs(got - want).max() <= rel * scale, np.abs(got - want).max() / scale


@pytest.mark.parametrize("heads,buckets", [(4, 8), (2, 32)])
def test_t5_encoder_matches_transformers(tmp_path, heads, buckets):
  hf_cfg = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=heads,
                                 relative_attention_num_buckets=buckets, relative_attention_max_distance=20,
                                 feed_forward_proj="gated-gelu", dropout_rate=0.0)
  ref = _randomise(transformers.T5EncoderModel(hf_cfg))
  ref.save_pretrained(tmp_path / "t5", safe_serialization=True)
  model = t5.T5EncoderModel(t5.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=heads,
                                        relative_attention_num_buckets=buckets, relative_attention_max_distance=20),
                            nnx.Rngs(0))
  text.load_t5(model, text.load_state_dict(str(tmp_path / "t5")))
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 100, (2, 30))  # offsets beyond max_distance: the logarithmic buckets and the clamp
  mask = np.ones((2, 30), bool)
  mask[1, 21:] = False
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
  got = model(jnp.asarray(ids), jnp.asarray(mask))
  _close(np.asarray(got)[0], want[0])
  _close(np.asarray(got)[1, :21], want[1, :21])  # padding positions' own states are not used


@pytest.mark.parametrize("eos", [2, 98])
def test_clip_text_matches_transformers(tmp_path, eos):
  hf_cfg = transformers.CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=16, eos_token_id=eos)
  ref = _randomise(transformers.CLIPTextModel(hf_cfg))
  ref.save_pretrained(tmp_path / "clip", safe_serialization=True)
  model = clip.CLIPTextModel(clip.CLIPConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                             num_attention_heads=4, max_position_embeddings=16, eos_token_id=eos),
                             nnx.Rngs(0))
  text.load_clip(model, text.load_state_dict(str(tmp_path / "clip")))
  ids = np.random.default_rng(1).integers(3, 90, (2, 16))
  ids[0, 9], ids[1, 13] = (98, 98)  # the end token: the largest id (eos 2's rule) and id 98
  mask = np.ones((2, 16), bool)
  mask[0, 10:] = False
  with torch.no_grad():
    out = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long())
  states, pooled = model(jnp.asarray(ids), jnp.asarray(mask))
  _close(np.asarray(states)[0, :10], out.last_hidden_state.numpy()[0, :10])
  _close(np.asarray(states)[1], out.last_hidden_state.numpy()[1])
  _close(pooled, out.pooler_output.numpy())


def test_clip_vision_matches_transformers(tmp_path):
  kw = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
            patch_size=6, projection_dim=24)
  ref = _randomise(transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**kw)))
  ref.save_pretrained(tmp_path / "vision", safe_serialization=True)
  model = clip.CLIPVisionModelWithProjection(clip.CLIPConfig(**kw), nnx.Rngs(0))
  text.load_clip(model, text.load_state_dict(str(tmp_path / "vision")))
  pixels = np.random.default_rng(2).standard_normal((2, 3, 30, 30)).astype(np.float32)
  with torch.no_grad():
    want = ref(pixel_values=torch.from_numpy(pixels)).image_embeds.numpy()
  _close(model(jnp.asarray(pixels.transpose(0, 2, 3, 1))), want)


def test_tokenizer_reads_tokenizer_json_like_transformers(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(["a knight rides to the lake at dawn", "the witch waits in the desert"] * 20,
                          trainers.BpeTrainer(vocab_size=80, special_tokens=["<pad>", "<unk>", "</s>"]))
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
  tok.save(str(tmp_path / "tokenizer.json"))
  ours = tokenizer_lib.Tokenizer(str(tmp_path / "tokenizer.json"), max_len=12)
  ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), pad_token="<pad>")
  captions = ["a knight rides to the lake", "the witch waits in the desert at dawn and rides to the lake again"]
  ids, mask = ours(captions)
  want = ref(captions, padding="max_length", truncation=True, max_length=12, return_tensors="np")
  np.testing.assert_array_equal(ids, want["input_ids"])
  np.testing.assert_array_equal(mask, want["attention_mask"].astype(bool))
  assert mask[0].sum() < 12 and mask[1].all()  # one padded, one truncated
