"""Write course notebooks from a compact description (used by maintainers when authoring notebooks).

    from helpers.notebook import write_notebook, md, code, params
    write_notebook("notebooks/05_inference.ipynb", [md("# ..."), params('PROFILE = "tiny"'), code("...")])
"""
from __future__ import annotations

from pathlib import Path

from .core import CourseError
from .io import atomic_write_text

KERNEL = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
          "language_info": {"name": "python"}}


# Where the course is published (Colab clones it from here; a fork changes this line and pyproject's URL).
COURSE_REPO = "https://github.com/hands-on-chinese-llama-alpaca/course"

# The second code cell of every notebook, identical everywhere (tests/test_notebooks.py checks): on Colab it
# clones the course, installs the light set (no llama.cpp build, no JupyterLab) and switches to the real models;
# elsewhere it does nothing. It cannot import helpers: on Colab helpers is not there before this cell.
COLAB_CELL = f"""
# Colab: fetch the course and install its light set (helpers.setup() adds the pinned libraries); elsewhere: nothing.
import os, subprocess, sys
if "google.colab" in sys.modules:
    if not os.path.isdir("/content/course"):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "{COURSE_REPO}", "/content/course"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", "/content/course"], check=True)
    sys.path.insert(0, "/content/course")
    os.chdir("/content/course/notebooks")
    PROFILE = os.environ.get("COURSE_PROFILE", "real")  # a Colab GPU is for the real models
"""


def colab_url(notebook: str) -> str:
    """The "Open in Colab" address of ``notebooks/<notebook>.ipynb`` on the published repository."""
    owner_repo = COURSE_REPO.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{notebook}.ipynb"


def md(text: str):
    """Returns a markdown cell (``nbformat.v4.new_markdown_cell``) holding ``text`` without its outer blank lines."""
    from nbformat import v4  # ~1 s to import: only for authoring, not for COLAB_CELL / colab_url readers

    return v4.new_markdown_cell(text.strip("\n"))


def code(text: str, tags: list[str] | None = None):
    """Returns a code cell (``nbformat.v4.new_code_cell``: no outputs, no execution count), tagged ``tags``."""
    from nbformat import v4

    return v4.new_code_cell(text.strip("\n"), metadata={"tags": list(tags)} if tags else {})


def colab():
    """Returns the Colab bootstrap cell (:data:`COLAB_CELL`), tagged ``colab``."""
    return code(COLAB_CELL, tags=["colab"])


def params(text: str):
    """Returns the papermill ``parameters`` cell: PROFILE and paths."""
    return code(text, tags=["parameters"])


def write_notebook(path: str | Path, cells: list) -> Path:
    """Write ``cells`` as a validated nbformat 4 notebook (Python 3 kernel; cell ids ``c00``, ``c01``, ... so that
    regenerating gives the same file) atomically to ``path``; returns the path."""
    import nbformat
    from nbformat import v4

    nb = v4.new_notebook(metadata=KERNEL)
    nb.cells = [nbformat.from_dict({**c, "id": f"c{i:02d}"}) for i, c in enumerate(cells)]
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        raise CourseError(f"{path}: not a valid nbformat 4 notebook ({e.message}); build cells with md/code/params/"
                          "colab") from e
    return atomic_write_text(path, nbformat.writes(nb) + "\n")
