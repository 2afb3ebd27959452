"""The hostile-input suite (tests/hostile.py) in CI: every case gets its one-line refusal (or its recovery),
with no traceback, hang, silent result or lost file; RELIABILITY.md's table lists the same cases."""

import os
import re

import pytest

from tests import hostile


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
  return hostile.make_fixtures(str(tmp_path_factory.mktemp("hostile")))


@pytest.mark.parametrize("case", hostile.CASES, ids=[c.name for c in hostile.CASES])
def test_the_case_is_answered_in_one_line(case, fixtures, tmp_path):
  r = hostile.run_case(case, fixtures, str(tmp_path))
  assert r.verdict == "ok", f"{r.verdict} (exit {r.code}, {r.seconds:.1f} s): {r.line}"


def test_the_suite_covers_every_category_and_command_and_reliability_md_lists_it():
  assert len(hostile.CASES) >= 100
  assert {c.category for c in hostile.CASES} == set(hostile.CATEGORIES)
  commands = {c.args[0] if c.args[0] != "tests.hostile_inject" else c.args[2] for c in hostile.CASES}
  assert commands >= {"data_pipelines.toy_movies", "cinema_jax.train", "cinema_jax.sample", "cinema_jax.evaluate",
                      "cinema_jax.evaluate_video", "data_pipelines.curate", "data_pipelines.precompute",
                      "cinema_jax.convert.flux", "data_pipelines.preview"}
  with open(os.path.join(hostile.REPO, "RELIABILITY.md"), encoding="utf-8") as f:
    rows = re.findall(r"^\| (.+?) \| (\w+) \| `", f.read(), re.M)
  assert [name for name, _ in rows] == [c.name for c in hostile.CASES], "regenerate: python -m tests.hostile"
