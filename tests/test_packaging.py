"""The two README commands and the dependency list stay consistent; every pin installs on Python 3.11-3.13."""
import ast
import json
import os
import re
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")  # what README promises and CI checks the pins against
# Pins PyPI has no wheel for (pip builds them from source): checked by their Requires-Python instead of a binary resolution.
SDIST_ONLY = {"llama-cpp-python", "jieba", "deepspeed"}
# The machines learners use (Colab, AutoDL) and CI: x86_64 Linux with glibc >= 2.28 (torch's wheels need it).
PLATFORM = "x86_64-manylinux_2_28"
PYPI = "https://pypi.org/simple/"


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def pin_names(reqs) -> set[str]:
    return {r.split("==")[0].strip().lower() for r in reqs}


def test_every_dependency_is_pinned():
    meta = project()
    deps = meta["dependencies"] + [d for ds in meta["optional-dependencies"].values() for d in ds]
    unpinned = [d for d in deps if "==" not in d]
    assert not unpinned, f"pin these in pyproject.toml: {unpinned}"
    assert "torch==2.13.0" in meta["dependencies"]
    names = [d.split("==")[0] for d in deps]
    assert len(names) == len(set(names)), "a package is pinned twice (light set and an extra?)"


def test_requires_python_admits_exactly_the_supported_versions():
    spec = SpecifierSet(project()["requires-python"])
    assert [v for v in ("3.10", *SUPPORTED_PYTHONS, "3.14") if v + ".0" in spec] == list(SUPPORTED_PYTHONS)


def test_heavy_and_tool_only_parts_are_extras():
    meta = project()
    extras = {k: pin_names(v) for k, v in meta["optional-dependencies"].items()}
    assert extras["export"] == {"gguf", "llama-cpp-python", "starlette-context"}  # notebook 11 (llama.cpp compiles
    # from source; starlette-context completes llama-cpp-python's [server] extra)
    assert extras["train"] == {"deepspeed"}  # notebook 07's --deepspeed (Colab/AutoDL: pip install -e "course[train]")
    assert "jupyterlab" in extras["lab"] and {"pytest", "nbval"} <= extras["test"]
    light = pin_names(meta["dependencies"])
    assert {"ipykernel", "nbformat", "nbclient", "papermill"} <= light  # the notebooks need a kernel
    assert not light & set().union(*extras.values())


def test_environment_yml_installs_the_project_instead_of_repeating_it():
    env = (ROOT / "environment.yml").read_text(encoding="utf-8")
    assert "python=3.11" in env and "-e .[test,export,lab,train]" in env
    listed = re.findall(r"^\s+- ([A-Za-z0-9_.\-]+)==", env, flags=re.M)
    assert listed == ["torch"], "environment.yml must not list dependencies other than torch (pyproject is the source)"


def test_makefile_and_ci_entry_point():
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("course:", "test:", "lab:", "venv:"):
        assert f"\n{target}" in make
    # pip's and setuptools' banners (nothing a learner can act on) go to a log shown only when the install fails
    assert "> $(VENV)/install.log 2>&1" in make and "tail -n 40 $(VENV)/install.log" in make
    assert '-e ".[test,export,lab,train]"' in make, "`make` installs everything: the light set and every extra"
    assert "--ip=127.0.0.1" in make and "--allow-root" in make
    assert "--nbval-lax" in make and "HF_HUB_OFFLINE" in make
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci and "make book" in ci and "make rehearse" in ci
    assert "workspace/" in (ROOT / ".gitignore").read_text(encoding="utf-8")


def module_level_imports(tree: ast.AST) -> list[tuple[str, int]]:
    """``(module, level)`` of every import that runs when ``tree`` is imported (function bodies skipped)."""
    out = []
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            out.append((base, node.level))
            if node.level and not base or base == "helpers":  # `from . import x`, `from helpers import x`
                out += [(a.name, node.level) if node.level else (f"helpers.{a.name}", 0) for a in node.names]
        todo += list(ast.iter_child_nodes(node))
    return out


def extra_import_names() -> dict[str, str]:
    """``{top-level import name: distribution}`` for every package pinned only in an extra."""
    owners: dict[str, list[str]] = {}
    for top, dists in metadata.packages_distributions().items():
        for d in dists:
            owners.setdefault(re.sub(r"[-_.]+", "-", d).lower(), []).append(top)
    out = {}
    for reqs in project()["optional-dependencies"].values():
        for name in pin_names(reqs):
            for top in owners.get(name, [name.replace("-", "_")]):
                out[top] = name
    return out


