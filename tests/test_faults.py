"""Fault injection: SIGTERM and SIGKILL during training, non-finite steps, failed saves, safety.

The randomized SIGKILL version with many trials is benchmarks/faults.py (its result: BENCHMARKS.md).
"""

import errno
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cinema_jax import checkpoints
from cinema_jax import config_validation
from cinema_jax import errors
from cinema_jax import sharding
from cinema_jax.training import faults
from cinema_jax.training import train_step
from configs import keyframe as keyframe_config

from conftest import wait_for
from tests import helpers

STEPS = 12
REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """(compilation cache, final state leaves) of the tiny run trained STEPS steps without a stop."""
  root = tmp_path_factory.mktemp("faults")
  cache = str(root / "jax_cache")
  done = helpers.run(str(root / "whole"), STEPS, cache)
  assert done.returncode == 0, done.stderr[-3000:]
  return cache, helpers.state_at(str(root / "whole"))


def _equal(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 0, "preempted"),
                                           (signal.SIGINT, faults.INTERRUPTED_EXIT_CODE, "interrupted")])
def test_sigterm_or_ctrl_c_saves_at_the_next_step_and_resumes_exactly(uninterrupted, tmp_path, sig, code, word):
  cache, reference = uninterrupted
  workdir = str(tmp_path / "run")
  with open(tmp_path / "run.log", "w") as log:  # a file, not a pipe: a full pipe would stall the run
    proc = subprocess.Popen(helpers.train_cmd(workdir, STEPS), cwd=REPO, env=helpers.train_env(cache),
                            stdout=subprocess.DEVNULL, stderr=log)
    wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "2")), 300, "checkpoint 2", procs=[proc],
             log=tmp_path / "run.log")
    proc.send_signal(sig)
    proc.wait(timeout=300)
  err = (tmp_path / "run.log").read_text()
  assert proc.returncode == code, err[-3000:]  # SIGTERM: a preemption, exit 0; Ctrl-C: 130, the run is not done
  stopped = int(re.search(rf"{word} at step (\d+): its checkpoint is committed", err).group(1))
  assert 2 <= stopped < STEPS  # stopped early, at a step boundary, with that step saved
  assert helpers.committed_steps(workdir)[-1] == stopped
  done = helpers.run(workdir, STEPS, cache)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"resuming from step {stopped}" in done.stderr
  assert _equal(helpers.state_at(workdir), reference)



def test_a_second_ctrl_c_stops_at_once():
  # In a process of its own: the second SIGINT ends it. Its checkpoints are whole as after a SIGKILL
  # (test_sigkill_at_a_random_moment_leaves_only_whole_checkpoints): Orbax commits a save by renaming.
  code = ("import os, signal, sys, time\n"
          "from cinema_jax.training import faults\n"
          "with faults.Preemption() as p:\n"
          "  os.kill(os.getpid(), signal.SIGINT)\n"
          "  time.sleep(0.5)\n"
          "  print('asked to stop:', p.requested(0), p.signal, flush=True)\n"
          "  os.kill(os.getpid(), signal.SIGINT)\n"
          "  time.sleep(30)\n"
          "print('not stopped')\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  start = time.monotonic()
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode == faults.INTERRUPTED_EXIT_CODE == 130, done.stderr[-3000:]
  assert done.stdout == "asked to stop: True SIGINT\n"
  assert "Ctrl-C again stops at once" in done.stderr and "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines()[-1] == ("error: a second SIGINT: stopped at once, without a save; the last "
                                                  "committed checkpoint is whole")
  assert time.monotonic() - start < 30


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_a_random_moment_leaves_only_whole_checkpoints(uninterrupted, tmp_path, seed):
  cache, reference = uninterrupted
  r = helpers.kill_trial(str(tmp_path / "run"), STEPS, cache, reference, np.random.default_rng(seed))
  assert r["committed"] and r["lost"] == 0, r
  assert r["resumed_from"] == r["committed"][-1] and r["exact"], r


def _start_two(workdir, port, cache, tmp_path, tag):
  """Two training processes on loopback, data-parallel over their two CPU devices."""
  procs, logs = [], []
  for i in range(2):
    logs.append(open(tmp_path / f"{tag}{i}.log", "w"))
    procs.append(subprocess.Popen(
        helpers.train_cmd(workdir, 400, ["--config.batch_size=4", f"--coordinator_address=127.0.0.1:{port}",
                                         "--num_processes=2", f"--process_id={i}", "--heartbeat_timeout_s=10"]),
        cwd=REPO, env=helpers.train_env(cache), stdout=subprocess.DEVNULL, stderr=logs[-1]))
  return procs, logs


