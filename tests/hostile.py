"""The hostile-input suite: bad flags, bad files and damaged state given to every command, each case with
the one line it must answer with.

A case runs its command in a subprocess (as a user would: absl flags are per process) and gets one of:
  ok          the expected outcome: for a refusal, a non-zero exit whose last stderr line is `error: ...`
              matching the case's pattern; for a recovery (a damaged checkpoint skipped), exit 0 with
              the expected line printed
  traceback   a Python traceback reached the console
  hang        still running at the case's timeout (killed)
  silent      exit 0 where a refusal was expected, or the expected line missing: a wrong result or a
              refusal nobody would see
  lost files  a file the case protects (the user's data, a dataset, a checkpoint) changed or vanished
  unclear     refused, but not with the expected one-line error (wrong words, or no `error:` line)

Shared inputs are made once (`Fixtures`): a small toy world, a tiny trained keyframe workdir with its
dataset and checkpoints, and a folder it sampled. Cases that damage something copy it first.

    python -m tests.hostile --write RELIABILITY.md   # every case, and the report
    python -m tests.hostile --only=curate            # the cases whose name contains "curate"

tests/test_hostile.py runs the same cases under pytest (CI).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CATEGORIES = {
    "integrity": "a damaged checkpoint (flipped bytes, missing manifest, every step damaged)",
    "dataset": "a damaged dataset (empty or truncated shard, index missing or wrong, not a dataset)",
    "overwrite": "a destination holding a user's data or other settings",
    "range": "a numeric flag or config field out of range",
    "signal": "Ctrl-C (SIGINT) during training",
    "path": "a missing path, a file for a folder or the reverse, a folder that cannot be written",
    "format": "bytes that are not what the file's name says (safetensors, JSON, UTF-8, videos)",
    "config": "a missing config file, variant or field, a mistyped value, a model shape that differs",
    "external": "a failing or missing external command (the captioner)",
    "hang": "a failure in a background thread (an asynchronous checkpoint commit)",
    "memory": "a size that cannot fit in memory",
}


VERDICTS = ("ok", "traceback", "hang", "silent", "lost files", "unclear", "setup failed")


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  category: str
  args: tuple[str, ...]  # `python -m <args>`; {tmp}, {world}, {workdir}, {dataset}, {sampled} are filled in
  expect: str  # a regex the answer's line must match (re.search)
  setup: Callable[[str, dict], None] | None = None  # makes the case's inputs in its tmp folder
  protect: tuple[str, ...] = ()  # paths (placeholders allowed) whose files must be as they were
  recovers: bool = False  # exit 0 is right when `expect` is printed (a damaged checkpoint skipped)
  exit_code: int | None = None  # the expected non-zero code, where one is documented (default: any)
  signal_after: str = ""  # send SIGINT once this text appears on stderr
  timeout_s: float = 120


@dataclasses.dataclass
class Result:
  verdict: str
  code: int | None
  line: str
  seconds: float


# --- shared inputs -------------------------------------------------------------------------------------

TINY_TRAIN = ("cinema_jax.train", "--config=configs/keyframe.py:tiny", "--config.log.sample_every_steps=0",
              "--config.checkpoint.every_steps=1")


def env() -> dict[str, str]:
  """One CPU device, as a user's laptop has (the tests' 8 fake devices are for sharding tests)."""
  e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTEST_CURRENT_TEST")}
  e.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + e.get("PYTHONPATH", ""))
  return e


def _run(args, **kw) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env(), capture_output=True, text=True, **kw)


def make_fixtures(root: str) -> dict[str, str]:
  """A toy world, a tiny workdir trained 2 steps (checkpoints 1 and 2) and a folder sampled from it."""
  fx = {"world": os.path.join(root, "world"), "workdir": os.path.join(root, "workdir"),
        "sampled": os.path.join(root, "sampled")}
  steps = [("data_pipelines.toy_movies", f"--out={fx['world']}", "--num_movies=3", "--num_storylines=1",
            "--height=16", "--width=32", "--num_frames=2", "--min_shots=2", "--max_shots=4", "--num_shards=2"),
           (*TINY_TRAIN, f"--workdir={fx['workdir']}", "--config.total_steps=2"),
           ("cinema_jax.sample", f"--workdir={fx['workdir']}", "--storylines=toy", f"--outdir={fx['sampled']}",
            "--max_shots=2", "--num_steps=2")]
  for args in steps:
    p = _run(args, timeout=600)
    if p.returncode:
      raise RuntimeError(f"making the suite's inputs: {' '.join(args)} exited {p.returncode}\n{p.stderr[-3000:]}")
  data = os.path.join(fx["workdir"], "data")
  fx["dataset"] = os.path.join(data, next(n for n in os.listdir(data) if n.startswith("toy-")), "train")
  return fx


# --- helpers the cases' setups use -------------------------------------------------------------------------


def copy(src: str, dst: str) -> str:
  shutil.copytree(src, dst, symlinks=True)
  return dst


def write(path: str, data: bytes | str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data.encode() if isinstance(data, str) else data)
  return path


def newest_step(workdir: str) -> str:
  ckpt = os.path.join(workdir, "checkpoints")
  return os.path.join(ckpt, str(max(int(n) for n in os.listdir(ckpt) if n.isdigit())))


def flip_bytes(workdir: str, all_steps: bool = False) -> None:
  """Flips 16 bytes in the middle of every data file of the newest step (or of every step)."""
  ckpt = os.path.join(workdir, "checkpoints")
  steps = [os.path.join(ckpt, n) for n in os.listdir(ckpt) if n.isdigit()] if all_steps else [newest_step(workdir)]
  for step in steps:
    for d, _, names in os.walk(os.path.join(step, "state")):
      for n in names if os.path.basename(d) == "d" else ():
        with open(os.path.join(d, n), "r+b") as f:
          data = bytearray(f.read())
          for i in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
            data[i] ^= 0xFF
          f.seek(0)
          f.write(data)


def drop_manifest(workdir: str) -> None:
  os.remove(os.path.join(newest_step(workdir), "state", "manifest.ocdbt"))


def storylines(tmp: str, lines: list[str] | bytes) -> str:
  return write(os.path.join(tmp, "s.jsonl"), lines if isinstance(lines, bytes) else "\n".join(lines) + "\n")


def video(path: str) -> None:
  from data_pipelines.synthetic_video import write_clip  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_clip(path, [12, 12], size=(32, 64))


def safetensors_file(path: str, tensors: dict) -> str:
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path), exist_ok=True)
  save_file(tensors, path)
  return path


def pickle_file(path: str) -> str:
  import pickle  # pylint: disable=import-outside-toplevel  # writing one, to see it refused (never read)
  return write(path, pickle.dumps({"weight": [1.0, 2.0]}))


def shard(dataset: str, i: int = 0) -> str:
  return os.path.join(dataset, sorted(n for n in os.listdir(dataset) if ".array_record" in n)[i])


# --- the cases -------------------------------------------------------------------------------------------

T, S, E, V = "data_pipelines.toy_movies", "cinema_jax.sample", "cinema_jax.evaluate", "cinema_jax.evaluate_video"
C, P, F, W = "data_pipelines.curate", "data_pipelines.precompute", "cinema_jax.convert.flux", "data_pipelines.preview"
TRAIN = (*TINY_TRAIN, "--workdir={tmp}/run", "--config.total_steps=2")
RESUME = (*TINY_TRAIN, "--workdir={tmp}/wd", "--config.total_steps=3")
SAMPLE = (S, "--workdir={workdir}", "--storylines=toy", "--outdir={tmp}/out", "--max_shots=2", "--num_steps=2")
WORLD = (T, "--num_movies=2", "--num_storylines=1", "--height=16", "--width=32", "--num_frames=2", "--min_shots=2",
         "--max_shots=3")
CURATE = (C, "--videos={tmp}/videos", "--out={tmp}/out", "--captions={tmp}/caps", "--short_side=16",
          "--min_scene_len=3", "--min_shot_s=0.2")
PRECOMPUTE = (P, "--src={dataset}", "--dst={tmp}/dst", "--vae={tmp}/vae")
CONVERT = (F, "--config=configs/keyframe.py:tiny", "--src={tmp}/flux.safetensors", "--dst={tmp}/dst")
EVALUATE = (E, "--workdir={workdir}", "--storylines=toy", "--out={tmp}/report", "--max_storylines=1",
            "--max_shots=2", "--num_steps=2", "--num_pairs=1")
ONE_STORY = '{"title": "A", "captions": ["Wide shot in the desert.", "Close shot in the desert."]}'


def _wd(tmp, fx):
  copy(fx["workdir"], os.path.join(tmp, "wd"))


def _videos(tmp, fx, n=1):
  for i in range(n):
    video(os.path.join(tmp, "videos", f"film{i}.mp4"))
    if not os.path.exists(os.path.join(tmp, "caps", f"film{i}.json")):
      write(os.path.join(tmp, "caps", f"film{i}.json"), json.dumps({"0": "<Ann> waves.", "1": "<Ann> runs."}))


def _tiny_vae(tmp, fx):
  """A random toy-size autoencoder folder as precompute reads one."""
  from cinema_jax.models import vae  # pylint: disable=import-outside-toplevel
  from cinema_jax.training import autoencoder  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  ae = vae.AutoencoderKL(vae.VAEConfig(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                                       norm_num_groups=4), rngs=nnx.Rngs(0))
  autoencoder.save(ae, os.path.join(tmp, "vae"))


def _cases() -> list[Case]:
  c = []
  add = lambda *a, **kw: c.append(Case(*a, **kw))

  # toy_movies
  add("toy_movies: no --out", "path", (T,), r"--out")
  add("toy_movies: --out is a file", "path", (*WORLD, "--out={tmp}/f"), r"--out=.*/f is a file",
      setup=lambda t, fx: write(f"{t}/f", "mine"), protect=("{tmp}/f",))
  add("toy_movies: --out holds a user's files", "overwrite", (*WORLD, "--out={tmp}/mine"), r"--out=.*mine",
      setup=lambda t, fx: write(f"{t}/mine/notes.txt", "mine"), protect=("{tmp}/mine",))
  add("toy_movies: --overwrite over a user's files", "overwrite", (*WORLD, "--out={tmp}/mine", "--overwrite"),
      r"--out=.*mine.*other files", setup=lambda t, fx: write(f"{t}/mine/notes.txt", "mine"),
      protect=("{tmp}/mine",))
  add("toy_movies: --out an existing world", "overwrite", (*WORLD, "--out={world}"), r"--out=.*world",
      protect=("{world}",))
  add("toy_movies: --out cannot be written", "path", (*WORLD, "--out=/proc/self/world"), r"not writable")
  add("toy_movies: --num_movies=0", "range", (*WORLD, "--out={tmp}/w", "--num_movies=0"), r"num_movies")
  add("toy_movies: --min_shots above --max_shots", "range", (*WORLD, "--out={tmp}/w", "--min_shots=5"),
      r"min_shots")
  add("toy_movies: --height=0", "range", (*WORLD, "--out={tmp}/w", "--height=0"), r"height")
  add("toy_movies: --num_frames=0", "range", (*WORLD, "--out={tmp}/w", "--num_frames=0"), r"num_frames")
  add("toy_movies: --num_shards=0", "range", (*WORLD, "--out={tmp}/w", "--num_shards=0"), r"num_shards")
  add("toy_movies: --num_storylines=-1", "range", (*WORLD, "--out={tmp}/w", "--num_storylines=-1"),
      r"num_storylines")
  add("toy_movies: --seed=-1", "range", (*WORLD, "--out={tmp}/w", "--seed=-1"), r"--seed=-1")
  add("toy_movies: frames too large for memory", "memory",
      (*WORLD, "--out={tmp}/w", "--height=200000", "--width=200000"),
      r"200000x200000 need about .* GiB in memory", timeout_s=60)

  # train: config
  add("train: missing config file", "config", (*TRAIN[:1], "--config=configs/nope.py", "--workdir={tmp}/r"),
      r"nope\.py")
  add("train: unknown variant", "config", (*TRAIN[:1], "--config=configs/keyframe.py:huge", "--workdir={tmp}/r"),
      r"huge")
  add("train: unknown config field", "config", (*TRAIN, "--config.model.hiden=64"), r"hiden")
  add("train: a word for an int field", "config", (*TRAIN, "--config.model.hidden=wide"), r"hidden")
  add("train: a fraction for num_pairs", "config", (*TRAIN, "--config.data.num_pairs=2.5"), r"num_pairs")
  add("train: total_steps=0", "range", (*TRAIN, "--config.total_steps=0"), r"total_steps")
  add("train: total_steps=-5", "range", (*TRAIN, "--config.total_steps=-5"), r"total_steps")
  add("train: negative learning rate", "range", (*TRAIN, "--config.optimizer.lr=-1"), r"optimizer\.lr")
  add("train: batch_size=0", "range", (*TRAIN, "--config.batch_size=0"), r"batch_size")
  add("train: checkpoint.every_steps=0", "range", (*TRAIN, "--config.checkpoint.every_steps=0"),
      r"every_steps")
  add("train: ema decay above 1", "range", (*TRAIN, "--config.ema_decay=1.5"), r"ema_decay")
  add("train: a negative toy-world seed", "range", (*TRAIN, "--config.data.toy.seed=-1"), r"data\.toy\.seed=-1")
  add("train: a mesh the devices cannot make", "range", (*TRAIN, "--config.mesh.data=3"), r"mesh")
  add("train: --stop_at_step=0", "range", (*TRAIN, "--stop_at_step=0"), r"stop_at_step")
  add("train: --num_processes without a coordinator", "config", (*TRAIN, "--num_processes=2", "--process_id=0"),
      r"coordinator")
  add("train: resolution too large for memory", "memory",
      (*TRAIN, "--config.data.resolution=(65536,131072)"), r"a training step needs at least .* GiB", timeout_s=90)
  add("train: resume with another model shape", "config",
      (*RESUME, "--config.model.hidden=64", "--config.model.axes_dim=(8,12,12)"), r"hidden=32 there, 64",
      setup=_wd, protect=("{tmp}/wd/checkpoints",))
  # train: paths
  add("train: no --workdir", "path", TRAIN[:-2], r"workdir")
  add("train: --workdir is a file", "path", (*TRAIN[:-2], "--workdir={tmp}/f", "--config.total_steps=2"),
      r"--workdir=.*f is a file", setup=lambda t, fx: write(f"{t}/f", "mine"), protect=("{tmp}/f",))
  add("train: --workdir cannot be written", "path", (*TRAIN[:-2], "--workdir=/proc/self/run",
                                                      "--config.total_steps=2"), r"not writable")
  add("train: config.data.path missing", "path", (*TRAIN, "--config.data.path={tmp}/none"),
      r"none: the folder does not exist")
  add("train: config.data.path is a file", "path", (*TRAIN, "--config.data.path={tmp}/f"),
      r"a file, not a dataset folder",
      setup=lambda t, fx: write(f"{t}/f", "x"))
  add("train: config.data.tokenizer missing", "path", (*TRAIN, "--config.data.tokenizer={tmp}/tok.json"),
      r"tok\.json")
  add("train: config.data.tokenizer not JSON", "format", (*TRAIN, "--config.data.tokenizer={tmp}/tok.json"),
      r"tok\.json", setup=lambda t, fx: write(f"{t}/tok.json", b"\x00\xff not json"))
  # train: datasets
  data_run = (*TRAIN, "--config.data.path={tmp}/data")
  dataset = lambda t, fx: copy(fx["dataset"], f"{t}/data")
  add("train: an empty shard", "dataset", data_run, r"shots-00000.*(records|index)",
      setup=lambda t, fx: (dataset(t, fx), write(shard(f"{t}/data"), b"")), protect=("{tmp}/data",))
  add("train: a truncated shard", "dataset", data_run, r"shots-00001",
      setup=lambda t, fx: (dataset(t, fx), _truncate(shard(f"{t}/data", 1))), protect=("{tmp}/data",))
  add("train: a shard missing", "dataset", data_run, r"shots-00002",
      setup=lambda t, fx: (dataset(t, fx), os.remove(shard(f"{t}/data", 2))), protect=("{tmp}/data",))
  add("train: index.json missing", "dataset", data_run, r"index\.json",
      setup=lambda t, fx: (dataset(t, fx), os.remove(f"{t}/data/index.json")), protect=("{tmp}/data",))
  add("train: index.json not JSON", "dataset", data_run, r"index\.json",
      setup=lambda t, fx: (dataset(t, fx), write(f"{t}/data/index.json", "{not json")), protect=("{tmp}/data",))
  add("train: index.json of another schema", "dataset", data_run, r"index\.json",
      setup=lambda t, fx: (dataset(t, fx), write(f"{t}/data/index.json", '{"version": 99}')),
      protect=("{tmp}/data",))
  add("train: a record that is not a shot", "dataset", data_run, r"shots-0000\d.*record",
      setup=lambda t, fx: (dataset(t, fx), _bad_record(f"{t}/data")), protect=("{tmp}/data",))
  # train: damaged checkpoints
  add("train: resume, newest step's bytes flipped", "integrity", RESUME,
      r"step 2 .*(damaged|cannot be read).*falling back to the previous checkpoint",
      setup=lambda t, fx: (_wd(t, fx), flip_bytes(f"{t}/wd")), recovers=True)
  add("train: resume, newest step's manifest missing", "integrity", RESUME,
      r"step 2 .*(damaged|cannot be read).*falling back to the previous checkpoint",
      setup=lambda t, fx: (_wd(t, fx), drop_manifest(f"{t}/wd")),
      recovers=True)
  add("train: resume, every step damaged", "integrity", RESUME, r"damaged",
      setup=lambda t, fx: (_wd(t, fx), flip_bytes(f"{t}/wd", all_steps=True)))
  add("train: resume, checkpoints is a file", "path", RESUME, r"checkpoints",
      setup=lambda t, fx: write(f"{t}/wd/checkpoints", "x"), protect=("{tmp}/wd/checkpoints",))
  add("train: an async checkpoint commit fails", "hang",
      ("tests.hostile_inject", "async_commit", *TINY_TRAIN, "--workdir={tmp}/run", "--config.total_steps=100000",
       "--config.checkpoint.async_save=True", "--config.checkpoint.on_save_error=stop"),
      r"save .*failed \(OSError: \[Errno 28\] No space left", timeout_s=90)
  add("train: SIGINT during training", "signal", (*TINY_TRAIN, "--workdir={tmp}/run", "--config.total_steps=100000",
                                                   "--config.checkpoint.every_steps=100000"),
      r"interrupted at step \d+: its checkpoint is committed", signal_after="step 2:", recovers=True, exit_code=130,
      timeout_s=180)

  # sample
  add("sample: no --workdir or --flux", "config", (S, "--storylines=toy", "--outdir={tmp}/o"), r"--workdir")
  add("sample: --workdir missing", "path", (S, "--workdir={tmp}/none", "--storylines=toy", "--outdir={tmp}/o"),
      r"--workdir=.*none")
  add("sample: --workdir is a file", "path", (S, "--workdir={tmp}/f", "--storylines=toy", "--outdir={tmp}/o"),
      r"--workdir=.*f", setup=lambda t, fx: write(f"{t}/f", "x"))
  add("sample: --workdir without checkpoints", "path", (S, "--workdir={tmp}/e", "--storylines=toy",
                                                        "--outdir={tmp}/o"), r"checkpoint",
      setup=lambda t, fx: os.makedirs(f"{t}/e"))
  add("sample: newest step's bytes flipped", "integrity", (*SAMPLE[:1], "--workdir={tmp}/wd", *SAMPLE[2:]),
      r"step 2 .*(damaged|cannot be read)", setup=lambda t, fx: (_wd(t, fx), flip_bytes(f"{t}/wd")),
      protect=("{tmp}/wd",))
  add("sample: newest step's manifest missing", "integrity", (*SAMPLE[:1], "--workdir={tmp}/wd", *SAMPLE[2:]),
      r"step 2 .*(damaged|cannot be read)", setup=lambda t, fx: (_wd(t, fx), drop_manifest(f"{t}/wd")))
  add("sample: --num_steps=0", "range", (*SAMPLE, "--num_steps=0"), r"num_steps")
  add("sample: --max_shots=-1", "range", (*SAMPLE, "--max_shots=-1"), r"max_shots")
  add("sample: --guidance=-1", "range", (*SAMPLE, "--guidance=-1"), r"guidance")
  add("sample: --per_device_batch=0", "range", (*SAMPLE, "--per_device_batch=0"), r"per_device_batch")
  add("sample: --context_pairs=0", "range", (*SAMPLE, "--context_pairs=0"), r"context_pairs")
  add("sample: --fps=0", "range", (*SAMPLE, "--fps=0"), r"fps")
  add("sample: --video_scale=0", "range", (*SAMPLE, "--video_scale=0"), r"video_scale")
  add("sample: --process_id beyond --num_processes", "range", (*SAMPLE, "--process_id=2", "--num_processes=2"),
      r"process_id")
  add("sample: --param_dtype=float16", "config", (*SAMPLE, "--param_dtype=float16"), r"param_dtype")
  add("sample: --storylines missing", "path", (*SAMPLE[:2], "--storylines={tmp}/none.jsonl", *SAMPLE[3:]),
      r"none\.jsonl")
  add("sample: --storylines is a folder", "path", (*SAMPLE[:2], "--storylines={tmp}", *SAMPLE[3:]),
      r"--storylines=.*folder")
  add("sample: --storylines not UTF-8", "format", (*SAMPLE[:2], "--storylines={tmp}/s.jsonl", *SAMPLE[3:]),
      r"s\.jsonl.*UTF-8", setup=lambda t, fx: storylines(t, b"\xff\xfe\x00garbage\n"))
  add("sample: --storylines line not JSON", "format", (*SAMPLE[:2], "--storylines={tmp}/s.jsonl", *SAMPLE[3:]),
      r"s\.jsonl.*line 2", setup=lambda t, fx: storylines(t, [ONE_STORY, "{oops"]))
  add("sample: --storylines without captions", "format", (*SAMPLE[:2], "--storylines={tmp}/s.jsonl", *SAMPLE[3:]),
      r"s\.jsonl.*captions", setup=lambda t, fx: storylines(t, ['{"title": "A"}']))
  add("sample: --storylines with no captions", "format", (*SAMPLE[:2], "--storylines={tmp}/s.jsonl", *SAMPLE[3:]),
      r"s\.jsonl.*captions", setup=lambda t, fx: storylines(t, ['{"title": "A", "captions": []}']))
  add("sample: --storylines caption not text", "format", (*SAMPLE[:2], "--storylines={tmp}/s.jsonl", *SAMPLE[3:]),
      r"s\.jsonl.*caption", setup=lambda t, fx: storylines(t, ['{"title": "A", "captions": ["ok", 7]}']))
  add("sample: --storylines empty", "format", (*SAMPLE[:2], "--storylines={tmp}/s.jsonl", *SAMPLE[3:]),
      r"s\.jsonl.*(no storylines|empty)", setup=lambda t, fx: storylines(t, b""))
  add("sample: --outdir is a file", "path", (*SAMPLE[:3], "--outdir={tmp}/f", *SAMPLE[4:]), r"--outdir=.*f",
      setup=lambda t, fx: write(f"{t}/f", "mine"), protect=("{tmp}/f",))
  add("sample: --outdir cannot be written", "path", (*SAMPLE[:3], "--outdir=/proc/self/o", *SAMPLE[4:]),
      r"not writable")
  add("sample: --outdir holds a user's files", "overwrite", (*SAMPLE[:3], "--outdir={tmp}/mine", *SAMPLE[4:]),
      r"--outdir=.*mine", setup=lambda t, fx: write(f"{t}/mine/notes.txt", "mine"), protect=("{tmp}/mine",))
  for flag in ("--seed=5", "--num_steps=3", "--max_shots=1", "--guidance=2.5", "--raw_params"):
    add(f"sample: a finished outdir, other {flag.split('=')[0][2:]}", "overwrite",
        (*SAMPLE[:3], "--outdir={tmp}/sampled", *SAMPLE[4:], flag), r"--outdir=.*sampled.*",
        setup=lambda t, fx: copy(fx["sampled"], f"{t}/sampled"), protect=("{tmp}/sampled",))
  add("sample: --video_workdir missing", "path", (*SAMPLE, "--video_workdir={tmp}/none"), r"--video_workdir")
  add("sample: --video_workdir is a keyframe model", "config", (*SAMPLE, "--video_workdir={workdir}"),
      r"video")
  add("sample: --flux folder missing", "path", (S, "--flux={tmp}/none", "--config=configs/keyframe.py:tiny",
                                                "--storylines={tmp}/s.jsonl", "--outdir={tmp}/o"), r"--flux=.*none",
      setup=lambda t, fx: storylines(t, [ONE_STORY]))
  add("sample: --flux without --config", "config", (S, "--flux={tmp}", "--storylines=toy", "--outdir={tmp}/o"),
      r"--config")

  # evaluate, evaluate_video, preview
  add("evaluate: --out is a file", "path", (*EVALUATE[:3], "--out={tmp}/f", *EVALUATE[4:]), r"--out=.*f",
      setup=lambda t, fx: write(f"{t}/f", "mine"), protect=("{tmp}/f",))
  add("evaluate: --out cannot be written", "path", (*EVALUATE[:3], "--out=/proc/self/r", *EVALUATE[4:]),
      r"not writable")
  add("evaluate: --num_pairs not a number", "config", (*EVALUATE[:-1], "--num_pairs=1,many"), r"num_pairs")
  add("evaluate: --num_pairs=0", "range", (*EVALUATE[:-1], "--num_pairs=0"), r"num_pairs")
  add("evaluate: --context_t one value", "config", (*EVALUATE, "--context_t=0.5"), r"context_t")
  add("evaluate: --context_t reversed", "range", (*EVALUATE, "--context_t=0.9,0.1"), r"context_t")
  add("evaluate: --max_storylines=-1", "range", (*EVALUATE, "--max_storylines=-1"), r"max_storylines")
  add("evaluate: neither --workdir nor --samples", "config", (E, "--storylines=toy", "--out={tmp}/r"),
      r"--workdir")
  add("evaluate: --samples missing", "path",
      (E, "--samples={tmp}/none", "--storylines={world}/storylines.jsonl", "--out={tmp}/r"), r"none")
  add("evaluate: storylines without their truth", "path",
      (*EVALUATE[:2], "--storylines={tmp}/s.jsonl", *EVALUATE[3:]), r"truth",
      setup=lambda t, fx: storylines(t, [ONE_STORY]))
  add("evaluate_video: --video_workdir missing", "path", (V, "--video_workdir={tmp}/none", "--out={tmp}/r"),
      r"--video_workdir")
  add("evaluate_video: --out is a file", "path", (V, "--video_workdir={workdir}", "--out={tmp}/f"), r"--out",
      setup=lambda t, fx: write(f"{t}/f", "mine"), protect=("{tmp}/f",))
  add("evaluate_video: --max_shots=-1", "range", (V, "--video_workdir={workdir}", "--out={tmp}/r",
                                                  "--max_shots=-1"), r"max_shots")
  add("preview: --num_batches=0", "range", (W, "--config=configs/keyframe.py:tiny", "--workdir={tmp}/p",
                                            "--num_batches=0"), r"num_batches")
  add("preview: --workdir is a file", "path", (W, "--config=configs/keyframe.py:tiny", "--workdir={tmp}/f"),
      r"--workdir=.*f", setup=lambda t, fx: write(f"{t}/f", "mine"), protect=("{tmp}/f",))

  # curate
  add("curate: --videos missing", "path", (C, "--videos={tmp}/none", "--out={tmp}/out"), r"--videos")
  add("curate: --videos glob with no match", "path", (C, "--videos={tmp}/*.mp4", "--out={tmp}/out"), r"no files")
  add("curate: --videos empty folder", "path", CURATE, r"--videos", setup=lambda t, fx: os.makedirs(f"{t}/videos"))
  add("curate: --out is a file", "path", (*CURATE[:2], "--out={tmp}/f", *CURATE[3:]), r"--out=.*f",
      setup=lambda t, fx: (_videos(t, fx), write(f"{t}/f", "mine")), protect=("{tmp}/f",))
  add("curate: --out cannot be written", "path", (*CURATE[:2], "--out=/proc/self/c", *CURATE[3:]),
      r"not writable", setup=_videos)
  add("curate: --out holds a user's files", "overwrite", CURATE, r"--out=.*other data",
      setup=lambda t, fx: (_videos(t, fx), write(f"{t}/out/notes.txt", "mine")), protect=("{tmp}/out",))
  add("curate: --out is a toy dataset", "overwrite", (*CURATE[:2], "--out={world}", *CURATE[3:]),
      r"other data", setup=_videos, protect=("{world}",))
  add("curate: --out curated with other settings", "overwrite", (*CURATE, "--short_side=32"),
      r"short_side=16.*32", setup=_curated, protect=("{tmp}/out",))
  add("curate: --captions missing", "path", (*CURATE, "--captions={tmp}/none"), r"--captions", setup=_videos)
  add("curate: --captions is a file", "path", (*CURATE, "--captions={tmp}/f"), r"--captions",
      setup=lambda t, fx: (_videos(t, fx), write(f"{t}/f", "x")))
  add("curate: a caption sidecar not JSON", "format", CURATE, r"film0\.json",
      setup=lambda t, fx: (write(f"{t}/caps/film0.json", "{oops"), _videos(t, fx)))
  add("curate: a video that is not a video", "format", CURATE, r"1 of 1 films could not be curated: film0",
      setup=lambda t, fx: (write(f"{t}/videos/film0.mp4", b"not a video at all"), write(f"{t}/caps/film0.json", "{}")))
  add("curate: no caption for any shot", "format", (*CURATE, "--captions="), r"no film kept a captioned shot",
      setup=_videos)
  add("curate: a failing captioner", "external", (*CURATE, "--captions=", "--captioner=sh -c 'exit 3' {image}"),
      r"captioner.*exited 3", setup=_videos)
  add("curate: a missing captioner", "external", (*CURATE, "--captions=", "--captioner=no-such-captioner {image}"),
      r"captioner.*no-such-captioner", setup=_videos)
  add("curate: --aspect=0", "range", (*CURATE, "--aspect=0"), r"aspect", setup=_videos)
  add("curate: --fps=0", "range", (*CURATE, "--fps=0"), r"fps", setup=_videos)
  add("curate: --frames=-1", "range", (*CURATE, "--frames=-1"), r"frames", setup=_videos)
  add("curate: --workers=0", "range", (*CURATE, "--workers=0"), r"workers", setup=_videos)
  add("curate: --dark_luma=300", "range", (*CURATE, "--dark_luma=300"), r"dark_luma", setup=_videos)

  # precompute
  add("precompute: --src missing", "path", (P, "--src={tmp}/none", "--dst={tmp}/dst", "--vae={tmp}/vae"),
      r"--src=.*none: no such folder")
  add("precompute: --src is a file", "path", (P, "--src={tmp}/f", "--dst={tmp}/dst", "--vae={tmp}/vae"),
      r"--src=.*f", setup=lambda t, fx: write(f"{t}/f", "x"))
  add("precompute: --src not a dataset", "dataset", (P, "--src={tmp}", "--dst={tmp}/dst", "--vae={tmp}/vae"),
      r"index\.json")
  add("precompute: --vae missing", "path", PRECOMPUTE, r"--vae=.*vae: no such folder")
  add("precompute: --vae random bytes named .safetensors", "format", PRECOMPUTE, r"safetensors",
      setup=lambda t, fx: (write(f"{t}/vae/config.json", "{}"),
                           write(f"{t}/vae/diffusion_pytorch_model.safetensors", os.urandom(4096))))
  add("precompute: --vae pickled weights only", "format", PRECOMPUTE,
      r"a pickle checkpoint; cinema_jax never unpickles",
      setup=lambda t, fx: (write(f"{t}/vae/config.json", "{}"), pickle_file(f"{t}/vae/diffusion_pytorch_model.bin")))
  add("precompute: --dst holds a user's files", "overwrite", PRECOMPUTE, r"--dst=.*(other files|notes)",
      setup=lambda t, fx: (_tiny_vae(t, fx), write(f"{t}/dst/notes.txt", "mine")), protect=("{tmp}/dst",))
  add("precompute: --dst is a file", "path", (*PRECOMPUTE[:2], "--dst={tmp}/f", PRECOMPUTE[3]), r"--dst=.*f",
      setup=lambda t, fx: (_tiny_vae(t, fx), write(f"{t}/f", "mine")), protect=("{tmp}/f",))
  add("precompute: --batch_size=0", "range", (*PRECOMPUTE, "--batch_size=0"), r"batch_size")
  add("precompute: --process_id beyond --num_processes", "range",
      (*PRECOMPUTE, "--process_id=3", "--num_processes=2"), r"process_id", setup=_tiny_vae)
  add("precompute: --t5_len=0", "range", (*PRECOMPUTE, "--t5_len=0"), r"t5_len")
  add("precompute: --t5 missing", "path", (*PRECOMPUTE, "--t5={tmp}/none"), r"none", setup=_tiny_vae)

  # convert.flux
  add("convert: --src missing", "path", CONVERT, r"--src")
  add("convert: --src random bytes named .safetensors", "format", CONVERT, r"flux\.safetensors",
      setup=lambda t, fx: write(f"{t}/flux.safetensors", os.urandom(4096)))
  add("convert: --src empty .safetensors", "format", CONVERT, r"flux\.safetensors",
      setup=lambda t, fx: write(f"{t}/flux.safetensors", b""))
  add("convert: --src pickled weights", "format", (*CONVERT[:2], "--src={tmp}/flux.pt", CONVERT[3]),
      r"a pickle checkpoint; cinema_jax never unpickles", setup=lambda t, fx: pickle_file(f"{t}/flux.pt"))
  add("convert: --src of other weights", "format", CONVERT, r"not a FLUX transformer checkpoint",
      setup=lambda t, fx: safetensors_file(f"{t}/flux.safetensors", {"w": _zeros((2, 2))}))
  add("convert: --src of mis-shaped weights", "format", CONVERT, r"does not match the model config",
      setup=lambda t, fx: safetensors_file(f"{t}/flux.safetensors", {"x_embedder.weight": _zeros((2, 2))}))
  junk = lambda t: write(f"{t}/flux.safetensors", os.urandom(64))  # never read: the --dst check comes first
  add("convert: --dst is a file", "path", (*CONVERT[:3], "--dst={tmp}/f"), r"--dst=.*f is a file",
      setup=lambda t, fx: (junk(t), write(f"{t}/f", "mine")), protect=("{tmp}/f",))
  add("convert: --dst holds a user's files", "overwrite", CONVERT, r"--dst=.*other files",
      setup=lambda t, fx: (junk(t), write(f"{t}/dst/notes.txt", "mine")), protect=("{tmp}/dst",))
  add("convert: --to=bfl from a folder that is not a conversion", "path",
      (F, "--config=configs/keyframe.py:tiny", "--src={tmp}/none", "--dst={tmp}/dst", "--to=bfl"), r"--src")
  return c


def _truncate(path: str) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _bad_record(dataset: str) -> None:
  """Replaces a shard with one of the same record count whose records are not shots."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  path = shard(dataset)
  reader = array_record_module.ArrayRecordReader(path)
  n = reader.num_records()
  reader.close()
  os.remove(path)
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for _ in range(n):
    writer.write(b"not a shot record")
  writer.close()


