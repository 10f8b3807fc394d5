"""Write course notebooks from a compact description (used by maintainers when authoring notebooks).

    from helpers.notebook import write_notebook, md, code, params
    write_notebook("notebooks/05_inference.ipynb", [md("# ..."), params('PROFILE = "tiny"'), code("...")])
"""
from __future__ import annotations

import json
from pathlib import Path

KERNEL = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
          "language_info": {"name": "python"}}


def md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text.strip("\n").splitlines(keepends=True)}


def code(text: str, tags: list[str] | None = None) -> dict:
    meta = {"tags": tags} if tags else {}
    return {"cell_type": "code", "execution_count": None, "metadata": meta, "outputs": [],
            "source": text.strip("\n").splitlines(keepends=True)}


def params(text: str) -> dict:
    """The papermill ``parameters`` cell: PROFILE and paths."""
    return code(text, tags=["parameters"])


def write_notebook(path: str | Path, cells: list[dict]) -> Path:
    nb = {"cells": [dict(c, id=f"c{i:02d}") for i, c in enumerate(cells)], "metadata": KERNEL,
          "nbformat": 4, "nbformat_minor": 5}
    path = Path(path)
    path.write_text(json.dumps(nb, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path
