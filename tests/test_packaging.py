"""The two README commands and the dependency list stay consistent."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_dependency_is_pinned():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = meta["dependencies"] + [d for ds in meta["optional-dependencies"].values() for d in ds]
    unpinned = [d for d in deps if "==" not in d]
    assert not unpinned, f"pin these in pyproject.toml: {unpinned}"
    assert "torch==2.13.0" in meta["dependencies"]
    assert meta["requires-python"].startswith(">=3.11")


def test_environment_yml_installs_the_project_instead_of_repeating_it():
    env = (ROOT / "environment.yml").read_text(encoding="utf-8")
    assert "python=3.11" in env and "-e .[test]" in env
    listed = re.findall(r"^\s+- ([A-Za-z0-9_.\-]+)==", env, flags=re.M)
    assert listed == ["torch"], "environment.yml must not list dependencies other than torch (pyproject is the source)"


def test_makefile_and_ci_entry_point():
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("course:", "test:", "lab:", "venv:"):
        assert f"\n{target}" in make
    assert "--ip=127.0.0.1" in make and "--allow-root" in make
    assert "--nbval-lax" in make and "HF_HUB_OFFLINE" in make
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci
    assert "workspace/" in (ROOT / ".gitignore").read_text(encoding="utf-8")
