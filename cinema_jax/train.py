"""Trains a keyframe model.

  python -m cinema_jax.train --config=configs/keyframe.py[:VARIANT] --workdir=DIR [--config.x.y=value]

A workdir that holds checkpoints resumes from its latest complete step. Several processes (hosts):
add --coordinator_address/--num_processes/--process_id, or --distributed to let JAX find the cluster
(cinema_jax/distributed.py).
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cinema_jax import cli
from cinema_jax import distributed
from cinema_jax import sharding
from cinema_jax import trainer
from data_pipelines import pipeline
from data_pipelines import records

_CONFIG = config_flags.DEFINE_config_file("config", "configs/keyframe.py", "Config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs, samples and the toy data go here.", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this one's index.")
_AUTO = flags.DEFINE_bool("distributed", False, "Multi-process: let JAX detect the cluster (TPU pods, SLURM).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100, "Multi-process: a silent process counts as dead after this.")
_STOP_AT = flags.DEFINE_integer("stop_at_step", None, "End this run at this step with a checkpoint, as a preempted "
                                "or time-sliced job would; rerunning with the same workdir continues exactly.")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _AUTO.value, _HEARTBEAT.value)
  except distributed.DistributedError as e:
    sys.exit(f"error: {e}")
  logging.info("JAX %s: process %d of %d, %d devices (%s)", jax.__version__, jax.process_index(), jax.process_count(),
               jax.device_count(), jax.default_backend())
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value, stop_at_step=_STOP_AT.value)
  except (pipeline.ConfigError, sharding.MeshError, records.DataError, trainer.TrainingError) as e:
    sys.exit(f"error: {e}")
  except Exception as e:  # pylint: disable=broad-except
    distributed.collective_failure(e)  # exits when a peer died
    raise


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
