"""Shared command-line plumbing: flag parsing that reports bad config overrides in one line."""

from __future__ import annotations

import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing for `app.run(main, flags_parser=parse_flags)`.

  ml_collections applies `--config.a.b=value` while parsing and raises AttributeError/KeyError/TypeError
  for unknown or mistyped fields; those become `error: ...` lines instead of tracebacks.
  """
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
