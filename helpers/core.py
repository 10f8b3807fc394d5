"""Course-wide setup: profiles, the git-ignored workspace, offline switches, seeds, environment report."""
from __future__ import annotations

import os
import platform
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

PROFILES = ("tiny", "real")
REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"

# Real-profile model names and facts live in helpers.catalog (ROLES, MODELS); tiny never touches a hub.

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "False",
}


class CourseError(ValueError):
    """Bad input from a student: the message names the file, field or flag and says what to do."""


def cli_main(run, argv: list[str] | None = None, parser=None) -> int:
    """The one wrapper every ``python -m helpers.<stage>`` uses: ``run(args)`` (or ``run(argv)`` without a
    ``parser``) returns an exit code (``None`` = 0); a :class:`CourseError` prints ``error: <message>`` on stderr
    and returns 2 (no traceback); Ctrl-C returns 130."""
    try:
        args = parser.parse_args(argv) if parser is not None else argv
        code = run(args)
    except CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)


def is_rehearsal() -> bool:
    """``make rehearse`` sets ``COURSE_REHEARSAL=1``: the real code paths against the stand-in hub, on CPU."""
    return os.environ.get("COURSE_REHEARSAL") == "1"


def rehearsal_budget(real, rehearsal, what: str):
    """``real`` normally; in the rehearsal ``rehearsal``, with a line saying what was shortened."""
    if not is_rehearsal():
        return real
    print(f"[rehearsal] {what}: {rehearsal} instead of {real} (CPU stand-in run; a GPU run uses {real})")
    return rehearsal


def get_profile(profile: str | None = None) -> str:
    """The active profile: the argument (notebook ``PROFILE``), else ``COURSE_PROFILE``, else ``tiny``."""
    value = (profile or os.environ.get("COURSE_PROFILE") or "tiny").strip().lower()
    if value not in PROFILES:
        raise CourseError(f"PROFILE / COURSE_PROFILE must be one of {PROFILES}, got {value!r}")
    return value


def workspace(sub: str | None = None) -> Path:
    """The git-ignored folder for built artifacts (``COURSE_WORKSPACE`` overrides ``<repo>/workspace``)."""
    root = Path(os.environ.get("COURSE_WORKSPACE") or (REPO_ROOT / "workspace")).expanduser().resolve()
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def set_offline(offline: bool = True) -> None:
    """Set the hub/analytics switches (tiny profile and CI are always offline)."""
    for key, value in OFFLINE_ENV.items():
        if offline or key in ("GRADIO_ANALYTICS_ENABLED", "TOKENIZERS_PARALLELISM", "ANONYMIZED_TELEMETRY"):
            os.environ[key] = value


def set_seed(seed: int = 42) -> None:
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def detect_platform() -> str:
    """``colab``, ``autodl`` or ``local``."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("AutoDLContainerUUID") or Path("/root/autodl-tmp").is_dir():
        return "autodl"
    return "local"


DIST_NAME = "hands-on-chinese-llama-alpaca"
# Colab keeps what its runtime is built on: its CUDA build of torch, and the kernel and widget packages its
# notebook frontend talks to (replacing those under a live kernel breaks the session). Every other pin of the
# light set is installed at the course's version.
COLAB_KEEP = frozenset({"torch", "ipykernel", "ipywidgets"})


def canonical_name(name: str) -> str:
    """``name`` normalized as pip compares names (PEP 503): ``Langchain_Core`` -> ``langchain-core``."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _declared_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """``(light set, {extra: pins})`` as declared: the checkout's ``pyproject.toml``, else the installed metadata."""
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():  # a checkout (editable installs too): the file is the source of truth
        import tomllib

        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        return list(project.get("dependencies", [])), {k: list(v) for k, v in
                                                         project.get("optional-dependencies", {}).items()}
    import re
    from importlib import metadata

    try:
        dist = metadata.distribution(DIST_NAME)
    except metadata.PackageNotFoundError as e:
        raise CourseError(f"no {pyproject} and {DIST_NAME} is not installed: install the course with "
                          "`pip install -e <the course checkout>`") from e
    light, extras = [], {name: [] for name in dist.metadata.get_all("Provides-Extra") or []}
    for req in dist.requires or []:
        spec, _, marker = req.partition(";")
        found = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        (extras.setdefault(found.group(1), []) if found else light).append(spec.strip())
    return light, extras


def pinned_requirements(extras: Iterable[str] = ()) -> list[str]:
    """The course's ``name==version`` pins: the light set (``[project.dependencies]``, what notebooks 00-10 need)
    plus the pins of each extra in ``extras`` (``"export"`` for notebook 11, ``"lab"``, ``"test"``).

    Returns them in declaration order, environment markers dropped. Raises CourseError for an unknown extra.
    """
    light, declared = _declared_requirements()
    reqs = list(light)
    for extra in extras:
        if extra not in declared:
            raise CourseError(f"extras: no extra {extra!r} in {DIST_NAME}; choose from {sorted(declared)}")
        reqs += declared[extra]
    return [r.split(";")[0].strip() for r in reqs if "==" in r]


