"""Trains a keyframe model.

  python -m cinema_jax.train --config=configs/keyframe.py[:VARIANT] --workdir=DIR [--config.x.y=value]

A workdir that holds checkpoints resumes from its latest complete step. Several processes (hosts):
add --coordinator_address/--num_processes/--process_id, or --distributed to let JAX find the cluster
(cinema_jax/distributed.py).

--compile_only compiles the step for the configured mesh and prints parameters, FLOPs and memory per
device, on this machine's devices, --fake_devices=N CPU devices, or a TPU --topology (cinema_jax/training/aot.py).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cinema_jax import checkpoints
from cinema_jax import cli
from cinema_jax import config_validation
from cinema_jax import distributed
from cinema_jax import errors
from cinema_jax import memory
from cinema_jax import paths
from cinema_jax.training import aot
from cinema_jax.training import autoencoder
from cinema_jax.training import faults
from cinema_jax.training import loop
from cinema_jax.training import prepare

_CONFIG = config_flags.DEFINE_config_file("config", "configs/keyframe.py", "Config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs, samples and the toy data go here.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this one's index.", lower_bound=0)
_AUTO = flags.DEFINE_bool("distributed", False, "Multi-process: let JAX detect the cluster (TPU pods, SLURM).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100,
                                  "Multi-process: a silent process counts as dead after this.", lower_bound=1)
_STOP_AT = flags.DEFINE_integer("stop_at_step", None, "End this run at this step with a checkpoint, as a preempted "
                                "or time-sliced job would; rerunning with the same workdir continues exactly.",
                                lower_bound=1)
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Compile the step for the mesh, print its memory and FLOPs, "
                                  "and exit (no workdir, no data).")
_FAKE_DEVICES = flags.DEFINE_integer("fake_devices", None,
                                     "--compile_only: on this many CPU devices (a pod-sized mesh).", lower_bound=1)
_TOPOLOGY = flags.DEFINE_string("topology", None, "--compile_only: for this Cloud TPU slice, e.g. v5p:4x4x4 (libtpu).")


def compile_only(c) -> None:
  if _FAKE_DEVICES.value:  # before the first use of a backend, which is when JAX reads the flag
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={_FAKE_DEVICES.value}"])
    jax.config.update("jax_platforms", "cpu")
  c = config_validation.load(c, reads_data=False)
  devices = aot.topology_devices(_TOPOLOGY.value) if _TOPOLOGY.value else None
  print(aot.format_report(aot.compile_train_step(c, devices)), flush=True)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if _COMPILE_ONLY.value:
    try:
      return compile_only(_CONFIG.value)
    except (errors.ConfigError, errors.MeshError, ValueError) as e:
      sys.exit(f"error: {e}")
  if _WORKDIR.value is None:
    sys.exit("error: --workdir is required (or --compile_only)")
  if _FAKE_DEVICES.value or _TOPOLOGY.value:
    sys.exit("error: --fake_devices and --topology go with --compile_only")
  try:  # before any work: a workdir that cannot hold checkpoints is found now, not at the first save
    paths.writable_folder(_WORKDIR.value, "--workdir")
    for sub in (checkpoints.CHECKPOINT_DIR, "data"):
      if os.path.exists(os.path.join(_WORKDIR.value, sub)):
        paths.existing(os.path.join(_WORKDIR.value, sub), f"--workdir={_WORKDIR.value}: its {sub}", "folder")
  except errors.DataError as e:
    sys.exit(f"error: {e}")
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _AUTO.value, _HEARTBEAT.value)
  except errors.DistributedError as e:
    sys.exit(f"error: {e}")
  logging.info("JAX %s: process %d of %d, %d devices (%s)", jax.__version__, jax.process_index(), jax.process_count(),
               jax.device_count(), jax.default_backend())
  try:
    c = config_validation.load(_CONFIG.value)  # the one conversion: frozen, typed and validated from here on
    memory.check_training_step(c)  # before the toy world is rendered at that size
    prepare.training_inputs(c, _WORKDIR.value, logging.info)
    last = loop.train_and_evaluate(c, _WORKDIR.value, stop_at_step=_STOP_AT.value)
    if c.task == "autoencoder" and not last.get("preempted"):
      autoencoder.export_finished_run(c, _WORKDIR.value)
  except (errors.CheckpointError, errors.ConfigError, errors.MeshError, errors.DataError, errors.TrainingError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:  # Ctrl-C outside the steps (preparing data, restoring): no save was under way
    print("error: interrupted (SIGINT) outside the training steps; the workdir's checkpoints are as they were",
          file=sys.stderr)
    sys.exit(faults.INTERRUPTED_EXIT_CODE)
  except Exception as e:  # pylint: disable=broad-except
    distributed.collective_failure(e)  # exits when a peer died
    raise
  if last.get("signal") == "SIGINT":  # saved at the step boundary; the exit code says it did not finish
    sys.exit(faults.INTERRUPTED_EXIT_CODE)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
