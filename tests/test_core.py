import os

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


def test_colab_install_step_installs_only_mismatched_pins(monkeypatch):
    from importlib import metadata

    pins = core.pinned_requirements()
    assert "transformers==5.23.0" in pins and all("==" in p for p in pins)
    assert core.missing_requirements(skip=core.COLAB_KEEP) == []  # this environment follows the pins
    real_version = metadata.version

    def colab_versions(name):  # Colab ships other versions of some packages and lacks others
        return {"transformers": "4.57.0", "torch": "2.9.0+cu126"}.get(name) or (
            real_version(name) if name != "gguf" else (_ for _ in ()).throw(metadata.PackageNotFoundError(name)))

    monkeypatch.setattr(metadata, "version", colab_versions)
    calls = []
    missing = core.colab_install(run=calls.append)
    assert missing == ["transformers==5.23.0", "gguf==0.19.0"]  # torch: Colab's CUDA build is kept
    assert calls and calls[0][-2:] == missing and calls[0][1:4] == ["-m", "pip", "install"]


def test_setup_runs_the_install_step_on_colab(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_WORKSPACE", str(tmp_path))
    monkeypatch.setattr(core, "detect_platform", lambda: "colab")
    seen = []
    monkeypatch.setattr(core, "colab_install", lambda: seen.append(True) or [])
    assert core.setup("tiny", quiet=True).platform == "colab" and seen == [True]
