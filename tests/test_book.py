"""helpers.book: a tiny site from 2 small notebooks and a docs page: navigation, rewritten links, link check."""
import pytest

from helpers import book
from helpers.core import CourseError
from helpers.notebook import code, md, write_notebook


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    executed, docs, images = root / "executed", root / "docs", root / "images"
    for d in (executed, docs, images):
        d.mkdir()
    (images / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    write_notebook(executed / "01_first.ipynb", [md("# 01 第一步\n\n![p](../images/pic.png)"), code("x = 1"),
                                                 md("see [the glossary](../docs/glossary.md#lora)")])
    write_notebook(executed / "02_second.ipynb", [md("# 02 第二步"), md("back to [cell c01](01_first.ipynb#c01)")])
    (docs / "glossary.md").write_text('# 术语表\n\n<a id="lora"></a>\n\n### LoRA\n\n'
                                      "[taught here](../notebooks/02_second.ipynb#c01)\n", encoding="utf-8")
    index = book.build_book(executed, root / "site", docs, images)
    return index.parent


def test_pages_index_and_navigation(site):
    names = sorted(p.name for p in site.glob("*.html"))
    assert names == ["01_first.html", "02_second.html", "glossary.html", "index.html"]
    index = (site / "index.html").read_text(encoding="utf-8")
    assert index.index('href="01_first.html"') < index.index('href="02_second.html"') < index.index("glossary.html")
    second = (site / "02_second.html").read_text(encoding="utf-8")
    assert 'href="01_first.html" rel="prev"' in second and 'href="glossary.html" rel="next"' in second
    assert 'rel="prev"' not in (site / "01_first.html").read_text(encoding="utf-8").split("</nav>")[0]


def test_links_are_rewritten_to_the_site(site):
    first = (site / "01_first.html").read_text(encoding="utf-8")
    assert 'href="glossary.html#lora"' in first and 'src="images/pic.png"' in first
    assert 'href="01_first.html#cell-id=c01"' in (site / "02_second.html").read_text(encoding="utf-8")
    assert 'id="cell-id=c01"' in first  # nbconvert's anchor of cell c01: the rewritten link lands on it
    assert (site / "images" / "pic.png").is_file()
    assert book.check_links(site) == []


def test_check_links_reports_missing_pages_and_anchors(site, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(site, copy)
    page = copy / "02_second.html"
    page.write_text(page.read_text(encoding="utf-8").replace(
        "</body>", '<a href="03_missing.html">x</a><a href="01_first.html#cell-id=c99">y</a>'
                   '<a href="#nowhere">z</a><a href="https://example.com/x">external</a></body>'), encoding="utf-8")
    broken = book.check_links(copy)
    assert len(broken) == 3
    assert any("03_missing.html" in b for b in broken) and any("c99" in b for b in broken)
    assert any("nowhere" in b for b in broken)


def test_no_executed_notebooks_is_explained(tmp_path, capsys):
    assert book.main(["--executed", str(tmp_path), "--out", str(tmp_path / "site")]) == 2
    assert "make course" in capsys.readouterr().err
    with pytest.raises(CourseError, match="make course"):
        book.build_book(tmp_path / "nothing", tmp_path / "site")
