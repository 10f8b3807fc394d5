"""Course-wide setup: profiles, the git-ignored workspace, offline switches, seeds, environment report."""
from __future__ import annotations

import os
import platform
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROFILES = ("tiny", "real")
REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"

# Real-profile model names; tiny profile never touches a hub.
REAL_MODELS = {
    "llama_base": "hfl/chinese-llama-2-1.3b",
    "alpaca": "hfl/chinese-alpaca-2-1.3b",
    "alpaca_lora": "hfl/chinese-alpaca-2-lora-7b",
    "embedding": "BAAI/bge-small-zh-v1.5",
}

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
# Colab's own CUDA build of torch is the one to use there; everything else must match the course's pins.
COLAB_KEEP = {"torch"}


def pinned_requirements() -> list[str]:
    """The course's ``name==version`` pins (installed metadata, else ``pyproject.toml``), extras excluded."""
    from importlib import metadata

    try:
        reqs = metadata.requires(DIST_NAME) or []
    except metadata.PackageNotFoundError:  # running from a checkout that was not pip-installed
        import tomllib

        reqs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return [r.split(";")[0].strip() for r in reqs if "extra ==" not in r and "==" in r]


def missing_requirements(skip: set[str] = frozenset()) -> list[str]:
    """Pins that are not installed at exactly that version (what the Colab install step installs)."""
    from importlib import metadata

    out = []
    for req in pinned_requirements():
        name, version = req.split("==", 1)
        if name.lower() in skip:
            continue
        try:
            if metadata.version(name) != version:
                out.append(req)
        except metadata.PackageNotFoundError:
            out.append(req)
    return out


def colab_install(run=None) -> list[str]:
    """Colab's install step: pip-install the pins Colab lacks (keeping its CUDA torch); returns them.

    Colab preinstalls other versions of transformers, peft, ...; after an upgrade restart the runtime
    (Runtime > Restart session) and run the notebook again.
    """
    import subprocess

    missing = missing_requirements(skip=COLAB_KEEP)
    if missing:
        print("Colab: installing the course's pinned versions:", " ".join(missing))
        (run or subprocess.check_call)([sys.executable, "-m", "pip", "install", "-q", *missing])
        print("Installed. Restart the runtime (Runtime > Restart session), then run this notebook again.")
    return missing


def pick_device() -> str:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


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

    def model_name(self, key: str) -> str:
        return REAL_MODELS[key]


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
    set_seed(seed)
    if prof == "tiny":
        quiet_libraries()
    course = Course(profile=prof, workspace=workspace(), device=pick_device(), platform=where, seed=seed,
                    versions=versions())
    if not quiet:
        vs = ", ".join(f"{k} {v}" for k, v in course.versions.items() if v != "-")
        print(f"profile={prof} device={course.device} platform={where} workspace={course.workspace}")
        print(vs)
    return course
