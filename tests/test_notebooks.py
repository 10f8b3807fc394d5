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