def _wait_for_step(workdir, step, procs, log):
  wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", str(step))), 300, f"checkpoint {step}",
           procs=procs, log=log)


def test_two_processes_preempt_together_and_a_dead_one_stops_the_other(uninterrupted, tmp_path):
  import socket  # pylint: disable=g-import-not-at-top
  ports = []
  for _ in range(2):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      ports.append(s.getsockname()[1])
  cache, _ = uninterrupted
  workdir = str(tmp_path / "run")

  # SIGTERM to one process: JAX's preemption sync point stops both at the same step, saved, exit 0.
  procs, logs = _start_two(workdir, ports[0], cache, tmp_path, "term")
  try:
    _wait_for_step(workdir, 3, procs, tmp_path / "term0.log")
    procs[1].send_signal(signal.SIGTERM)
    rcs = [p.wait(timeout=120) for p in procs]
  finally:
    for p, f in zip(procs, logs):
      p.kill()
      f.close()
  errs = [(tmp_path / f"term{i}.log").read_text() for i in range(2)]
  assert rcs == [0, 0], errs[0][-2000:] + errs[1][-2000:]
  stops = {int(re.search(r"preempted at step (\d+): its checkpoint is committed", e).group(1)) for e in errs}
  assert len(stops) == 1 and helpers.committed_steps(workdir)[-1] == stops.pop()

  # SIGKILL one process of the resumed pair: the other exits at once with one line.
  procs, logs = _start_two(workdir, ports[1], cache, tmp_path, "kill")
  try:
    _wait_for_step(workdir, helpers.committed_steps(workdir)[-1] + 2, procs, tmp_path / "kill0.log")
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    rc = procs[0].wait(timeout=120)
    took = time.time() - killed
  finally:
    for p, f in zip(procs, logs):
      p.kill()
      f.close()
  err = (tmp_path / "kill0.log").read_text()
  assert "resuming from step" in err
  assert rc == 1 and took < 60, (rc, took, err[-3000:])
  assert err.strip().splitlines()[-1].startswith(
      "error: process 0 of 2: a cross-process operation failed, another process has probably died"), err[-3000:]


def _tiny(**kw):
  c = keyframe_config.get_config("tiny")
  c.update(batch_size=8, **kw)  # 8 fake devices in this process
  c.log.sample_every_steps = 0
  return c


def test_skip_policy_counts_and_stops_after_k_in_a_row(tmp_path):
  c = _tiny(total_steps=8)
  c.optimizer.lr = float("nan")  # every update is NaN
  c.nonfinite.update(policy="skip", max_consecutive=3)
  with pytest.raises(errors.TrainingError, match=r"non-finite update at step 3 .*: 3 steps in a row skipped "
                     r"\(config.nonfinite.max_consecutive=3\), 3 in all; stopped. The last checkpoint \(step 2\)"):
    helpers.train(c, str(tmp_path))
  # Skipped steps change nothing: the checkpoint of step 2 holds the initial parameters.
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  setup = train_step.make_setup(c, mesh)
  with jax.set_mesh(mesh):
    saved = checkpoints.restore(checkpoints.manager(str(tmp_path), read_only=True), 2, setup.abstract_state)
    init = setup.init()
  assert int(saved["step"]) == 2
  assert _equal([np.asarray(x) for x in jax.tree.leaves(saved["params"])],
                [np.asarray(x) for x in jax.tree.leaves(init["params"])])


def test_guard_names_the_quantity_and_resets_on_a_good_step():
  guard = faults.NonFiniteGuard("skip", 2)
  m = lambda code: {"loss": 1.0, "grad_norm": float("nan") if code == 2 else 1.0, "nonfinite": code}
  out = guard.check(1, m(2), None)
  assert out["loss"] == 1.0 and "nonfinite" not in out and (guard.skipped, guard.consecutive) == (1, 1)
  guard.check(2, m(0), None)  # a good step resets the run of skips
  guard.check(3, m(1), 2)
  with pytest.raises(errors.TrainingError, match=r"non-finite update at step 4 .*2 steps in a row skipped .*, "
                     r"3 in all; stopped. The last checkpoint \(step 2\) is untouched \(a resume verifies "
                     r"it\)"):
    guard.check(4, m(3), 2)
  with pytest.raises(errors.TrainingError, match=r"non-finite gradient at step 7 \(loss 1.0, grad norm nan\); "
                     r"stopped without applying it. The last checkpoint \(none\)"):
    faults.NonFiniteGuard("stop", 5).check(7, m(2), None)


