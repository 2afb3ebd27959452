"""The data section of every training config (`config.data`): what data_pipelines/pipeline.py reads.

The keyframe, video and autoencoder configs start from it; it is not a config file of its own.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The data section of a training config, with every field documented."""
  c = ml_collections.ConfigDict()
  c.path = ""  # shot-record dataset (records.py); "" = the toy world built under the workdir
  c.toy = ml_collections.ConfigDict(dict(  # the toy world used when path == "", rendered at `resolution`
      num_movies=64, seed=0, num_frames=8, min_shots=8, max_shots=64,
      autoencoder=""))  # models on latents: the toy autoencoder's folder (configs/autoencoder.py writes it)
  c.resolution = (32, 64)  # keyframe (H, W) in pixels; a dataset of PNG keyframes must match it
  c.num_pairs = 8  # P: (caption, keyframe) pairs per example
  c.max_stride = 4  # dynamic strided sampling: strides 1..max_stride
  c.max_overlap = 0.25  # most shots two windows of one movie share within an epoch, as a fraction of P
  c.seed = 0
  c.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever
  c.text_source = "tokens"  # "tokens": captions through `tokenizer` | "precomputed": the records' t5/clip_pooled
  c.tokenizer = ""  # text_source "tokens": a tokenizer.json; "" = the one beside the dataset (the toy world's)
  c.text_len = 48  # text tokens per pair (longer captions are truncated)
  # precomputed T5 states: "masked" (the caption's tokens, the padding masked) | "flux" (T5 ran on the
  # caption padded to text_len, every position kept and none masked: FLUX.1-dev's convention)
  c.text_convention = "masked"
  c.load_frames = False  # also decode each shot's frames (video model)
  c.context_order = "chronological"  # the window's context as it comes | "text": retrieval orders it
                                     # by caption similarity to the last shot | "image": by similarity
                                     # of the last caption to each keyframe (cinema_jax.retrieval)
  c.retrieval = ml_collections.ConfigDict(dict(
      encoder="words",  # caption embedding for "text": "words" (hashed bag of words, the toy world)
      embedding="",  # "image": ToyCLIP weights; "" = <workdir>/toy_clip.safetensors, trained on first use
      recency=0.0))  # weight of recency against similarity in the retrieval score
  c.memory_levels = "none"  # "none": every context frame at full resolution | "goldenmem"
  c.goldenmem = ml_collections.ConfigDict(dict(
      group_size=4,  # frames per level, newest first; or "quarters": the newest P/4 full, 3 groups after
      resize="pixels",  # "pixels": resize frames before the autoencoder (here: in the pipeline)
                        # | "latents": resize the model's input array (latents) on device
      phi=(1 + 5 ** 0.5) / 2))  # shrink factor per level
  c.worker_count = 0  # grain worker processes (0: decode in this process)
  c.worker_buffer_size = 4  # examples each worker keeps ready
  c.bad_records = "error"  # "error": stop at a malformed record | "skip": drop its window and count it
  c.max_bad_fraction = 0.01  # "skip": fail once skipped / seen exceeds this ...
  c.bad_records_min_seen = 100  # ... after at least this many examples
  return c
