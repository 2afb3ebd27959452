"""Command-line plumbing: the quiet console."""

import logging
import os

from absl import logging as absl_logging
import pytest

from cinema_jax import cli


def _record(pathname: str, level: int, msg: str = "a line") -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, msg, (), None)


@pytest.fixture
def verbosity():
  before = absl_logging.get_verbosity()
  yield absl_logging.set_verbosity
  absl_logging.set_verbosity(before)


def test_library_info_lines_are_dropped_unless_verbosity_asks(verbosity):
  keep = cli.ProjectLogsOnly().filter
  ours = os.path.join(os.path.dirname(cli.__file__), "training", "loop.py")
  library = "/usr/lib/python3/site-packages/orbax/checkpoint/checkpoint_manager.py"
  verbosity(0)
  assert keep(_record(ours, logging.INFO))
  assert not keep(_record(library, logging.INFO))
  assert keep(_record(library, logging.WARNING)) and keep(_record(library, logging.ERROR))
  # a folder that only starts like the project's is not the project
  assert not keep(_record(os.path.dirname(cli.__file__) + "_extra/x.py", logging.INFO))
  # Orbax's warning on every read-only manager (how sampling reads a workdir) is not a problem
  assert not keep(_record(library, logging.WARNING, "Given directory is read only=%s"))
  verbosity(1)
  assert keep(_record(library, logging.INFO))
  assert keep(_record(library, logging.WARNING, "Given directory is read only=%s"))


def test_quiet_libraries_installs_the_filter_once():
  handler = logging.StreamHandler()
  cli.quiet_libraries(handler)
  cli.quiet_libraries(handler)
  assert sum(isinstance(f, cli.ProjectLogsOnly) for f in handler.filters) == 1
