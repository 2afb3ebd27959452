"""The cluster launchers (launch/tpu_pod.py, launch/slurm.sbatch), without a pod, a cluster or gcloud."""

import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH = os.path.join(REPO, "launch", "slurm.sbatch")
# Spaces, both kinds of quotes, a $ and a glob: what a careless remote command would mangle.
CMD = ["python", "-m", "cinema_jax.train", "--config=configs/keyframe.py:demo", "--workdir=gs://b/run 1",
       "--config.data.caption=it's \"a\" $HOME *", "--distributed"]


def tpu_pod(*args, **env):
  return subprocess.run([sys.executable, "-m", "launch.tpu_pod", *args], cwd=REPO, env=dict(os.environ, **env),
                        capture_output=True, text=True, timeout=30, check=False)


def printed_commands(stdout):
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def remote_of(gcloud):
  assert gcloud[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert gcloud[gcloud.index("--command") - 1] == "--worker=all"
  return gcloud[gcloud.index("--command") + 1]


def test_tpu_pod_dry_run_quotes_the_command():
  r = tpu_pod("--tpu=pod", "--zone=us-central2-b", "--project=p1", "--dry_run", "--", *CMD)
  assert r.returncode == 0, r.stderr
  [gcloud] = printed_commands(r.stdout)
  assert gcloud[6:10] == ["--zone", "us-central2-b", "--project", "p1"]
  remote = shlex.split(remote_of(gcloud))
  repo_name = os.path.basename(REPO)
  assert remote[:3] == ["cd", f"~/{repo_name}", "&&"]
  assert remote[3:] == CMD  # what the worker's shell will run, argument for argument


def test_tpu_pod_setup_env_and_workdir():
  r = tpu_pod("--tpu=pod", "--zone=z", "--setup", "--env", "A=1 2", "--env=B=x'y", "--workdir_on_vm=~/my code",
              "--dry_run", "--", "python", "-c", "print(1)")
  assert r.returncode == 0, r.stderr
  setup, run = printed_commands(r.stdout)
  assert "--project" not in setup
  for gcloud, cmd in ((setup, ["pip", "install", "-e", ".[tpu]"]), (run, ["python", "-c", "print(1)"])):
    remote = remote_of(gcloud)
    assert remote.startswith("cd ~/")  # unquoted, so the worker's shell expands it
    assert shlex.split(remote) == ["cd", "~/my code", "&&", "export", "A=1 2", "&&", "export", "B=x'y", "&&", *cmd]


def test_tpu_pod_without_gcloud(tmp_path):
  r = tpu_pod("--tpu=pod", "--zone=z", "--", "true", PATH=str(tmp_path))
  assert r.returncode != 0
  assert r.stdout == ""
  assert len(r.stderr.strip().splitlines()) == 1 and "gcloud is not on PATH" in r.stderr


def test_tpu_pod_runs_the_calls_in_order_and_stops_at_a_failure(tmp_path):
  log = tmp_path / "calls"
  gcloud = tmp_path / "gcloud"
  # A stand-in gcloud: records its arguments, fails when the remote command is the setup.
  gcloud.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {shlex.quote(str(log))}\n'
                    'case "$*" in *"pip install"*) exit "${FAIL_SETUP:-0}";; esac\n')
  gcloud.chmod(0o755)
  path = f"{tmp_path}{os.pathsep}{os.environ['PATH']}"
  r = tpu_pod("--tpu=pod", "--zone=z", "--setup", "--", "echo", "hi", PATH=path)
  assert r.returncode == 0, r.stderr
  calls = log.read_text().splitlines()
  assert len(calls) == 2 and "pip install" in calls[0] and calls[1].endswith("echo hi")

  log.unlink()
  r = tpu_pod("--tpu=pod", "--zone=z", "--setup", "--", "echo", "hi", PATH=path, FAIL_SETUP="3")
  assert r.returncode == 3
  assert len(log.read_text().splitlines()) == 1  # the command never ran


@pytest.mark.parametrize("bad", [["--tpu=pod", "--zone=z", "--dry_run"],
                                 ["--tpu=pod", "--zone=z", "--dry_run", "--env=1A=x", "--", "true"]])
def test_tpu_pod_usage_errors(bad):
  r = tpu_pod(*bad)
  assert r.returncode == 2 and "error:" in r.stderr


def sbatch_dry_run(args, **env):
  full = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_", "XLA_", "NCCL_"))}
  full.update(DRY_RUN="1", **env)
  return subprocess.run(["bash", SBATCH, *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=30,
                        check=False)


def test_slurm_sbatch_parses():
  subprocess.run(["bash", "-n", SBATCH], check=True, timeout=30)


def test_slurm_sbatch_dry_run_one_process_per_gpu():
  args = ["--config=configs/keyframe.py", "--workdir=/shared/run 1", "--config.data.caption=it's \"x\""]
  r = sbatch_dry_run(args, SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu[001-004]", SLURM_JOB_NUM_NODES="4",
                     SLURM_NTASKS="32", SLURM_NTASKS_PER_NODE="8", SLURM_GPUS_PER_TASK="1", SLURM_SUBMIT_DIR=REPO)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert any("gpu[001-004]" in line for line in lines)
  [srun] = [shlex.split(line[2:]) for line in lines if line.startswith("+ ")]
  assert srun[0] == "srun" and srun[-1] == "--distributed"
  assert srun[srun.index("cinema_jax.train") + 1:-1] == args
  assert "JAX_LOCAL_DEVICE_IDS=0" in lines  # each task sees only its own GPU, as device 0
  assert "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true" in lines


def test_slurm_sbatch_dry_run_one_process_per_node():
  r = sbatch_dry_run(["--workdir=/shared/run1"], SLURM_JOB_ID="7", SLURM_JOB_NODELIST="n1,n2", SLURM_NTASKS="2",
                     SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_ON_NODE="8", XLA_FLAGS="--xla_dump_to=/tmp/d")
  assert r.returncode == 0, r.stderr
  assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in r.stdout.splitlines()
  assert "XLA_FLAGS=--xla_dump_to=/tmp/d --xla_gpu_enable_latency_hiding_scheduler=true" in r.stdout