def _zeros(shape):
  import numpy as np  # pylint: disable=import-outside-toplevel
  return np.zeros(shape, np.float32)


def _curated(tmp: str, fx: dict) -> None:
  _videos(tmp, fx)
  p = _run([a.replace("{tmp}", tmp) for a in CURATE], timeout=300)
  if p.returncode:
    raise RuntimeError(f"curating the case's first run: {p.stderr[-2000:]}")


CASES = _cases()


# --- running a case -------------------------------------------------------------------------------------------


def _fill(s: str, tmp: str, fx: dict) -> str:
  for key, value in {"tmp": tmp, **fx}.items():
    s = s.replace("{" + key + "}", value)
  return s


def _snapshot(path: str) -> dict[str, str]:
  if os.path.isfile(path):
    with open(path, "rb") as f:
      return {"": hashlib.sha256(f.read()).hexdigest()}
  out = {}
  for d, _, names in os.walk(path):
    for n in names:
      p = os.path.join(d, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, path)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _lost(before: dict[str, str], after: dict[str, str]) -> list[str]:
  """Files that vanished or changed (new files beside them are not a loss)."""
  return [name for name, digest in before.items() if after.get(name) != digest]


def run_case(case: Case, fx: dict, tmp: str) -> Result:
  """Runs one case in its own folder `tmp` (made by the caller) and judges its answer."""
  if case.setup:
    try:
      case.setup(tmp, fx)
    except Exception as e:  # pylint: disable=broad-except  # the case's own inputs could not be made
      return Result("setup failed", None, f"{type(e).__name__}: {e}"[:300], 0.0)
  protected = {p: _snapshot(p) for p in (_fill(p, tmp, fx) for p in case.protect)}
  args = [_fill(a, tmp, fx) for a in case.args]
  start = time.monotonic()
  proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  hung = False
  if case.signal_after:
    _interrupt_after(proc, case.signal_after)
  try:
    out, err = proc.communicate(timeout=case.timeout_s)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    hung = True
  seconds = time.monotonic() - start
  lines = [line.strip() for line in err.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  line = errors[-1] if errors else (lines[-1] if lines else "")
  if hung:
    verdict = "hang"
  elif "Traceback (most recent call last)" in out + err:
    verdict = "traceback"
  elif any(_lost(before, _snapshot(p)) for p, before in protected.items()):
    verdict = "lost files"
  elif case.recovers:  # the expected line printed, and the documented exit code (0 unless one is given)
    matched = [x for x in (out + err).splitlines() if re.search(case.expect, x)]
    line = matched[-1].strip() if matched else line
    verdict = "ok" if proc.returncode == (case.exit_code or 0) and matched else "silent" if not matched else "unclear"
  elif proc.returncode == 0:
    verdict = "silent"
  elif case.exit_code is not None and proc.returncode != case.exit_code:
    verdict = "unclear"
  else:
    verdict = "ok" if errors and re.search(case.expect, errors[-1]) else "unclear"
  for key, value in sorted(fx.items(), key=lambda kv: -len(kv[1])):  # the table shows where, not which run
    line = line.replace(value, "{" + key + "}")
  return Result(verdict, proc.returncode, line.replace(tmp, "{tmp}")[:300], seconds)


def _interrupt_after(proc: subprocess.Popen, text: str) -> None:
  """Sends SIGINT once `text` appears on the process's stderr; proc.communicate() then returns what was read."""
  import threading  # pylint: disable=import-outside-toplevel
  buffer = []

  def pump():
    sent = False
    for chunk in iter(proc.stderr.readline, ""):
      buffer.append(chunk)
      if text in chunk and not sent:
        sent = True
        proc.send_signal(signal.SIGINT)

  thread = threading.Thread(target=pump, daemon=True)
  thread.start()

  def communicate(timeout=None):
    proc.wait(timeout=timeout)
    out = proc.stdout.read()
    thread.join(5)
    return out, "".join(buffer)
  proc.communicate = communicate  # type: ignore[method-assign]


def report(results: dict[str, Result], cpu: str) -> str:
  """RELIABILITY.md: what the suite checks, its counts and one row per case."""
  counts = {v: sum(r.verdict == v for r in results.values()) for v in VERDICTS}
  lines = ["# Reliability: the hostile-input suite", "",
           "Bad flags, bad files and damaged state given to every command, as a hostile new user would, each case "
           "with the answer it must give: a one-line `error: ...` and a non-zero exit (or, for a damaged checkpoint "
           "that training skips and for Ctrl-C, the documented line and exit code). A case fails on a traceback, a "
           "hang (its timeout), a silent result (exit 0 where a refusal was due), a lost file (a protected file "
           "changed or gone) or an unclear answer (not the expected line).", "",
           "The cases are `tests/hostile.py`; CI runs them all (`tests/test_hostile.py`). This table is written by",
           "", "    python -m tests.hostile --write RELIABILITY.md", "",
           f"Last run: {len(results)} cases on {cpu}: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", "",
           "| category | what |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in CATEGORIES.items()]
  lines += ["", "| case | category | command | verdict | exit | answer | s |", "|---|---|---|---|---|---|---|"]
  for case in CASES:
    r = results.get(case.name)
    if r is None:
      continue
    command = "python -m " + " ".join(case.args).replace("|", "\\|")
    answer = r.line.replace("|", "\\|")
    lines.append(f"| {case.name} | {case.category} | `{command}` | {r.verdict} | {r.code} | {answer} | "
                 f"{r.seconds:.1f} |")
  return "\n".join(lines) + "\n"


def _cpu() -> str:
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
      info = f.read()
  except OSError:
    return "an unnamed CPU"
  model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
  isa = "AVX-512" if " avx512f" in info else "AVX2" if " avx2" in info else "no AVX2"
  return f"{model.group(1).strip() if model else 'an unnamed CPU'} ({isa}, {os.cpu_count()} cores)"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", default="", help="Run the cases whose name contains this.")
  parser.add_argument("--write", default="", help="Write the report (RELIABILITY.md) here; every case must run.")
  a = parser.parse_args()
  if a.write and a.only:
    parser.error("--write needs every case (no --only)")
  root = tempfile.mkdtemp(prefix="hostile-")
  print(f"making the shared inputs in {root} ...", flush=True)
  fx = make_fixtures(os.path.join(root, "fixtures"))
  results = {}
  for i, case in enumerate(c for c in CASES if a.only in c.name):
    tmp = os.path.join(root, f"case{i:03d}")
    os.makedirs(tmp)
    r = results[case.name] = run_case(case, fx, tmp)
    print(f"{r.verdict:10s} {r.seconds:5.1f}s  {case.name}: {r.line}", flush=True)
  counts = {v: sum(r.verdict == v for r in results.values()) for v in VERDICTS}
  print(json.dumps(counts))
  if a.write:
    with open(a.write, "w", encoding="utf-8") as f:
      f.write(report(results, _cpu()))
  shutil.rmtree(root, ignore_errors=True)
  sys.exit(0 if counts["ok"] == len(results) else 1)


if __name__ == "__main__":
  main()