def _failing_save(fail_at: set[int], seen: list):
  real = checkpoints.save

  def save(mngr, step, *args):
    seen.append((step, sorted(mngr.all_steps())))  # what is on disk when this save starts
    if step in fail_at:
      raise OSError(errno.ENOSPC, "No space left on device")
    real(mngr, step, *args)
  return save


def test_failed_save_stops_or_retries_and_never_loses_the_last_checkpoint(tmp_path, monkeypatch):
  seen = []
  monkeypatch.setattr(checkpoints, "save", _failing_save({4}, seen))
  c = _tiny(total_steps=6)
  c.checkpoint.update(every_steps=2, keep=1)
  with pytest.raises(errors.TrainingError, match=r"checkpoint save at step 4 failed \(OSError: \[Errno 28\] No space "
                     r"left on device\); the last complete checkpoint \(step 2\) is untouched \(a resume "
                     r"verifies it\)$"):
    helpers.train(c, str(tmp_path / "stop"))
  assert helpers.committed_steps(str(tmp_path / "stop")) == [2]

  seen.clear()
  c.checkpoint.on_save_error = "retry"
  last = helpers.train(c, str(tmp_path / "retry"))
  assert last["step"] == 6
  assert seen == [(2, []), (4, [2]), (6, [2])]  # step 2 stays until 6 is committed (keep=1)
  assert helpers.committed_steps(str(tmp_path / "retry")) == [6]

  monkeypatch.setattr(checkpoints, "save", _failing_save({8}, []))  # the last save must not fail silently
  c.total_steps = 8
  with pytest.raises(errors.TrainingError,
                     match=r"checkpoint save at step 8 failed .* \(this was the run's last save\)"):
    helpers.train(c, str(tmp_path / "retry"))


@pytest.mark.parametrize("field,value,message", [
    ("nonfinite.policy", "ignore", "config.nonfinite.policy='ignore': expected one of 'stop', 'skip'"),
    ("nonfinite.max_consecutive", 0, "config.nonfinite.max_consecutive=0: expected an int >= 1"),
    ("checkpoint.on_save_error", "pray", "config.checkpoint.on_save_error='pray': expected one of 'stop', 'retry'"),
])
def test_fault_policies_are_validated(field, value, message):
  c = _tiny()
  section, name = field.split(".")
  with c.ignore_type():
    c[section][name] = value
  with pytest.raises(errors.ConfigError, match=re.escape(message)):
    config_validation.load(c)


def test_no_code_path_unpickles_or_executes_user_files():
  """Data, weights and checkpoints are msgpack, PNG, safetensors, JSON and Orbax/tensorstore: nothing
  that runs code. Config files are Python by design (ml_collections); paths in data never are."""
  banned = [r"\bimport pickle\b", r"\bpickle\.load", r"\bdill\b", r"\bcloudpickle\b", r"allow_pickle\s*=\s*True",
            r"torch\.load\(", r"\bnp\.load\(", r"\beval\(", r"\bexec\(", r"importlib\.import_module\(",
            r"runpy\.", r"joblib\.load"]
  hits = []
  for folder in ("cinema_jax", "data_pipelines", "configs", "launch", "benchmarks"):
    for path in (REPO / folder).rglob("*.py"):
      for n, line in enumerate(path.read_text().splitlines(), 1):
        if any(re.search(b, line) for b in banned):
          hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
  assert not hits, "\n".join(hits)


class _FailedInTheBackground:
  """A checkpoint manager whose last async commit failed in its background thread."""

  def check_for_errors(self):
    raise OSError(28, "No space left on device")

  def latest_step(self):
    return 4


@pytest.mark.parametrize("policy", ["stop", "retry"])
def test_a_failed_background_commit_is_reported_at_the_next_step(policy, caplog):
  from cinema_jax.training import loop  # pylint: disable=import-outside-toplevel
  raw = _tiny()
  raw.checkpoint.on_save_error = policy
  c = config_validation.load(raw, reads_data=False)
  msg = (r"the checkpoint save in the background failed \(OSError: \[Errno 28\] No space left on device\); the last "
         r"complete checkpoint \(step 4\) is untouched \(a resume verifies it\)")
  if policy == "stop":
    with pytest.raises(errors.TrainingError, match="^" + msg + "$"):
      loop._background_save_failed(_FailedInTheBackground(), c)  # pylint: disable=protected-access
  else:
    loop._background_save_failed(_FailedInTheBackground(), c)  # pylint: disable=protected-access
    assert re.search(msg + r"; retrying at the next checkpoint step", caplog.text)
