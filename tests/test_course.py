"""The notebook harness: peak memory of what a notebook starts, the rehearsal's switches and its refusal."""
import os
import subprocess
import sys

import pytest

from helpers import course
from helpers.core import Course, CourseError, is_rehearsal, rehearsal_budget


def test_peak_memory_sees_a_child_process_allocation():
    """A child that holds 600 MiB: the watcher's peak is at least that (and not absurdly more)."""
    code = "import time; b = bytearray(600 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0)"
    with course.PeakMemory(interval=0.05) as watch:
        subprocess.run([sys.executable, "-c", code], check=True)
    assert 0.58 < watch.kernel_gib < 0.75
    assert watch.tree_gib >= 0.55


def test_budget_is_the_real_value_unless_rehearsing(monkeypatch, capsys):
    monkeypatch.delenv("COURSE_REHEARSAL", raising=False)
    assert rehearsal_budget(100, 2, "max_steps") == 100 and not is_rehearsal()
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("COURSE_REHEARSAL", "1")
    c = Course(profile="real", workspace=None, device="cpu", platform="local", seed=0)
    assert c.rehearsal and c.budget(100, 2, "max_steps") == 2
    assert "max_steps: 2 instead of 100" in capsys.readouterr().out  # said, so nobody mistakes it for a real run


def test_rehearse_refuses_without_a_stand_in_hub(tmp_path, capsys):
    rc = course.main(["rehearse", "--cache_dir", str(tmp_path / "nothing-here"), "notebooks/00_overview.ipynb"])
    err = capsys.readouterr().err
    assert rc == 2 and "python -m helpers.standin build" in err and "Traceback" not in err


def test_model_names_come_from_the_catalog():
    from helpers import catalog

    c = Course(profile="real", workspace=None, device="cpu", platform="local", seed=0)
    assert c.model_name("alpaca") == "hfl/chinese-alpaca-2-1.3b" == catalog.ROLES["alpaca"]
    with pytest.raises(CourseError, match="llama_base"):  # a typo names the roles, no bare KeyError
        c.model_name("alpaca2")


def test_autodl_caches_models_on_the_data_disk(monkeypatch, tmp_path):
    from helpers import core

    monkeypatch.setattr(core, "AUTODL_DATA", tmp_path)
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert core.use_data_disk("local") is None and "HF_HOME" not in os.environ
    assert core.use_data_disk("autodl") == str(tmp_path / "hf") == os.environ["HF_HOME"]
    monkeypatch.setenv("HF_HOME", "/elsewhere")  # the learner's own choice wins
    assert core.use_data_disk("autodl") is None and os.environ["HF_HOME"] == "/elsewhere"


def _one_cell_notebook(path, source):
    from helpers.notebook import code, params, write_notebook

    return write_notebook(path, [params('PROFILE = "tiny"'), code(source)])


def test_run_prints_no_kernel_noise_but_shows_a_failure(tmp_path, capfd):
    """`make course` output: one line per notebook. What the kernel process writes to its own stdout/stderr (its
    "running over TCP" log line, C libraries, servers it starts) goes to a log file; a failing cell is still shown,
    with the log's last lines."""
    noisy = _one_cell_notebook(tmp_path / "01_noisy.ipynb", "import os, sys\nprint('CELL-OUTPUT')\n"
                               "os.write(1, b'FD1-NOISE\\n'); os.write(2, b'FD2-NOISE\\n')")
    broken = _one_cell_notebook(tmp_path / "02_broken.ipynb", "import os\nos.write(2, b'SERVER-SAID-THIS\\n')\n"
                                "raise ValueError('the cell says what went wrong')")
    rows = course.run([noisy, broken], out_dir=tmp_path / "out", timeout=120)
    out, err = capfd.readouterr()
    shown = out + err
    assert [r["status"] == "ok" for r in rows] == [True, False]
    for noise in ("FD1-NOISE", "FD2-NOISE", "without encryption", "Debugger warning"):
        assert noise not in shown, noise
    assert "FD2-NOISE" in (tmp_path / "out" / "01_noisy.log").read_text(encoding="utf-8")  # kept, not lost
    assert "CELL-OUTPUT" in (tmp_path / "out" / "01_noisy.ipynb").read_text(encoding="utf-8")
    assert "the cell says what went wrong" in shown and "SERVER-SAID-THIS" in shown  # the failure stays visible
    assert len([line for line in out.splitlines() if line.startswith("01_noisy.ipynb")]) == 1