def test_notebooks_but_11_import_no_extra_at_module_level():
    """The light install (no extras) runs every notebook but 11 (export): neither they nor the helpers modules they load
    (following each module's own module-level imports) may import a package of [export], [lab] or [test] on import;
    an import inside a function is fine."""
    extras = extra_import_names()
    assert {"llama_cpp", "gguf", "jupyterlab", "pytest"} <= set(extras)
    todo, bad = [("helpers", "notebook")], []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if nb.name.startswith("11_"):
            continue
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and not src.lstrip().startswith("%%"):  # %%bash etc.: not Python
                tree = ast.parse("\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("!", "%"))))
                todo += [(m, nb.name) for m, _ in module_level_imports(tree)]
                todo += [(f"helpers.{m}", nb.name) for m in re.findall(r"\bhelpers\.(\w+)", src)]
    seen = set()
    while todo:
        mod, by = todo.pop()
        if mod.split(".")[0] in extras:
            bad.append(f"{by} imports {mod} ({extras[mod.split('.')[0]]}) at module level")
        if not mod.startswith("helpers") or mod in seen:
            continue
        seen.add(mod)
        path = ROOT / (mod.replace(".", "/") + ".py")
        if not path.is_file():
            path = ROOT / mod.replace(".", "/") / "__init__.py"
        if not path.is_file():
            continue  # an attribute such as helpers.setup
        for name, level in module_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            todo.append((f"helpers.{name}" if level else name, path.name))
    assert {"helpers", "helpers.core", "helpers.rag", "helpers.api"} <= seen
    assert not bad, "move these imports into the functions that need them: " + "; ".join(sorted(set(bad)))


# --- every pin installs on every supported Python (PyPI, metadata only) -------------------------------------------

def pypi_or_skip() -> None:
    """Skip when PyPI is unreachable, except in CI (``CI=true``), where the check must run."""
    try:
        ctx = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
        urllib.request.urlopen(urllib.request.Request(PYPI + "pip/", method="HEAD"), timeout=10, context=ctx)
    except OSError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PyPI ({PYPI}) is unreachable in CI: {e}")
        pytest.skip(f"PyPI ({PYPI}) is unreachable ({e}): cannot check that the pins install on Python "
                    f"{', '.join(SUPPORTED_PYTHONS)}")


def big_files(folder: Path, limit_mb: float = 20) -> list[str]:
    """Files of ``limit_mb`` or more under ``folder``: a wheel downloaded (and unpacked) whole, not its metadata."""
    return [f"{f.relative_to(folder)} ({f.stat().st_size / 1e6:.0f} MB)" for f in folder.rglob("*")
            if f.is_file() and f.stat().st_size >= limit_mb * 1e6]


def test_big_files_finds_a_downloaded_wheel(tmp_path):
    (tmp_path / "archive" / "torch").mkdir(parents=True)
    (tmp_path / "archive" / "torch" / "libtorch_cpu.so").write_bytes(b"\0" * 21_000_000)
    (tmp_path / "simple.rkyv").write_bytes(b"\0" * 4_000_000)  # an index page: fine
    assert big_files(tmp_path) == [f"archive{os.sep}torch{os.sep}libtorch_cpu.so (21 MB)"]


@pytest.mark.network
def test_every_pin_resolves_on_each_supported_python(tmp_path):
    """uv resolves all pins (light set and every extra) against PyPI for Python 3.11, 3.12 and 3.13 on glibc 2.28
    x86_64 from wheels only, reading wheel metadata (PEP 658 files, else HTTP ranges) without downloading a
    wheel; the sdist-only pins must admit each version by their Requires-Python (``pip index`` filters by it)."""
    from uv import find_uv_bin

    pypi_or_skip()
    meta = project()
    for v in SUPPORTED_PYTHONS:
        assert v + ".0" in SpecifierSet(meta["requires-python"]), f"pyproject.toml: requires-python excludes {v}"
    pins = meta["dependencies"] + [d for ds in meta["optional-dependencies"].values() for d in ds]
    pins = {r.split("==")[0].strip().lower(): r.split("==")[1].strip() for r in pins}
    assert SDIST_ONLY <= set(pins), f"SDIST_ONLY names a package that is no longer pinned: {SDIST_ONLY - set(pins)}"
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("".join(f"{n}=={v}\n" for n, v in pins.items() if n not in SDIST_ONLY), encoding="utf-8")
    cache = tmp_path / "uv-cache"  # fresh: what it holds afterwards is what this resolution downloaded
    env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"}
    start, failures = time.monotonic(), []
    for v in SUPPORTED_PYTHONS:
        out = tmp_path / f"resolved-{v}.txt"
        proc = subprocess.run([find_uv_bin(), "pip", "compile", "--quiet", "--no-header", "--python", sys.executable,
                               "--python-version", v, "--python-platform", PLATFORM,
                               "--only-binary", ":all:", "--default-index", PYPI, str(reqs), "-o", str(out)],
                              capture_output=True, text=True, env=env, timeout=300)
        if proc.returncode != 0:
            failures.append(f"Python {v}: uv exited {proc.returncode}:\n{proc.stderr[-3000:]}")
            continue
        got = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", out.read_text(encoding="utf-8"), flags=re.M))
        got = {re.sub(r"[-_.]+", "-", n).lower(): ver for n, ver in got.items()}
        wrong = {n: got.get(n) for n, want in pins.items() if n not in SDIST_ONLY and got.get(n) != want}
        if wrong:
            failures.append(f"Python {v}: the resolution lacks these pins: {wrong}")
    resolved = time.monotonic() - start
    if big := big_files(cache):
        failures.append(f"the resolution downloaded whole wheels instead of their metadata: {big}")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--timeout", "60"]
    for name in sorted(SDIST_ONLY):
        for v in SUPPORTED_PYTHONS:
            proc = subprocess.run([*pip, "index", "versions", name, "--python-version", v, "--json"],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode != 0 or pins[name] not in json.loads(proc.stdout)["versions"]:
                failures.append(f"Python {v}: {name}=={pins[name]} is not installable on Python {v} (its "
                                f"Requires-Python excludes it, or it is gone): {proc.stderr[-500:]}")
    print(f"pins resolved for Python {', '.join(SUPPORTED_PYTHONS)} in {resolved:.1f} s; "
          f"sdist-only pins checked in {time.monotonic() - start - resolved:.1f} s")
    assert not failures, ("\n\n".join(failures) + "\n\nA pin without wheels for a supported Python: pick a "
                          "version that has them (or, if the package only ships an sdist, add it to SDIST_ONLY).")
