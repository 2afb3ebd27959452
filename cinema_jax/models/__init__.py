"""MM-DiT models (FLUX architecture), RoPE, the attention entry point and the toy text encoder."""
