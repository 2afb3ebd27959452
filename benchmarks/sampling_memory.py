"""Parameter memory per device of FLUX.1-dev sampling, from shapes alone (jax.eval_shape, no weights):
the transformer as the rules table shards it, T5-XXL, CLIP-L and the VAE as cinema_jax.encoders places
them, in the sampling dtype, on meshes of 1 to 8 devices. What `python -m cinema_jax.sample` prints
for the same model, before any weight is read.

  python -m benchmarks.sampling_memory [--dtype=bfloat16] [--devices=1,8]
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

from absl import app  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from cinema_jax import cli  # pylint: disable=wrong-import-position
from cinema_jax import config_validation  # pylint: disable=wrong-import-position
from cinema_jax import encoders  # pylint: disable=wrong-import-position
from cinema_jax import sharding  # pylint: disable=wrong-import-position
from cinema_jax.models import clip  # pylint: disable=wrong-import-position
from cinema_jax.models import keyframe  # pylint: disable=wrong-import-position
from cinema_jax.models import t5  # pylint: disable=wrong-import-position
from cinema_jax.models import vae  # pylint: disable=wrong-import-position
from configs import keyframe as keyframe_config  # pylint: disable=wrong-import-position

_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Sampling parameter dtype.")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Mesh sizes (fsdp over all of them).")


def _per_device(shapes: list[tuple[int, ...]], shardings: list, itemsize: int) -> int:
  return sum(int(np.prod(s.shard_shape(shape))) * itemsize for shape, s in zip(shapes, shardings))


def report(n: int, dtype: str) -> dict[str, float]:
  c = keyframe_config.get_config("flux_dev")
  c.mesh.update(data=1, fsdp=-1)
  c = config_validation.load(c, reads_data=False)
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:n])
  itemsize = np.dtype(dtype).itemsize if dtype != "bfloat16" else 2
  _, abstract = nnx.split(keyframe.abstract(c))
  shapes = [x.shape for x in jax.tree.leaves(nnx.to_pure_dict(abstract))]
  out = {"transformer": _per_device(shapes, jax.tree.leaves(sharding.param_shardings(abstract, mesh)), itemsize)}
  towers = {"T5-XXL": lambda: t5.T5EncoderModel(t5.T5Config(), nnx.Rngs(0)),
            "CLIP-L text": lambda: clip.CLIPTextModel(clip.CLIPConfig(), nnx.Rngs(0)),
            "VAE": lambda: vae.AutoencoderKL(vae.VAEConfig(), nnx.Rngs(0))}
  for name, build in towers.items():
    shapes = [x.shape for x in jax.tree.leaves(nnx.state(nnx.eval_shape(build)))]
    out[name] = _per_device(shapes, [encoders.placement(s, mesh) for s in shapes], itemsize)
  return out


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  rows = {int(n): report(int(n), _DTYPE.value) for n in _DEVICES.value}
  names = list(next(iter(rows.values())))
  print(f"| devices | {' | '.join(names)} | total |")
  print("|---" * (len(names) + 2) + "|")
  for n, r in rows.items():
    print(f"| {n} | " + " | ".join(f"{r[k] / 2 ** 30:.2f} GiB" for k in names) +
          f" | {sum(r.values()) / 2 ** 30:.2f} GiB |")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
