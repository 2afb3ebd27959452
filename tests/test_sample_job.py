"""Batch sampling jobs: storylines split over processes, killed and restarted, each sampled exactly once."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cinema_jax.sampling import jobs

from conftest import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM = 50


def test_storylines_are_split_into_fixed_chunks():
  assert jobs.chunks(10, 0, 2, 3) == [[0, 2, 4], [6, 8]]
  assert jobs.chunks(10, 1, 2, 3) == [[1, 3, 5], [7, 9]]
  assert jobs.chunks(1, 1, 2, 4) == []
  assert jobs.process_identity(None, None) == (0, 1)
  with pytest.raises(ValueError, match="--process_id=2: expected 0 <= id < --num_processes=2"):
    jobs.process_identity(2, 2)
  with pytest.raises(ValueError, match="go together"):
    jobs.process_identity(1, None)


def _job(workdir, storylines, outdir):
  cmd = [sys.executable, "-m", "launch.local", "--processes=2", "--devices_per_process=2", "--",
         sys.executable, "-m", "cinema_jax.sample", f"--workdir={workdir}", f"--storylines={storylines}",
         f"--outdir={outdir}", "--per_device_batch=2", "--num_steps=4"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)


def _complete(outdir):
  return {d for d in os.listdir(outdir) if not d.startswith(".") and os.path.isdir(os.path.join(outdir, d))}


def _files(outdir, name):
  folder = os.path.join(outdir, name)
  out = {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder)) if f.endswith(".png")}
  manifest = json.load(open(os.path.join(folder, "manifest.json")))
  return out, {k: v for k, v in manifest.items() if k not in ("job_attempt", "seconds")}


def test_a_killed_job_restarts_and_completes_each_storyline_once_as_an_uninterrupted_job(tiny_run, tmp_path):
  storylines = tmp_path / "storylines.jsonl"
  shots = ["Wide shot in the forest. Mia jumps.", "Close shot in the farm. Tom walks.", "Medium shot. Ava waits."]
  storylines.write_text("".join(json.dumps({"title": f"story {i}", "captions": shots[:1 + i % 3]}) + "\n"
                                for i in range(NUM)))
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  job = _job(tiny_run, storylines, whole)
  out = job.communicate(timeout=600)[0]
  assert job.returncode == 0, out[-3000:]
  assert "storylines, " in out and "keyframes/s, about" in out  # progress lines

  job = _job(tiny_run, storylines, killed)
  wait_for(lambda: os.path.isdir(killed) and len(_complete(killed)) >= NUM // 2, 600, "half the storylines",
           procs=[job])
  os.killpg(job.pid, signal.SIGKILL)  # the launcher and both processes, halfway
  job.wait()
  attempt = lambda d: json.load(open(os.path.join(killed, d, "manifest.json")))["job_attempt"]
  before = {d: (os.stat(os.path.join(killed, d)).st_ino, attempt(d), _files(killed, d)) for d in _complete(killed)}
  assert NUM // 2 <= len(before) < NUM, len(before)
  assert not os.path.exists(os.path.join(killed, jobs.SUMMARY))

  job = _job(tiny_run, storylines, killed)
  out = job.communicate(timeout=600)[0]
  assert job.returncode == 0, out[-3000:]
  assert "already complete" in out
  done = _complete(killed)
  assert done == _complete(whole) and len(done) == NUM
  for d in done:  # identical pixels and manifests to the uninterrupted job
    assert _files(killed, d) == _files(whole, d), d
  for d, (inode, first, files) in before.items():  # finished before the kill: never written again
    assert os.stat(os.path.join(killed, d)).st_ino == inode and attempt(d) == first and _files(killed, d) == files
  restarted = {attempt(d) for d in done - set(before)}
  assert not restarted & {first for _, first, _ in before.values()}  # the rest all came from the restart
  summary = json.load(open(os.path.join(killed, jobs.SUMMARY)))
  assert summary["storylines"] == NUM and summary["keyframes"] == sum(1 + i % 3 for i in range(NUM))
  assert sum(p["sampled"] for p in summary["processes"]) == NUM - len(before)
  assert sum(p["skipped"] for p in summary["processes"]) == len(before)
  assert not [d for d in os.listdir(killed) if d.startswith(".tmp-")]


def test_local_launcher_stops_the_others_when_one_process_fails():
  script = ("import sys, time\n"
            "pid = int([a for a in sys.argv if a.startswith('--process_id=')][0].split('=')[1])\n"
            "assert '--num_processes=2' in sys.argv\n"
            "sys.exit(3) if pid == 1 else time.sleep(60)\n")
  start = time.time()
  done = subprocess.run([sys.executable, "-m", "launch.local", "--processes=2", "--", sys.executable, "-c", script],
                        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
  assert done.returncode == 3 and time.time() - start < 30, done.stderr
  assert "a process exited with 3; stopping the others" in done.stderr
  assert done.stdout.count("--xla_force_host_platform_device_count=1") == 2  # what it runs, printed