def installed_versions() -> dict[str, str]:
    """Every distribution this interpreter can import: ``{canonical name: version}`` (first on ``sys.path`` wins)."""
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonical_name(name), dist.version)
    return out


def _same_version(installed: str, pinned: str) -> bool:
    # PEP 440: a pin without a local label matches every local build of it (torch 2.13.0+cpu satisfies ==2.13.0);
    # hand-written so the install step needs no package beyond the standard library.
    return installed == pinned or installed.split("+", 1)[0] == pinned


def missing_requirements(skip: Iterable[str] = frozenset(), extras: Iterable[str] = (),
                         installed: dict[str, str] | None = None) -> list[str]:
    """The pins (light set plus ``extras``) not installed at exactly that version, ``skip`` names left alone.

    ``installed`` is a snapshot from :func:`installed_versions` (taken now when omitted). Returns the pins in
    declaration order: what the Colab install step hands to pip.
    """
    have = installed_versions() if installed is None else installed
    skipped = {canonical_name(s) for s in skip}
    out = []
    for req in pinned_requirements(extras):
        name, version = req.split("==", 1)
        key = canonical_name(name)
        if key not in skipped and not (key in have and _same_version(have[key], version.strip())):
            out.append(req)
    return out


def imported_distributions(names: Iterable[str], modules: dict | None = None) -> list[str]:
    """Which of the installed distributions ``names`` this session has imported: a module file of theirs is
    loaded in ``modules`` (default ``sys.modules``). Returns their canonical names, in the order given."""
    from importlib import metadata

    loaded = {os.path.realpath(f) for m in list((sys.modules if modules is None else modules).values())
              if isinstance(f := getattr(m, "__file__", None), str)}
    out = []
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if any(f.suffix in (".py", ".so", ".pyd") and os.path.realpath(dist.locate_file(f)) in loaded
               for f in dist.files or []):
            out.append(canonical_name(name))
    return out


@dataclass
class InstallReport:
    """What :func:`colab_install` did. ``replaced`` covers the pins and the dependencies pip moved with them."""

    requested: list[str] = field(default_factory=list)  # the pins handed to pip
    added: dict[str, str] = field(default_factory=dict)  # name -> version, absent before
    replaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (old version, new version)
    in_use: list[str] = field(default_factory=list)  # replaced packages this session had already imported

    @property
    def restart_needed(self) -> bool:
        """True when an already imported package was replaced: the session still runs the old code."""
        return bool(self.in_use)

    def summary(self) -> str:
        """The lines :func:`colab_install` prints: what was installed, and whether to restart."""
        if not self.requested:
            return "Colab: every pinned package of the course is already installed; no restart needed."
        lines = [f"Added {len(self.added)}: " + (", ".join(f"{n} {v}" for n, v in self.added.items()) or "-"),
                 f"Replaced {len(self.replaced)}: "
                 + (", ".join(f"{n} {a} -> {b}" for n, (a, b) in self.replaced.items()) or "-")]
        if self.restart_needed:
            lines.append("Restart needed: this session had already imported " + ", ".join(self.in_use)
                         + " at the old version. Runtime > Restart session, then run the notebook again "
                         "(the second run installs nothing).")
        else:
            lines.append("No restart needed: no package this session had imported was replaced.")
        return "\n".join(lines)


def colab_install(run: Callable[[list[str]], object] | None = None, extras: Iterable[str] = (),
                  keep: Iterable[str] = COLAB_KEEP) -> InstallReport:
    """Colab's install step (``helpers.setup()`` calls it on Colab): ``pip install`` the course's pins that are
    not installed at exactly that version. Those are the light set (``[project.dependencies]`` of
    ``pyproject.toml``, what notebooks 00-10 need) plus ``extras`` (``["export"]`` for notebook 11: gguf and
    llama-cpp-python, which compiles llama.cpp), except ``keep`` (:data:`COLAB_KEEP`: Colab's CUDA torch, its
    kernel and widgets). ``run`` executes the pip command (default ``subprocess.check_call``).

    A restart is needed only when pip replaced a package (a pin or a dependency it pulled) that this session had
    already imported; a package that was absent, or replaced before anything imported it, loads fresh on its
    first import. Prints the pins and which case happened; returns the :class:`InstallReport`.
    """
    import importlib
    import subprocess

    keep = sorted(canonical_name(k) for k in keep)
    before = installed_versions()
    missing = missing_requirements(skip=keep, extras=extras, installed=before)
    if not missing:
        return InstallReport()
    sets = " + ".join(["light set", *(f"[{e}]" for e in extras)])
    print(f"Colab: pip-installing {len(missing)} pinned package(s) of the course ({sets}; keeping Colab's "
          f"{', '.join(keep)}):\n  " + " ".join(missing))
    cmd = [sys.executable, "-m", "pip", "install", "-q", *missing]
    try:
        (run or subprocess.check_call)(cmd)
    except subprocess.CalledProcessError as e:
        raise CourseError(f"Colab install step: `pip install {' '.join(missing)}` failed (exit {e.returncode}): "
                          "read pip's message above, fix its cause (disk space, network) and run this cell "
                          "again") from e
    importlib.invalidate_caches()  # let this session find what pip just wrote
    after = installed_versions()
    replaced = {n: (before[n], v) for n, v in after.items() if n in before and before[n] != v}
    report = InstallReport(requested=missing, added={n: v for n, v in after.items() if n not in before},
                           replaced=replaced, in_use=imported_distributions(replaced))
    print(report.summary())
    moved = [n for n in keep if n in replaced]
    if moved:
        print(f"Warning: a pin needed newer {', '.join(moved)} than Colab's, so pip replaced "
              f"{', '.join(f'{n} {replaced[n][0]} -> {replaced[n][1]}' for n in moved)}.")
    return report


