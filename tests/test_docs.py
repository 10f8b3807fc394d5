"""docs/ and the troubleshooting appendix: every link to a notebook cell points to a cell that exists, every
in-page anchor exists, every seed item has a notebook section (the pending ones are listed by name)."""
import json
import re

import pytest

from helpers.core import REPO_ROOT

DOCS = REPO_ROOT / "docs"
NOTEBOOKS = REPO_ROOT / "notebooks"
CELL_LINK = re.compile(r"\]\((?:\.\./notebooks/)?(\d\d_\w+)\.ipynb(?:#([\w-]+))?\)")
ANCHOR_LINK = re.compile(r"\]\((\w+\.md)?#([\w-]+)\)")


def _cells(stem):
    return json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text(encoding="utf-8"))["cells"]


def _sources():
    """(where, markdown text) for every docs page and every markdown cell of the appendix notebook."""
    out = [(p.name, p.read_text(encoding="utf-8")) for p in sorted(DOCS.glob("*.md"))]
    out += [(f"13_troubleshooting.ipynb#{c['id']}", "".join(c["source"])) for c in _cells("13_troubleshooting")
            if c["cell_type"] == "markdown"]
    return out


def _headings(stem):
    """A notebook's markdown headings without the #s and the section number ("## 4. 合并" -> "合并")."""
    return {re.sub(r"^\d+\.\s*", "", line.lstrip("#").strip()) for c in _cells(stem) if c["cell_type"] == "markdown"
            for line in "".join(c["source"]).splitlines() if line.startswith("#")}


def test_every_cell_link_points_to_a_cell_that_exists():
    links, bad = 0, []
    for where, text in _sources():
        for stem, cell in CELL_LINK.findall(text):
            links += 1
            if not (NOTEBOOKS / f"{stem}.ipynb").is_file():
                bad.append(f"{where}: {stem}.ipynb does not exist")
            elif cell and cell not in {c.get("id") for c in _cells(stem)}:
                bad.append(f"{where}: {stem}.ipynb has no cell id {cell}")
    assert links > 60 and not bad, "\n".join(bad)


def test_every_anchor_link_in_docs_exists():
    anchors = {p.name: set(re.findall(r'<a id="([\w-]+)"></a>', p.read_text(encoding="utf-8")))
               for p in DOCS.glob("*.md")}
    assert len(anchors["glossary.md"]) >= 30
    bad = []
    for where, text in _sources():
        for page, anchor in ANCHOR_LINK.findall(text):
            target = page or where
            if anchor not in anchors.get(target, set()):
                bad.append(f"{where}: #{anchor} not in {target}")
    assert not bad, "\n".join(bad)


def test_the_appendix_answers_every_symptom_of_the_issue():
    """The symptom list of issue 18, written out here: each has its own section in notebook 13."""
    symptoms = ["Killed", "size mismatch", "合并顺序", "底座不对", "无限重复", "EOS", "loss 为 0 或 NaN", "SHA256",
                "基座模型放进聊天界面", "modules_to_save", "LoRA 什么都没改变", "401", "中文乱码", "LangChain 导入错误"]
    headings = [h for h in _headings("13_troubleshooting")]
    missing = [s for s in symptoms if not any(s in h for h in headings)]
    assert not missing, missing


def _coverage_rows():
    rows = []
    for line in (DOCS / "seed_coverage.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| (\d{3}-\d+) \| (.*?) \| \[\d\d\]\(\.\./notebooks/(\d\d_\w+)\.ipynb\) \| (.*?) \| (.*?) \|$", line)
        if m:
            rows.append(dict(zip(("id", "item", "notebook", "section", "status"), m.groups())))
    return rows


def test_seed_coverage_covers_every_seed_file():
    rows = _coverage_rows()
    seeds = sorted(p.name[:3] for p in (REPO_ROOT.parent / "shared" / "seeds").glob("*.txt")) or \
        ["000", "001", "002", "003", "004"]  # the seeds live beside the checkout; CI has no copy
    assert sorted({r["id"][:3] for r in rows}) == seeds
    assert len(rows) >= 60 and len({r["id"] for r in rows}) == len(rows)


def test_seed_coverage_rows_marked_done_name_sections_that_exist():
    bad = [f"{r['id']}: {r['notebook']} has no section {r['section']!r}" for r in _coverage_rows()
           if not r["status"] and r["section"] not in _headings(r["notebook"])]
    assert not bad, "\n".join(bad)


def test_every_seed_item_is_taught():
    """Fails until the pending rows are written: lists exactly which (row, notebook, who)."""
    missing = [f"{r['id']} [{r['status'] or 'done?'}] {r['notebook']} § {r['section']}: {r['item']}"
               for r in _coverage_rows() if r["section"] not in _headings(r["notebook"])]
    assert not missing, f"{len(missing)} seed items have no section yet:\n" + "\n".join(missing)
