"""The distributed tests' launcher (tests/torchrun.py): a rank lost to a signal earns one clean re-run, nothing else does."""

from __future__ import annotations

import pytest
from torchrun import RankSignalled, torchrun

#: A rank that counts its attempts in a file, then aborts (SIGABRT) or raises while the count is at most ``fail``.
SCRIPT = """
import os, sys
folder, fail, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count = os.path.join(os.path.dirname(folder), "attempts")
n = (int(open(count).read()) if os.path.exists(count) else 0) + 1
open(count, "w").write(str(n))
assert not os.listdir(folder), "the re-run starts from an empty scratch folder"
open(os.path.join(folder, "partial"), "w").write("x")
if n <= fail:
    os.abort() if how == "abort" else sys.exit("a Python error")
"""


def _launch(tmp_path, fail: int, how: str):
    script = tmp_path / "rank.py"
    script.write_text(SCRIPT)
    scratch = tmp_path / "out"
    scratch.mkdir()
    return lambda: torchrun(script, [str(scratch), str(fail), how], nproc=1, timeout=120, scratch=scratch)


def test_a_rank_killed_by_a_signal_is_run_once_more_from_a_clean_folder(tmp_path):
    launch = _launch(tmp_path, 1, "abort")
    with pytest.warns(RankSignalled, match="died of a signal"):
        assert launch().returncode == 0
    assert (tmp_path / "attempts").read_text() == "2"


def test_a_python_error_fails_at_once(tmp_path):
    launch = _launch(tmp_path, 1, "exit")
    with pytest.raises(RuntimeError, match="a Python error"):
        launch()
    assert (tmp_path / "attempts").read_text() == "1"