def pick_device() -> str:
    """The device the course runs on (``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``): ``helpers.device.choose()``,
    which honours ``COURSE_DEVICE`` and also decides the dtype."""
    from .device import choose

    return choose().device


def versions() -> dict[str, str]:
    """Versions of the libraries the course relies on (``-`` when not installed)."""
    from importlib import metadata

    names = ["torch", "transformers", "peft", "sentencepiece", "tokenizers", "datasets", "accelerate",
             "safetensors", "langchain", "gradio", "fastapi", "openai", "gguf"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def quiet_libraries() -> None:
    """Tiny models load in milliseconds: hide the libraries' per-load progress bars and a known
    deprecation notice that transformers raises from inside PEFT (the real profile keeps them)."""
    import warnings

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


@dataclass
class Course:
    """What :func:`setup` found: pass it around instead of globals."""

    profile: str
    workspace: Path
    device: str
    platform: str
    seed: int
    versions: dict = field(default_factory=dict)

    @property
    def tiny(self) -> bool:
        return self.profile == "tiny"

    @property
    def rehearsal(self) -> bool:
        """True in ``make rehearse``: the real profile on the offline stand-in hub, on CPU (``COURSE_REHEARSAL=1``)."""
        return is_rehearsal()

    def model_name(self, key: str) -> str:
        """The repo id for a role of the real sections (``alpaca``, ``llama_base``, ...; :data:`helpers.catalog.ROLES`)."""
        from .catalog import get

        return get(key).repo_id  # CourseError naming the roles for a typo

    def budget(self, real, rehearsal, what: str):
        """``real`` on a real GPU, ``rehearsal`` in the CPU rehearsal (said in the output, so nobody mistakes a
        two-step rehearsal for a training run)."""
        return rehearsal_budget(real, rehearsal, what)


AUTODL_DATA = Path("/root/autodl-tmp")  # AutoDL's data disk; the system disk (~30 GB) cannot hold a 7B download


def use_data_disk(where: str) -> str | None:
    """On AutoDL, point the Hugging Face cache at the data disk (``HF_HOME=/root/autodl-tmp/hf``) unless
    ``HF_HOME`` or ``HF_HUB_CACHE`` is already set; returns the folder it chose, else None."""
    if where != "autodl" or os.environ.get("HF_HOME") or os.environ.get("HF_HUB_CACHE") or not AUTODL_DATA.is_dir():
        return None
    os.environ["HF_HOME"] = str(AUTODL_DATA / "hf")
    return os.environ["HF_HOME"]


def setup(profile: str | None = None, seed: int = 42, quiet: bool = False, install_on_colab: bool = True) -> Course:
    """The first call of every notebook: profile, offline switches, seeds, platform, versions, device.

    On Colab the course package is not installed yet: it prints (and runs) the install step.
    The tiny profile is always offline; the real profile leaves the hub reachable (set ``HF_ENDPOINT``
    to a mirror such as https://hf-mirror.com in China, or use ModelScope).
    """
    prof = get_profile(profile)
    where = detect_platform()
    set_offline(prof == "tiny" or os.environ.get("CI") == "true")
    if where == "colab" and install_on_colab:
        colab_install()
    hf_home = use_data_disk(where)
    set_seed(seed)
    if prof == "tiny":
        quiet_libraries()
    course = Course(profile=prof, workspace=workspace(), device=pick_device(), platform=where, seed=seed,
                    versions=versions())
    if not quiet:
        vs = ", ".join(f"{k} {v}" for k, v in course.versions.items() if v != "-")
        print(f"profile={prof} device={course.device} platform={where} workspace={course.workspace}")
        if hf_home:
            print(f"AutoDL: models are cached on the data disk, HF_HOME={hf_home}")
        print(vs)
    return course
