"""Trains a keyframe model.

  python -m cinema_jax.train --config=configs/keyframe.py[:VARIANT] --workdir=DIR [--config.x.y=value]

A workdir that holds checkpoints resumes from its latest complete step.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cinema_jax import cli
from cinema_jax import sharding
from cinema_jax import trainer
from data_pipelines import pipeline
from data_pipelines import records

_CONFIG = config_flags.DEFINE_config_file("config", "configs/keyframe.py", "Config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs, samples and the toy data go here.", required=True)
_STOP_AT = flags.DEFINE_integer("stop_at_step", None, "End this run at this step with a checkpoint, as a preempted "
                                "or time-sliced job would; rerunning with the same workdir continues exactly.")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  logging.info("JAX %s: process %d of %d, %d devices (%s)", jax.__version__, jax.process_index(), jax.process_count(),
               jax.device_count(), jax.default_backend())
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value, stop_at_step=_STOP_AT.value)
  except (pipeline.ConfigError, sharding.MeshError, records.DataError, trainer.TrainingError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
