"""Path checks every command makes before any work, each a one-line errors.DataError that names the flag."""

from __future__ import annotations

import os
import tempfile

from cinema_jax import errors


def existing(path: str, flag: str, kind: str = "any") -> str:
  """path exists and is a `kind` ("file", "folder" or "any"); returns it."""
  if not os.path.exists(path):
    raise errors.DataError(f"{flag}={path}: no such {'file or folder' if kind == 'any' else kind}")
  if kind == "file" and os.path.isdir(path):
    raise errors.DataError(f"{flag}={path} is a folder; expected a file")
  if kind == "folder" and not os.path.isdir(path):
    raise errors.DataError(f"{flag}={path} is a file; expected a folder")
  return path


def writable_folder(path: str, flag: str) -> str:
  """A folder to write into, existing or new: not a file, and its nearest existing folder writable."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise errors.DataError(f"{flag}={path} is a file; expected a folder")
  parent = os.path.abspath(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise errors.DataError(f"{flag}={path}: {parent} is a file, not a folder")
  if not _can_write_in(parent):
    raise errors.DataError(f"{flag}={path}: {parent} is not writable")
  return path


def _can_write_in(folder: str) -> bool:
  """Whether a file can be made in folder, tried rather than asked: os.access answers yes for root on any
  folder, and no one can create files in a read-only mount or in /proc whatever the permission bits say."""
  try:
    fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
  except OSError:
    return False
  os.close(fd)
  os.remove(probe)
  return True


def output_folder(path: str, flag: str, ours: tuple[str, ...], overwrite: bool = False) -> str:
  """A folder this command may write into: new, empty, or (with overwrite) holding only `ours` (the names
  this command writes there). Nothing a user made is replaced without --overwrite, and nothing that is not
  this command's own even with it. The nearest existing folder must be writable."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise errors.DataError(f"{flag}={path} is a file; expected a folder (new or empty)")
  if os.path.isdir(path):
    held = sorted(os.listdir(path))
    others = [n for n in held if n not in ours]
    if others:
      raise errors.DataError(f"{flag}={path} holds other files ({', '.join(others[:3])}{', ...' if others[3:] else ''})"
                             "; give a new or empty folder")
    if held and not overwrite:
      raise errors.DataError(f"{flag}={path} already holds {', '.join(held)}; give a new folder, or --overwrite to "
                             "replace them")
  return writable_folder(path, flag)
