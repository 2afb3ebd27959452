"""Shared command-line plumbing: flag parsing that reports bad config overrides in one line, and a quiet
console (the project's own log lines; other libraries' at WARNING unless --verbosity asks for more)."""

from __future__ import annotations

import logging
import os
import sys

from absl import flags
from absl import logging as absl_logging

from cinema_jax import config_validation

# The project's source folders (siblings of this package): records logged from files under them are
# the project's own lines.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_DIRS = tuple(os.path.join(_ROOT, d) + os.sep for d in ("cinema_jax", "data_pipelines", "benchmarks", "configs"))


_READ_ONLY_NOTICE = "Given directory is read only"


class ProjectLogsOnly(logging.Filter):
  """Passes every record from the project's own files, and other libraries' at WARNING and above.

  Orbax's checkpoint-manager options, its barrier and deleter chatter and JAX's backend probing are
  INFO lines that made up 538 of the demo's 665; `--verbosity=1` (absl's flag) shows them again.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if absl_logging.get_verbosity() >= 1 or record.pathname.startswith(PROJECT_DIRS):
      return True
    if record.exc_info and "/orbax/" in record.pathname and "save" in str(record.msg).lower():
      # Orbax logs a failed async save (its commit thread, then its finalize thread) with tracebacks; the
      # training loop reports the failure in one line (--verbosity=1 keeps them)
      record.exc_info, record.exc_text = None, None
    if record.name == "asyncio" and _unread_checkpoint_read(record):
      return False
    # Orbax warns whenever a checkpoint manager is opened read-only, which is how sampling and the
    # resume checks read a workdir: not a problem to report
    return record.levelno >= logging.WARNING and not str(record.msg).startswith(_READ_ONLY_NOTICE)


def _unread_checkpoint_read(record: logging.LogRecord) -> bool:
  """asyncio's "Task exception was never retrieved" for a tensorstore read that an Orbax restore started and
  abandoned when another array of a damaged checkpoint failed first: the checkpoint is reported (and set
  aside) in one line; the garbage collector's report of each sibling read, traceback and all, says nothing
  more. Any other never-retrieved exception still shows."""
  exc = record.exc_info[1] if record.exc_info else None
  return ("exception was never retrieved" in str(record.msg) and isinstance(exc, ValueError)
          and "tensorstore_spec" in str(exc))


def quiet_libraries(handler: logging.Handler | None = None) -> None:
  """Installs ProjectLogsOnly on absl's handler (which app.run puts on the root logger), once."""
  handler = handler or absl_logging.get_absl_handler()
  if not any(isinstance(f, ProjectLogsOnly) for f in handler.filters):
    handler.addFilter(ProjectLogsOnly())


def _ignore_reads_after_a_failed_restore(hook):
  """sys.unraisablehook without the `RuntimeError: Event loop is closed` tracebacks that tensorstore reports
  for reads still in flight when an Orbax restore has failed (a damaged checkpoint, reported in one line)
  and closed its event loop: those reads' results are not wanted. Everything else goes to `hook`."""
  def unraisablehook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
      return
    hook(unraisable)
  unraisablehook.wrapped = True
  return unraisablehook


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing for `app.run(main, flags_parser=parse_flags)`, which every command uses; it also
  quiets other libraries' INFO lines (quiet_libraries).

  ml_collections applies `--config.a.b=value` while parsing and raises AttributeError/KeyError/TypeError
  for unknown or mistyped fields; those become `error: ...` lines instead of tracebacks.
  """
  quiet_libraries()
  if not getattr(sys.unraisablehook, "wrapped", False):
    sys.unraisablehook = _ignore_reads_after_a_failed_restore(sys.unraisablehook)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # A config file that raised while loading: ml_collections embeds the whole traceback; its last
    # line is the config's own message.
    lines = [line for line in str(e).splitlines() if line.strip()]
    sys.exit(f"error: {lines[0].split(':')[0]}: {lines[-1].strip()}" if len(lines) > 1 else f"error: {e}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    detail = " ".join(str(e.args[0] if e.args else e).replace("\\n", " ").replace("\\'", "'").split())
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: bad config override ({' '.join(overrides) or 'config file'}): {detail}")


ENCODER_FIELDS = ("vae", "t5", "clip", "retrieval_clip", "t5_on_host")


def define_encoder_flags() -> dict:
  """The encoder folders of models on VAE latents and T5/CLIP states (config.sample.encoders)."""
  return {
      "vae": flags.DEFINE_string("vae", None, "AutoencoderKL folder (default: config.sample.encoders.vae)."),
      "t5": flags.DEFINE_string("t5", None, "T5 encoder folder with its tokenizer (config.sample.encoders.t5)."),
      "clip": flags.DEFINE_string("clip", None, "CLIP text encoder folder with its tokenizer "
                                  "(config.sample.encoders.clip)."),
      "retrieval_clip": flags.DEFINE_string("retrieval_clip", None, "A whole CLIP model folder for context_order "
                                            "'image' on real data (config.sample.encoders.retrieval_clip)."),
      "t5_on_host": flags.DEFINE_bool("t5_on_host", None, "Run T5 from host memory (default: sharded on the mesh)."),
  }


def apply_encoder_flags(c: config_validation.Config, values: dict) -> config_validation.Config:
  """c with the encoder flags that were given in config.sample.encoders."""
  return config_validation.replace(c, {f"sample.encoders.{field}": values[field] for field in ENCODER_FIELDS
                                       if values.get(field) is not None})
