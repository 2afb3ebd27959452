"""Data for cinema_jax: shot records, the toy-movie world, the TFDS builder and grain pipelines."""
