"""Converters from upstream checkpoints (diffusers FLUX) to cinema_jax parameter trees."""
