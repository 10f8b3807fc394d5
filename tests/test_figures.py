"""helpers.figures: the pictures regenerate byte for byte, the dependency table matches the notebooks and the
issue's description of the pipeline; overview.header shows the recorded figures and the prerequisites."""
import json

import pytest

from helpers import course, figures, overview
from helpers.core import REPO_ROOT, CourseError


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    assert figures.main(["--out", str(out)]) == 0
    return out


def test_every_picture_regenerates_identically(drawn):
    """`python -m helpers.figures` reproduces the committed PNGs (deterministic: no timestamps, no Software tag)."""
    for name in figures.FIGURES:
        committed = REPO_ROOT / "images" / name
        assert committed.is_file(), f"images/{name} missing: run python -m helpers.figures"
        assert (drawn / name).read_bytes() == committed.read_bytes(), f"images/{name} is stale: regenerate it"


def test_every_notebook_is_in_the_dependency_table():
    stems = {p.stem for p in course.notebooks()}
    table = {s.stem for s in figures.PIPELINE}
    assert stems - table - set(figures.NOT_IN_PIPELINE) == set()
    assert table - stems <= figures.PLANNED  # a row without a notebook only while another issue writes it


def test_dependencies_are_the_ones_the_course_teaches():
    """Hand-written from the course (issue 18): 01 feeds 07, 07 feeds 04, 03 feeds 07 and 04, 02 feeds 03, 04 and
    07, 04 feeds every step that uses the merged model."""
    direct = figures.graph()
    assert direct["07"] == {"01", "02", "03"}
    assert direct["04"] == {"02", "03", "07"}
    assert direct["03"] == {"02"} and direct["01"] == direct["02"] == set()
    for user in ("05", "06", "08", "09", "10", "11", "12"):
        assert direct[user] == {"04"}
    assert figures.prerequisites("04_merge_lora") == ["01_crawl_prompts", "02_convert_llama", "03_extend_vocab",
                                                      "07_pretrain_and_sft_lora"]
    assert figures.prerequisites("05") == ["01_crawl_prompts", "02_convert_llama", "03_extend_vocab",
                                           "07_pretrain_and_sft_lora", "04_merge_lora"]
    assert figures.prerequisites("13_troubleshooting") == [] == figures.prerequisites("02")


def test_table_mistakes_are_refused(monkeypatch):
    bad = figures.PIPELINE + [figures.Step("99", "99_x", ("nobody writes this",), ())]
    monkeypatch.setattr(figures, "PIPELINE", bad)
    with pytest.raises(CourseError, match="nobody writes this"):
        figures.producers()
    with pytest.raises(CourseError, match="04_merge_lora"):
        figures.step("4_merge")


def test_header_shows_recorded_figures_and_prerequisites():
    text = overview.header("04")
    rehearsal = {r["notebook"]: r for r in json.loads((REPO_ROOT / "data" / "rehearsal.json").read_text())["notebooks"]}
    assert f"{rehearsal['04_merge_lora.ipynb']['seconds']:.0f} 秒" in text
    for stem in ("01_crawl_prompts", "02_convert_llama", "03_extend_vocab", "07_pretrain_and_sft_lora"):
        assert f"({stem}.ipynb)" in text
    assert text.index("07_pretrain") > text.index("03_extend")  # an order that works
    assert "前置**：无" in overview.header("01")
    with pytest.raises(CourseError, match="00_overview"):
        overview.header("42")


def test_overview_draw_pipeline_is_the_figure(tmp_path):
    """Notebook 00's entry point draws the same dependency graph as `python -m helpers.figures`."""
    path = overview.draw_pipeline(tmp_path / "p.png")
    assert path.read_bytes() == (REPO_ROOT / "images" / "pipeline.png").read_bytes()
