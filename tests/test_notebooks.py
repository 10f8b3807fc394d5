"""Every notebook: parameters cell first, setup call, stripped, thin cells; the course is complete."""
import pytest

from helpers import course


@pytest.mark.parametrize("path", course.notebooks(), ids=lambda p: p.name)
def test_notebook_is_in_its_committed_state(path):
    assert course.problems(path) == []


def test_course_has_every_notebook_in_order():
    assert [p.stem for p in course.notebooks()] == course.COURSE


def test_strip_removes_outputs(tmp_path):
    from helpers.notebook import code, params, write_notebook

    nb = write_notebook(tmp_path / "00_x.ipynb", [params('PROFILE = "tiny"'), code("import helpers\nhelpers.setup(PROFILE)")])
    import json

    data = json.loads(nb.read_text(encoding="utf-8"))
    data["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["x"]}]
    data["cells"][1]["execution_count"] = 3
    nb.write_text(json.dumps(data), encoding="utf-8")
    assert any("outputs" in m for m in course.problems(nb))
    assert course.strip(nb) is True
    assert course.problems(nb) == []


@pytest.mark.parametrize("path", course.notebooks(), ids=lambda p: p.name)
def test_every_notebook_has_the_same_colab_cell_right_after_parameters(path):
    """One generated bootstrap cell (helpers.notebook.COLAB_CELL), identical in every notebook."""
    import json

    from helpers.notebook import COLAB_CELL

    code = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    assert "colab" in code[1]["metadata"].get("tags", [])
    assert "".join(code[1]["source"]) == COLAB_CELL.strip("\n")


def test_colab_cell_clones_the_published_url_and_installs_without_extras():
    import tomllib

    from helpers.core import REPO_ROOT
    from helpers.notebook import COLAB_CELL, COURSE_REPO

    urls = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
    assert urls["Repository"] == COURSE_REPO and COURSE_REPO in COLAB_CELL
    assert '"--no-deps", "-e", "/content/course"' in COLAB_CELL  # keeps Colab's CUDA torch; setup() adds the pins
    compile(COLAB_CELL, "colab", "exec")


def test_colab_cell_does_nothing_outside_colab():
    from helpers.notebook import COLAB_CELL

    scope = {"PROFILE": "tiny"}
    exec(COLAB_CELL, scope)
    assert scope["PROFILE"] == "tiny"


def test_readme_links_every_notebook_to_colab():
    from helpers.core import REPO_ROOT
    from helpers.notebook import colab_url

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    missing = [p.stem for p in course.notebooks() if colab_url(p.stem) not in readme]
    assert missing == []


def test_colab_cell_on_colab_clones_installs_and_switches_to_real(monkeypatch, tmp_path):
    """Simulated Colab: google.colab imported, /content replaced by a temporary folder, commands recorded."""
    import os
    import subprocess
    import sys
    import types

    from helpers.notebook import COLAB_CELL, COURSE_REPO

    content = tmp_path / "content"
    calls = []

    def fake_run(argv, check):
        calls.append(argv)
        if argv[:2] == ["git", "clone"]:
            (Path(argv[-1]) / "notebooks").mkdir(parents=True)
        return subprocess.CompletedProcess(argv, 0)

    from pathlib import Path

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    cell = COLAB_CELL.replace("/content", str(content))
    scope = {"PROFILE": "tiny"}
    exec(cell, scope)
    course_dir = str(content / "course")
    assert calls == [["git", "clone", "-q", "--depth", "1", COURSE_REPO, course_dir],
                     [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", course_dir]]
    assert scope["PROFILE"] == "real" and sys.path[0] == course_dir
    assert os.getcwd() == str(content / "course" / "notebooks")
    exec(cell, {"PROFILE": "tiny"})  # run again in the same runtime: nothing cloned or installed twice
    assert len(calls) == 2


def test_write_notebook_is_valid_nbformat_4_with_stable_ids(tmp_path):
    """Read back with nbformat (the reader Jupyter uses): valid v4, tags and sources kept, ids c00.., and the
    same bytes when written again; a malformed cell is refused with a CourseError."""
    import nbformat

    from helpers.core import CourseError
    from helpers.notebook import code, colab, md, params, write_notebook

    cells = [md("\n# 标题\n\n正文\n"), params('PROFILE = "tiny"'), colab(), code("x = 1\nprint(x)\n")]
    path = write_notebook(tmp_path / "00_x.ipynb", cells)
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code", "code"]
    assert [c.id for c in nb.cells] == ["c00", "c01", "c02", "c03"]
    assert nb.cells[0].source == "# 标题\n\n正文" and nb.cells[3].source == "x = 1\nprint(x)"
    assert nb.cells[1].metadata.tags == ["parameters"] and nb.cells[2].metadata.tags == ["colab"]
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells[1:])
    assert nb.metadata.kernelspec.name == "python3" and (nb.nbformat, nb.nbformat_minor) == (4, 5)
    assert course.problems(path) == []
    first = path.read_bytes()
    assert write_notebook(path, cells).read_bytes() == first
    with pytest.raises(CourseError, match="00_y.ipynb: not a valid nbformat 4 notebook"):
        write_notebook(tmp_path / "00_y.ipynb", [{**code("x = 1"), "outputs": "not a list"}])
    assert not (tmp_path / "00_y.ipynb").exists()


@pytest.mark.parametrize("path", course.notebooks(), ids=lambda p: p.name)
def test_setup_runs_before_the_imports_it_installs(path):
    """On Colab helpers.setup() installs the pinned libraries: the setup cell calls it before importing anything
    but helpers itself (step modules import fastapi, sse-starlette, langchain... at module level)."""
    import json

    cell = next("".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
                if c["cell_type"] == "code" and "helpers.setup(" in "".join(c["source"]))
    lines = [l for l in cell.splitlines() if l.strip()]
    first = next(i for i, l in enumerate(lines) if "helpers.setup(" in l)
    assert [l for l in lines[:first] if l.startswith(("import ", "from ")) and l != "import helpers"] == []
