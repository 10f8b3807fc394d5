"""Write course notebooks from a compact description (used by maintainers when authoring notebooks).

    from helpers.notebook import write_notebook, md, code, params
    write_notebook("notebooks/05_inference.ipynb", [md("# ..."), params('PROFILE = "tiny"'), code("...")])
"""
from __future__ import annotations

import json
from pathlib import Path

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


def md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.strip("\n").splitlines(keepends=True)}


def code(text: str, tags: list[str] | None = None) -> dict:
    meta = {"tags": tags} if tags else {}
    return {"cell_type": "code", "execution_count": None, "metadata": meta, "outputs": [],
            "source": text.strip("\n").splitlines(keepends=True)}


def colab() -> dict:
    """The Colab bootstrap cell (:data:`COLAB_CELL`), tagged ``colab``."""
    return code(COLAB_CELL, tags=["colab"])


def params(text: str) -> dict:
    """The papermill ``parameters`` cell: PROFILE and paths."""
    return code(text, tags=["parameters"])


def write_notebook(path: str | Path, cells: list[dict]) -> Path:
    nb = {"cells": [dict(c, id=f"c{i:02d}") for i, c in enumerate(cells)], "metadata": KERNEL,
          "nbformat": 4, "nbformat_minor": 5}
    path = Path(path)
    path.write_text(json.dumps(nb, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path
