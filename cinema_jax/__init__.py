"""cinema_jax: top-down keyframe planning and bottom-up video synthesis for short movies, in JAX."""

__version__ = "0.1.0"
