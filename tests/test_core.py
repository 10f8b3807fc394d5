import os
import sys

import pytest

from helpers import core, io


def test_profile_from_argument_env_and_default(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert core.get_profile() == "tiny"
    monkeypatch.setenv("COURSE_PROFILE", "real")
    assert core.get_profile() == "real"
    assert core.get_profile("TINY") == "tiny"  # the notebook parameter wins
    with pytest.raises(core.CourseError, match="PROFILE"):
        core.get_profile("huge")


def test_workspace_override(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_WORKSPACE", str(tmp_path / "ws"))
    assert core.workspace() == (tmp_path / "ws").resolve()
    assert core.workspace("tiny").is_dir()


def test_setup_sets_offline_switches_and_seed(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setenv("COURSE_WORKSPACE", str(tmp_path))
    for k in core.OFFLINE_ENV:
        monkeypatch.delenv(k, raising=False)
    course = core.setup("tiny", seed=7)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    a = torch.rand(3)
    core.set_seed(7)
    assert torch.equal(a, torch.rand(3))
    assert course.tiny and course.device in ("cpu", "cuda", "mps")
    out = capsys.readouterr().out
    assert "profile=tiny" in out and "transformers" in out


def test_atomic_dir_refuses_existing_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "out"
    with io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1", encoding="utf-8")
    assert (target / "a.txt").read_text(encoding="utf-8") == "1"
    with pytest.raises(core.CourseError, match="--overwrite"):
        with io.atomic_dir(target):
            pass
    with pytest.raises(RuntimeError):
        with io.atomic_dir(target, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("2", encoding="utf-8")
            raise RuntimeError("crash half-way")
    assert (target / "a.txt").read_text(encoding="utf-8") == "1"  # the old output survived
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folders left behind
    with io.atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("3", encoding="utf-8")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_manifest_detects_changed_missing_and_extra_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub" / "b.json").write_text("{}", encoding="utf-8")
    io.write_manifest(tmp_path)
    line = (tmp_path / io.MANIFEST).read_text(encoding="utf-8").splitlines()[0]
    assert line == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  a.bin"  # sha256sum format
    assert io.verify_manifest(tmp_path) == {"mismatch": [], "missing": [], "extra": []}
    (tmp_path / "a.bin").write_bytes(b"abd")
    (tmp_path / "sub" / "b.json").unlink()
    (tmp_path / "c.txt").write_text("x", encoding="utf-8")
    assert io.verify_manifest(tmp_path) == {"mismatch": ["a.bin"], "missing": ["sub/b.json"], "extra": ["c.txt"]}


def test_read_json_names_file_and_position(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,}', encoding="utf-8")
    with pytest.raises(core.CourseError, match=r"bad.json: invalid JSON at line 1"):
        io.read_json(bad)


def _pyproject_pins(*groups):
    """The pins of pyproject.toml read here, independently of helpers.core: ``{name: version}`` per group."""
    import tomllib

    project = tomllib.loads((core.REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = {}
    for group in groups:
        reqs = project["dependencies"] if group == "light" else project["optional-dependencies"][group]
        out.update(r.split("==") for r in reqs)
    return out


def test_pinned_requirements_are_the_light_set_plus_the_extras_asked_for():
    names = lambda reqs: {r.split("==")[0] for r in reqs}  # noqa: E731
    light = core.pinned_requirements()
    assert all("==" in r for r in light)
    assert {"torch", "transformers", "peft", "jieba", "gradio", "ipykernel", "papermill"} <= names(light)
    assert not {"gguf", "llama-cpp-python", "jupyterlab", "nbconvert", "pytest"} & names(light)
    export = core.pinned_requirements(["export"])
    assert export[:len(light)] == light and names(export[len(light):]) == {"gguf", "llama-cpp-python", "starlette-context"}
    assert {"jupyterlab", "gguf", "pytest"} <= names(core.pinned_requirements(["lab", "export", "test"]))
    with pytest.raises(core.CourseError, match=r"extras: no extra 'gpu'.*'export'"):
        core.pinned_requirements(["gpu"])


def test_pinned_requirements_from_installed_metadata_outside_a_checkout(monkeypatch, tmp_path):
    from importlib import metadata

    class Meta:
        def get_all(self, key):
            return ["export", "test"] if key == "Provides-Extra" else None

    class Dist:
        metadata = Meta()
        requires = ["torch==2.13.0", 'gguf==0.19.0; extra == "export"', "numpy==2.4.6",
                    "pytest==9.2.0 ; extra == 'test'"]

    monkeypatch.setattr(core, "REPO_ROOT", tmp_path)  # no pyproject.toml there: a wheel install
    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())
    assert core.pinned_requirements() == ["torch==2.13.0", "numpy==2.4.6"]
    assert core.pinned_requirements(["test", "export"]) == ["torch==2.13.0", "numpy==2.4.6", "pytest==9.2.0",
                                                            "gguf==0.19.0"]
    with pytest.raises(core.CourseError, match="'lab'"):
        core.pinned_requirements(["lab"])


def test_missing_requirements_compares_versions_and_skips_kept_packages():
    have = {core.canonical_name(n): v for n, v in _pyproject_pins("light").items()}
    assert core.missing_requirements(installed=have) == []
    have.update({"transformers": "4.57.0", "torch": "2.9.0+cu126", "langchain-core": "1.7.0"})
    del have["jieba"]
    assert core.missing_requirements(skip={"torch"}, installed=have) == ["transformers==5.23.0", "jieba==0.42.1"]
    assert core.missing_requirements(installed=have)[0] == "torch==2.13.0"
    have["torch"] = "2.13.0+cpu"  # a local build of the pinned version satisfies the pin (PEP 440)
    assert "torch==2.13.0" not in core.missing_requirements(installed=have)
    assert core.missing_requirements(skip={"torch"}, extras=["export"], installed=have)[-3:] == [
        "gguf==0.19.0", "llama-cpp-python==0.3.36", "starlette-context==0.3.6"]
    assert core.canonical_name("Langchain_Core.X") == "langchain-core-x"


def test_imported_distributions_looks_at_loaded_module_files():
    import types
    from importlib import metadata

    init = metadata.distribution("transformers").locate_file("transformers/__init__.py")
    loaded = {"transformers": types.SimpleNamespace(__file__=str(init)), "google": types.ModuleType("google")}
    assert core.imported_distributions(["peft", "Transformers", "no-such-dist"], modules=loaded) == ["transformers"]
    assert core.imported_distributions(["transformers"], modules={}) == []
    assert core.imported_distributions(["pytest", "no-such-dist"]) == ["pytest"]  # this very process


COLAB_OLD = {"transformers": "4.57.0", "peft": "0.15.2", "torch": "2.9.0+cu126", "ipykernel": "6.17.1",
             "huggingface-hub": "0.36.0"}  # what a Colab image ships instead of the pins (jieba: absent)


@pytest.fixture
def colab(monkeypatch):
    """A simulated Colab: installed versions in a dict that a fake pip updates; a fake set of imported modules."""
    import types
    from importlib import metadata

    state = {core.canonical_name(n): v for n, v in _pyproject_pins("light").items() if n != "jieba"}
    state.update(COLAB_OLD)
    imported = {}
    monkeypatch.setattr(core, "installed_versions", lambda: dict(state))
    real = core.imported_distributions
    monkeypatch.setattr(core, "imported_distributions", lambda names: real(names, modules=imported))

    def pip(cmd):  # installs the pins asked for, and moves a dependency along (as pip does)
        assert cmd[:5] == [sys.executable, "-m", "pip", "install", "-q"]
        state.update(r.split("==") for r in cmd[5:])
        state["huggingface-hub"] = "1.4.0"

    def imported_transformers():
        init = metadata.distribution("transformers").locate_file("transformers/__init__.py")
        imported["transformers"] = types.SimpleNamespace(__file__=str(init))

    return types.SimpleNamespace(state=state, pip=pip, import_transformers=imported_transformers)


def test_colab_install_says_what_it_installs_and_needs_no_restart_when_nothing_was_imported(colab, capsys):
    calls = []
    report = core.colab_install(run=lambda cmd: calls.append(cmd) or colab.pip(cmd))
    expected = ["transformers==5.23.0", "peft==0.21.2", "jieba==0.42.1"]  # torch, ipykernel: Colab's are kept
    assert len(calls) == 1 and calls[0][5:] == expected and report.requested == expected
    assert report.added == {"jieba": "0.42.1"}
    assert report.replaced == {"transformers": ("4.57.0", "5.23.0"), "peft": ("0.15.2", "0.21.2"),
                               "huggingface-hub": ("0.36.0", "1.4.0")}
    assert report.in_use == [] and not report.restart_needed
    out = capsys.readouterr().out
    assert " ".join(expected) in out and "No restart needed" in out and "transformers 4.57.0 -> 5.23.0" in out
    assert core.colab_install(run=calls.append) == core.InstallReport() and len(calls) == 1  # 2nd run: nothing


def test_colab_install_asks_for_a_restart_when_an_imported_package_was_replaced(colab, capsys):
    colab.import_transformers()
    report = core.colab_install(run=colab.pip)
    assert report.restart_needed and report.in_use == ["transformers"]
    assert "Restart needed: this session had already imported transformers" in capsys.readouterr().out


def test_colab_install_of_absent_packages_only_needs_no_restart(colab, capsys):
    colab.import_transformers()
    colab.state.update({n: v for n, v in _pyproject_pins("light").items() if n in COLAB_OLD and n != "torch"})
    colab.state.pop("huggingface-hub")
    report = core.colab_install(run=colab.pip, extras=["export"])
    assert report.requested == ["jieba==0.42.1", "gguf==0.19.0", "llama-cpp-python==0.3.36", "starlette-context==0.3.6"]
    assert report.replaced == {} and set(report.added) == {"jieba", "gguf", "llama-cpp-python", "starlette-context",
                                                           "huggingface-hub"}
    assert not report.restart_needed and "No restart needed" in capsys.readouterr().out


def test_colab_install_turns_a_pip_failure_into_a_course_error(colab):
    import subprocess

    def failing(cmd):
        raise subprocess.CalledProcessError(1, cmd)

    with pytest.raises(core.CourseError, match=r"pip install transformers==5.23.0 .* failed \(exit 1\)"):
        core.colab_install(run=failing)


def test_setup_runs_the_install_step_on_colab(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_WORKSPACE", str(tmp_path))
    monkeypatch.setattr(core, "detect_platform", lambda: "colab")
    seen = []
    monkeypatch.setattr(core, "colab_install", lambda: seen.append(True) or [])
    assert core.setup("tiny", quiet=True).platform == "colab" and seen == [True]
