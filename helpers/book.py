"""`make book`: a static HTML site of the executed notebooks (tiny profile) and the docs pages, with navigation.

    python -m helpers.book [--executed build/executed] [--out build/book]

nbconvert's ``HTMLExporter`` (lab template) renders each executed notebook and each ``docs/*.md`` page (as a
one-cell notebook, so both look alike); every page gets an index / previous / next bar. Links between course
files are rewritten for the site: ``NN_x.ipynb#<cell id>`` -> ``NN_x.html#cell-id=<cell id>`` (the anchor
nbconvert gives every cell), ``docs/x.md#anchor`` -> ``x.html#anchor``, ``../images/`` -> ``images/``.
Then :func:`check_links` checks that every relative link and anchor of the site resolves.
"""
from __future__ import annotations

import argparse
import html
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .core import REPO_ROOT, CourseError, cli_main
from .io import atomic_dir

DOCS = REPO_ROOT / "docs"
IMAGES = REPO_ROOT / "images"
DOC_PAGES = {"glossary": "术语表", "seed_coverage": "种子文档覆盖表"}

_NOTEBOOK_LINK = re.compile(r'href="(?:(?:\.\./)?notebooks/)?(\d\d_\w+)\.ipynb(?:#([^"]*))?"')
_DOC_LINK = re.compile(r'href="(?:(?:\.\./)?docs/)?(\w+)\.md(#[^"]*)?"')


def rewrite_links(page: str, cells: dict[str, set[str]]) -> str:
    """``page`` (HTML) with its links to course files pointed at the site's pages: a notebook link keeps its
    fragment, turned into nbconvert's ``cell-id=`` anchor when it names a cell of that notebook (``cells``:
    notebook stem -> its cell ids); ``.md`` links become ``.html``; ``../images/`` becomes ``images/``.
    Returns the new HTML."""
    def notebook(m: re.Match) -> str:
        stem, frag = m.group(1), m.group(2)
        if frag and frag in cells.get(stem, set()):
            frag = f"cell-id={frag}"
        return f'href="{stem}.html' + (f"#{frag}" if frag else "") + '"'

    page = _NOTEBOOK_LINK.sub(notebook, page)
    page = _DOC_LINK.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', page)
    return page.replace('src="../images/', 'src="images/').replace('href="../images/', 'href="images/')


def _nav(pages: list[tuple[str, str]], i: int) -> str:
    """The navigation bar of page ``i`` of ``pages`` ((stem, title) in reading order)."""
    parts = ['<a href="index.html">目录 index</a>']
    if i > 0:
        parts.append(f'<a href="{pages[i - 1][0]}.html" rel="prev">← {html.escape(pages[i - 1][1])}</a>')
    if i + 1 < len(pages):
        parts.append(f'<a href="{pages[i + 1][0]}.html" rel="next">{html.escape(pages[i + 1][1])} →</a>')
    return ('<nav class="course-nav" style="padding:8px 16px;border-bottom:1px solid #ccc;font-family:sans-serif">'
            + " &nbsp;|&nbsp; ".join(parts) + "</nav>")


def _title(nb, fallback: str) -> str:
    """The first markdown heading of notebook ``nb`` without the #s (``fallback`` when there is none)."""
    for c in nb.cells:
        if c.cell_type == "markdown":
            for line in c.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return fallback


def _order(stems: list[str]) -> list[str]:
    """``stems`` in course order (:data:`helpers.course.COURSE`), unknown ones after, by name."""
    from .course import COURSE

    known = [s for s in COURSE if s in stems]
    return known + sorted(s for s in stems if s not in known)


