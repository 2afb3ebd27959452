"""How faithfully an autoencoder keeps the toy world: the judge reads its reconstructions as it reads renders.

For each frame the judge reads the render and the reconstruction; the reconstruction agrees when it
names the same location and framing, and each character the judge finds in the render is found in the
reconstruction with the same colour, shape and size (a multiset match, so two red circles need two).
Wide shots' small sprites count like any other.

  python -m cinema_jax.eval.reconstruction --vae=AE/vae --data=TOY_ROOT/eval [--frames=256]
"""

from __future__ import annotations

import sys

import numpy as np

from cinema_jax.eval import judge as judge_lib


def agreement(renders_NHWC: np.ndarray, reconstructions_NHWC: np.ndarray) -> dict[str, float]:
  """Fractions of frames with the same location and framing, and of the renders' characters kept."""
  loc = framing = kept = total = 0
  for a, b in zip(renders_NHWC, reconstructions_NHWC):
    ja, jb = judge_lib.judge(a), judge_lib.judge(b)
    loc += ja.location == jb.location
    framing += ja.framing == jb.framing
    found = list(jb.appearances())
    for appearance in ja.appearances():
      total += 1
      if appearance in found:
        found.remove(appearance)
        kept += 1
  n = len(renders_NHWC)
  return {"frames": n, "location": loc / n, "framing": framing / n, "characters": kept / max(total, 1),
          "num_characters": total}


def reconstruct(frames, images_NHWC: np.ndarray, batch: int = 64) -> np.ndarray:
  """uint8 images through an encoders.VAEFrames (encode, decode) and back to uint8."""
  from cinema_jax import encoders  # pylint: disable=import-outside-toplevel
  out = [encoders.to_uint8(frames.decode(frames.encode(images_NHWC[i:i + batch])))
         for i in range(0, len(images_NHWC), batch)]
  return np.concatenate(out)


def main(argv=None) -> None:
  import argparse  # pylint: disable=import-outside-toplevel
  from cinema_jax.training import autoencoder  # pylint: disable=import-outside-toplevel
  from cinema_jax import encoders  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vae", required=True, help="an AutoencoderKL folder (config.json + safetensors)")
  p.add_argument("--data", required=True, help="a pixel dataset folder (records), e.g. the toy world's eval/")
  p.add_argument("--frames", type=int, default=256)
  a = p.parse_args(argv)
  try:
    frames = encoders.VAEFrames.load(a.vae)
    renders = autoencoder.calibration_frames(a.data, a.frames)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  r = agreement(renders, reconstruct(frames, renders))
  print(f"{r['frames']} frames, {r['num_characters']} characters: location {r['location']:.3f}, "
        f"framing {r['framing']:.3f}, characters {r['characters']:.3f}")


if __name__ == "__main__":
  main()
