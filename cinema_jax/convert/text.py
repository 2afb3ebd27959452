"""Text and image encoders' checkpoints (transformers safetensors) -> cinema_jax/models/{t5,clip}.py,
name for name (their tokenizer.json files are read by data_pipelines.tokenizer).

    t5 = T5EncoderModel(T5Config(...), nnx.Rngs(0)); load_t5(t5, load_state_dict("t5-v1_1-xxl/"))
    tok = tokenizer.Tokenizer("t5-v1_1-xxl/tokenizer.json", max_len=512); ids, mask = tok(["a caption"])
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cinema_jax.convert import mapping


def load_state_dict(path: str, subfolder: str = "text_encoder") -> dict[str, np.ndarray]:
  """Every tensor of a transformers checkpoint (.safetensors file, folder, or a diffusers pipeline
  folder's `subfolder`: text_encoder_2 holds FLUX's T5). Pickles are refused."""
  source = mapping.open_source(path, subfolder=subfolder, weights_name="model")
  return {k: source.get(k) for k in source.keys()}


def load_t5(model, state_dict: Mapping[str, np.ndarray]) -> None:
  """T5EncoderModel weights into models/t5.T5EncoderModel, in place."""
  sd = dict(state_dict)
  tied = sd.pop("encoder.embed_tokens.weight", None)  # the same matrix as shared.weight
  if tied is not None and "shared.weight" in sd and not np.array_equal(tied, sd["shared.weight"]):
    raise ValueError("encoder.embed_tokens.weight differs from shared.weight: not a T5 encoder with tied embeddings")
  if tied is not None and "shared.weight" not in sd:
    sd["shared.weight"] = tied
  mapping.load_by_name(model, sd, "T5 encoder state dict", embeddings=("shared", "relative_attention_bias"))


def load_clip(model, state_dict: Mapping[str, np.ndarray]) -> None:
  """CLIPTextModel or CLIPVisionModelWithProjection weights into models/clip.py's, in place."""
  sd = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}  # a buffer, not a weight
  # a whole CLIPModel holds both towers: keep this model's
  other = (("vision_model.", "visual_projection.") if hasattr(model, "text_model")
           else ("text_model.", "text_projection."))
  sd = {k: v for k, v in sd.items() if not k.startswith(other) and k != "logit_scale"}
  if hasattr(model, "text_model"):  # transformers 5 saves CLIPTextModel without the text_model. prefix
    sd = {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v for k, v in sd.items()}
  mapping.load_by_name(model, sd, "CLIP state dict", embeddings=("token_embedding", "position_embedding"))