def build_book(executed: str | Path, out: str | Path, docs: str | Path | None = DOCS,
               images: str | Path | None = IMAGES, check: bool = True) -> Path:
    """Render every ``*.ipynb`` of ``executed`` (course order) and every ``docs/*.md`` page into ``out``
    (written atomically, replaced if it exists) with ``index.html`` and prev/next bars; copies ``images``.

    Returns the path of ``index.html``. Raises CourseError when ``executed`` holds no notebook, or (``check``)
    when a relative link or anchor of the site does not resolve (the message lists them).
    """
    import nbformat
    from nbconvert import HTMLExporter

    executed, out = Path(executed), Path(out)
    paths = {p.stem: p for p in executed.glob("*.ipynb")} if executed.is_dir() else {}
    if not paths:
        raise CourseError(f"--executed {executed}: no executed notebooks; run `make course` first "
                          "(it writes build/executed/)")
    notebooks = {stem: nbformat.read(paths[stem], as_version=4) for stem in _order(list(paths))}
    doc_files = sorted(Path(docs).glob("*.md"), key=lambda p: (p.stem not in DOC_PAGES, p.stem)) if docs else []
    for p in doc_files:
        text = p.read_text(encoding="utf-8")
        notebooks[p.stem] = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])
    cells = {stem: {c.get("id", "") for c in nb.cells} for stem, nb in notebooks.items()}
    pages = [(stem, _title(nb, DOC_PAGES.get(stem, stem))) for stem, nb in notebooks.items()]
    exporter = HTMLExporter(template_name="lab")
    with atomic_dir(out, overwrite=True) as tmp:
        for i, (stem, title) in enumerate(pages):
            body, _ = exporter.from_notebook_node(notebooks[stem], resources={"metadata": {"name": title}})
            nav = _nav(pages, i)
            body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)
            body = body.replace("</body>", nav + "</body>", 1)
            (tmp / f"{stem}.html").write_text(rewrite_links(body, cells), encoding="utf-8")
        items = "\n".join(f'<li><a href="{stem}.html">{html.escape(title)}</a></li>' for stem, title in pages)
        (tmp / "index.html").write_text(
            '<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8"><title>动手实践 Chinese-LLaMA-Alpaca'
            '</title></head>\n<body style="font-family:sans-serif;max-width:860px;margin:2em auto">\n'
            "<h1>动手实践 Chinese-LLaMA-Alpaca</h1>\n<p>已执行的笔记本（tiny 配置）与文档页。</p>\n"
            f"<ol>\n{items}\n</ol>\n</body></html>\n", encoding="utf-8")
        if images and Path(images).is_dir():
            shutil.copytree(images, tmp / "images")
        if check:
            broken = check_links(tmp)
            if broken:
                raise CourseError(f"{out}: {len(broken)} broken link(s) in the site:\n" + "\n".join(broken[:40]))
    return out / "index.html"


class _Links(HTMLParser):
    """Collects the ids/names a page defines and the href/src values it uses."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)
            elif key in ("href", "src") and value and tag != "link":  # <link> = stylesheets / icons
                self.refs.append(value)


def check_links(site: str | Path) -> list[str]:
    """Every relative ``href``/``src`` of every ``.html`` page under ``site``: the file exists and, with a
    ``#fragment``, the target page defines that id. Returns ``"page: link (why)"`` for each broken one.

    Hand-written (stdlib html.parser): the maintained link checkers fetch over the network or need a server.
    """
    site = Path(site)
    parsed: dict[Path, _Links] = {}
    for page in sorted(site.rglob("*.html")):
        p = _Links()
        p.feed(page.read_text(encoding="utf-8", errors="replace"))
        parsed[page.resolve()] = p
    broken = []
    for page, links in parsed.items():
        for ref in links.refs:
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith("//") or ref.startswith("javascript:"):
                continue  # external or scripted: not checked offline
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            where = f"{page.relative_to(site.resolve())}: {ref}"
            if not target.exists():
                broken.append(f"{where} (no file {unquote(parts.path)})")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids
                # browsers match the raw fragment first, then its percent-decoded form (nbconvert encodes ids)
                if not {parts.fragment, unquote(parts.fragment)} & (ids | {unquote(i) for i in ids}):
                    broken.append(f"{where} (no id {unquote(parts.fragment)!r} in {target.name})")
    return broken


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.book``."""
    ap = argparse.ArgumentParser(prog="python -m helpers.book", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--executed", default=str(REPO_ROOT / "build" / "executed"),
                    help="folder of executed notebooks (`make course` writes build/executed)")
    ap.add_argument("--out", default=str(REPO_ROOT / "build" / "book"), help="site folder (replaced)")
    ap.add_argument("--docs", default=str(DOCS), help="folder of markdown pages to include")
    return ap


def _run(args) -> int:
    index = build_book(args.executed, args.out, args.docs)
    print(f"book: {index} ({len(list(index.parent.glob('*.html'))) - 1} pages, links checked); open it in a browser")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.book``; returns the exit code (2 with a message when the site cannot be built)."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
