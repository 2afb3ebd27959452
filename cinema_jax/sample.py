"""Samples movies for storylines: keyframes (keyframe model), then shot videos (video model), as a batch job.

  python -m cinema_jax.sample --workdir=DIR --storylines=FILE --outdir=OUT [--video_workdir=VDIR]
      [--seed=S] [--num_steps=N] [--guidance=G] [--mode=autoregressive|joint] [--max_shots=K]
      [--per_device_batch=B] [--process_id=I --num_processes=N]
      [--vae=VAE --t5=T5 --clip=CLIP [--retrieval_clip=CLIP_MODEL]]   # models on latents and T5/CLIP states
  python -m cinema_jax.sample --flux=CONVERTED --config=configs/keyframe.py --vae=... --t5=... --clip=... \
      --storylines=FILE --outdir=OUT   # a converted FLUX.1 transformer (cinema_jax.convert.flux), one pair

Only the parameters sampling uses are read (the EMA copy unless --raw_params), in config.sample.param_dtype
(bfloat16 on accelerators), onto the config's mesh; the parameter memory per device is printed.

FILE is JSONL, one storyline per line: {"title": ..., "captions": [...]} (data_pipelines.toy_movies
writes one), optionally with per-shot "characters" (lists of names) and "places" (names or null), which
evaluation's CLIP consistency reads (else a caption's <Name> tags say who is in it). Per storyline
OUT/<index>-<slug>/ gets keyframe_<k>.png, storyboard.png and manifest.json; with --video_workdir (a
trained configs/video.py model) also shot_<k>.mp4 (each shot, its keyframe first), movie.mp4 (the shots in
order) and movie.html (storyboard, captions and playable shots in one self-contained page). Each folder is
renamed into place whole. Several processes (hosts, or launch/local.py) split the storylines
(--process_id/--num_processes, or SLURM's SRUN environment); each batches storylines over its own devices.
Rerunning the same command skips complete storylines (cinema_jax/sampling/jobs.py).
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from cinema_jax import cli
from cinema_jax import errors
from cinema_jax import paths
from cinema_jax.sampling import jobs


def _define_flags() -> dict:
  return {
      **cli.define_encoder_flags(),
      "workdir": flags.DEFINE_string("workdir", None, "Training workdir (its latest checkpoint is used)."),
      "flux": flags.DEFINE_string("flux", None, "Instead of --workdir: a converted FLUX transformer folder "
                                  "(python -m cinema_jax.convert.flux), sampled with --config's model."),
      "config": config_flags.DEFINE_config_file("config", None, "With --flux: the model's config[:variant].",
                                                lock_config=False),
      "context_pairs": flags.DEFINE_integer("context_pairs", None, "Pairs in the autoregressive window (default: "
                                            "the training window; 1 with --flux: FLUX.1 has never seen context).",
                                            lower_bound=1),
      "param_dtype": flags.DEFINE_enum("param_dtype", None, ["auto", "float32", "bfloat16"],
                                       "Parameter dtype (default: config.sample.param_dtype)."),
      "storylines": flags.DEFINE_string("storylines", None, "JSONL file of storylines, or 'toy': the held-out "
                                        "storylines of the toy world the model was trained on.", required=True),
      "outdir": flags.DEFINE_string("outdir", None, "Where keyframes, storyboards and manifests go.", required=True),
      "seed": flags.DEFINE_integer("seed", 0, "Sampling seed; storyline i uses seed + i."),
      "num_steps": flags.DEFINE_integer("num_steps", None, "Euler steps (default: the config's sample.num_steps).",
                                        lower_bound=1),
      "guidance": flags.DEFINE_float("guidance", None, "CFG scale (default: the config's sample.guidance).",
                                     lower_bound=0.0),
      "mode": flags.DEFINE_enum("mode", None, ["autoregressive", "joint"], "Default: the config's sample.mode."),
      "max_shots": flags.DEFINE_integer("max_shots", None, "Keyframes per storyline (default: the config's; "
                                        "0 = all).", lower_bound=0),
      "raw_params": flags.DEFINE_bool("raw_params", False, "Sample with the raw parameters instead of the EMA copy."),
      "per_device_batch": flags.DEFINE_integer("per_device_batch", 1, "Storylines sampled together per device.",
                                               lower_bound=1),
      "video_workdir": flags.DEFINE_string("video_workdir", None, "A trained video model's workdir: also sample "
                                           "every shot's video from its keyframe (MP4s and an HTML page)."),
      "fps": flags.DEFINE_float("fps", 8.0, "Frame rate of the MP4s (the toy world's is 8)."),
      "video_scale": flags.DEFINE_integer("video_scale", 4, "Integer upscale of the MP4 frames (nearest pixel).",
                                          lower_bound=1),
      "process_id": flags.DEFINE_integer("process_id", None,
                                         "Batch jobs: this process's index (with --num_processes).", lower_bound=0),
      "num_processes": flags.DEFINE_integer("num_processes", None,
                                            "Batch jobs: how many processes share the storylines.", lower_bound=1),
  }


def main(argv, f: dict):
  v = {k: flag.value for k, flag in f.items()}
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    pid, nproc = jobs.process_identity(v["process_id"], v["num_processes"])
  except ValueError as e:
    sys.exit(f"error: {e}")
  if (v["workdir"] is None) == (v["flux"] is None):
    sys.exit("error: give either --workdir (a training run) or --flux with --config (a converted FLUX transformer)")
  if v["flux"] is not None and v["config"] is None:
    sys.exit("error: --flux needs --config=configs/keyframe.py[:VARIANT] (the converted model's size and settings)")
  if v["flux"] is not None and v["storylines"] == "toy":
    sys.exit("error: --storylines=toy needs a --workdir trained on the toy world")
  if v["fps"] <= 0:
    sys.exit(f"error: --fps={v['fps']}: expected > 0")
  try:
    paths.writable_folder(v["outdir"], "--outdir")  # before any work
    sampler, params, stories, info, c = jobs.keyframe_stage(
        v["workdir"], v["flux"], v["config"], v["storylines"], raw_params=v["raw_params"],
        param_dtype=v["param_dtype"], context_pairs=v["context_pairs"], encoder_flags=v,
        overrides={k: v[k] for k in ("num_steps", "guidance", "mode", "max_shots") if v[k] is not None})
    shots_fn, video = None, None
    if v["video_workdir"]:
      shots_fn, info_video, _ = jobs.video_stage(v["video_workdir"], c.data.resolution, v["raw_params"],
                                                 encoder_flags=v)
      info.update(info_video)
      video = {"fps": v["fps"], "scale": v["video_scale"]}
  except (errors.CheckpointError, errors.ConfigError, errors.DataError, FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  os.makedirs(v["outdir"], exist_ok=True)
  try:
    jobs.run(sampler, params, stories, v["outdir"], seed=v["seed"], max_shots=c.sample.max_shots,
             per_device_batch=v["per_device_batch"], process_id=pid, num_processes=nproc, info=info,
             title_suffix=f" (step {info['checkpoint_step']})", echo=lambda line: print(line, flush=True),
             shots_fn=shots_fn, video=video)
  except errors.DataError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  _flags = _define_flags()
  app.run(lambda argv: main(argv, _flags), flags_parser=cli.parse_flags)
