"""cinema_jax/paths.py: the path checks every command makes before any work, in one line each."""

import os

import pytest

from cinema_jax import errors
from cinema_jax import paths


def test_existing_names_the_flag_and_what_was_expected(tmp_path):
  (tmp_path / "f").write_text("x")
  assert paths.existing(str(tmp_path / "f"), "--src", "file") == str(tmp_path / "f")
  with pytest.raises(errors.DataError, match=r"^--src=.*nowhere: no such file$"):
    paths.existing(str(tmp_path / "nowhere"), "--src", "file")
  with pytest.raises(errors.DataError, match=r"^--src=.* is a folder; expected a file$"):
    paths.existing(str(tmp_path), "--src", "file")
  with pytest.raises(errors.DataError, match=r"^--src=.*f is a file; expected a folder$"):
    paths.existing(str(tmp_path / "f"), "--src", "folder")


def test_writable_folder_takes_new_and_existing_folders_not_files(tmp_path):
  (tmp_path / "f").write_text("x")
  assert paths.writable_folder(str(tmp_path / "new" / "deeper"), "--out")
  assert paths.writable_folder(str(tmp_path), "--out")
  with pytest.raises(errors.DataError, match=r"^--out=.*f is a file; expected a folder$"):
    paths.writable_folder(str(tmp_path / "f"), "--out")
  with pytest.raises(errors.DataError, match=r"^--out=.*f/below: .*f is a file, not a folder$"):
    paths.writable_folder(str(tmp_path / "f" / "below"), "--out")
  # tried, not asked: os.access says yes to root everywhere, yet nobody can make a file in /proc
  with pytest.raises(errors.DataError, match=r"^--out=/proc/self/out: /proc/self is not writable$"):
    paths.writable_folder("/proc/self/out", "--out")
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".write-check")]  # the probe is removed


def test_output_folder_replaces_only_its_own_and_only_when_asked(tmp_path):
  out = tmp_path / "out"
  assert paths.output_folder(str(out), "--dst", ("params",))  # new
  out.mkdir()
  assert paths.output_folder(str(out), "--dst", ("params",))  # empty
  (out / "params").mkdir()
  with pytest.raises(errors.DataError, match=r"already holds params; give a new folder, or --overwrite"):
    paths.output_folder(str(out), "--dst", ("params",))
  assert paths.output_folder(str(out), "--dst", ("params",), overwrite=True)
  (out / "mine.txt").write_text("x")
  with pytest.raises(errors.DataError, match=r"holds other files \(mine.txt\); give a new or empty folder"):
    paths.output_folder(str(out), "--dst", ("params",), overwrite=True)
