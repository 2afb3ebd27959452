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


def test_orbax_save_tracebacks_are_dropped_but_the_error_line_kept(verbosity):
  verbosity(0)
  keep = cli.ProjectLogsOnly().filter
  try:
    raise OSError("disk full")
  except OSError:
    import sys  # pylint: disable=import-outside-toplevel
    info = sys.exc_info()
  orbax = "/site-packages/orbax/checkpoint/_src/checkpointers/async_checkpointer.py"
  record = logging.LogRecord("absl", logging.ERROR, orbax, 1, "Failed ... in background save thread", (), info)
  assert keep(record) and record.exc_info is None  # the line stays, its traceback goes
  other = logging.LogRecord("absl", logging.ERROR, "/site-packages/jax/x.py", 1, "save failed", (), info)
  assert keep(other) and other.exc_info is info  # not Orbax: untouched


def test_only_closed_event_loop_reports_are_dropped_from_unraisable_exceptions():
  seen = []
  hook = cli._ignore_reads_after_a_failed_restore(seen.append)  # pylint: disable=protected-access
  unraisable = lambda e: type("U", (), {"exc_value": e})()
  hook(unraisable(RuntimeError("Event loop is closed")))
  assert not seen
  hook(unraisable(RuntimeError("something else")))
  hook(unraisable(ValueError("Event loop is closed")))
  assert [str(u.exc_value) for u in seen] == ["something else", "Event loop is closed"]


def test_abandoned_checkpoint_reads_are_dropped_but_other_unretrieved_exceptions_shown(verbosity):
  verbosity(0)
  keep = cli.ProjectLogsOnly().filter

  def asyncio_record(exc):
    try:
      raise exc
    except Exception:  # pylint: disable=broad-except
      import sys  # pylint: disable=import-outside-toplevel
      info = sys.exc_info()
    return logging.LogRecord("asyncio", logging.ERROR, "/usr/lib/python3.11/asyncio/base_events.py", 1,
                             "Task exception was never retrieved\nfuture: <Task finished coro=<async_deserialize()>",
                             (), info)

  # what an Orbax restore of a damaged checkpoint leaves behind (reported and set aside in one line)
  assert not keep(asyncio_record(ValueError('NOT_FOUND: Error opening "zarr" driver: ... [tensorstore_spec=...]')))
  assert keep(asyncio_record(ValueError("something else")))
  assert keep(asyncio_record(OSError("tensorstore_spec in an OSError")))
  verbosity(1)
  assert keep(asyncio_record(ValueError('NOT_FOUND: ... [tensorstore_spec=...]')))
