"""Device and dtype, decided once from the GPU's compute capability.

``choose()`` returns a :class:`DeviceChoice` that every step uses (loading, serving, training):

- ``COURSE_DEVICE`` (``cuda``, ``cuda:1``, ``mps``, ``cpu``) overrides the automatic pick; the offline rehearsal
  of the real profile runs with ``COURSE_DEVICE=cpu``. ``COURSE_DTYPE`` (``bfloat16``, ``float16``,
  ``float32``) forces the dtype.
- CUDA: compute capability >= 8.0 (A100 8.0, A10/3090 8.6, L4/4090 8.9, H100 9.0) has native bf16 -> bfloat16;
  7.x (V100 7.0, T4 7.5) -> float16, and training uses fp16 mixed precision with loss scaling;
  older GPUs (P100 6.0) -> float16 weights too, but training stays in float32.
  ``torch.cuda.is_bf16_supported()`` is not used: it is True on a T4 because it counts bf16 *emulation*,
  which is several times slower than the T4's native fp16 tensor cores.
- Apple MPS -> float32: the MPS backend runs every op in float32, fp16 still has missing/unstable kernels
  across macOS versions and bf16 needs macOS 14 (transformers' Apple-silicon page); ``COURSE_DTYPE=float16``
  halves the memory for inference when a model would not fit.
- CPU -> float32.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .catalog import BYTES, GIB
from .core import CourseError

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig

DTYPES = ("bfloat16", "float16", "float32")
# bitsandbytes is installed only on GPU machines (the course's pyproject runs on CPU and does not list it)
BITSANDBYTES_VERSION = "0.50.2"
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class DeviceChoice:
    """Where the model runs and in which dtype, with the reason (one line) and the GPU facts it was based on."""

    device: str  # "cuda", "cuda:1", "mps", "cpu"
    dtype_name: str  # "bfloat16" | "float16" | "float32"
    capability: tuple[int, int] | None = None
    gpu_name: str | None = None
    gpu_gib: float | None = None  # total memory of the GPU
    reason: str = ""

    @property
    def is_cuda(self) -> bool:
        """True when the device is a CUDA GPU."""
        return self.device.startswith("cuda")

    @property
    def dtype(self) -> torch.dtype:
        """The ``torch.dtype`` of :attr:`dtype_name`."""
        import torch

        return getattr(torch, self.dtype_name)

    @property
    def torch_dtype(self) -> str:
        """The dtype as the string ``from_pretrained(dtype=...)`` accepts (``"bfloat16"``, ...)."""
        return self.dtype_name

    @property
    def bf16(self) -> bool:
        """``TrainingArguments.bf16``: bf16 mixed precision on a CUDA GPU whose dtype is bfloat16."""
        return self.is_cuda and self.dtype_name == "bfloat16"

    @property
    def fp16(self) -> bool:
        """``TrainingArguments.fp16``: fp16 mixed precision (loss scaling) on a CUDA GPU of compute 7.0 or newer
        whose dtype is float16 (V100, T4; pre-Volta GPUs have no tensor cores and train in float32)."""
        return self.is_cuda and self.dtype_name == "float16" and (self.capability or (0, 0)) >= (7, 0)


def _env_dtype() -> str | None:
    """``COURSE_DTYPE`` validated, or None when unset."""
    value = os.environ.get("COURSE_DTYPE", "").strip()
    if not value or value == "auto":
        return None
    if value not in DTYPES:
        raise CourseError(f"COURSE_DTYPE={value!r} is not a dtype the course uses: choose one of "
                          f"{', '.join(DTYPES)} (or unset it to pick from the GPU)")
    return value


def _requested_device(device: str | None) -> tuple[str | None, str]:
    """``(device or None for automatic, where it came from)``; raises CourseError on a malformed name."""
    source = "device argument"
    if device is None:
        device, source = os.environ.get("COURSE_DEVICE", "").strip() or None, "COURSE_DEVICE"
    if device is None or device == "auto":
        return None, source
    if not _DEVICE_RE.match(device):
        raise CourseError(f"{source} {device!r} is not a device: use cpu, mps, cuda or cuda:N (e.g. cuda:1)")
    return device, source


def _cuda_rule(capability: tuple[int, int], name: str) -> tuple[str, str]:
    """``(dtype_name, reason)`` for a CUDA GPU from its compute capability."""
    where = f"{name} (compute {capability[0]}.{capability[1]})"
    if capability[0] >= 8:
        return "bfloat16", f"{where}: native bf16 -> bfloat16; training uses bf16 mixed precision"
    if capability[0] == 7:
        return "float16", f"{where}: no native bf16 -> float16; training uses fp16 with loss scaling"
    return "float16", (f"{where}: pre-Volta GPU, no bf16 and no tensor cores -> float16 weights to halve the "
                       "memory; training stays in float32")


def choose(device: str | None = None) -> DeviceChoice:
    """The device and dtype to use: ``device`` if given, else ``COURSE_DEVICE``, else CUDA, MPS or CPU in that order;
    the dtype from the GPU's compute capability unless ``COURSE_DTYPE`` forces one.

    Returns a :class:`DeviceChoice`; raises CourseError for a malformed or unavailable device or a bad dtype.
    """
    import torch

    forced = _env_dtype()
    requested, source = _requested_device(device)
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested is not None and requested.startswith("cuda") and not cuda:
        raise CourseError(f"{source} {requested}: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                          "use cpu, or check the driver and CUDA_VISIBLE_DEVICES")
    if requested == "mps" and not mps:
        raise CourseError(f"{source} mps: the Apple MPS backend is not available here; use cpu")
    target = requested or ("cuda" if cuda else "mps" if mps else "cpu")
    capability = gpu_name = gpu_gib = None
    if target.startswith("cuda"):
        index = int(target.partition(":")[2] or 0)
        if index > 0 and index >= torch.cuda.device_count():
            raise CourseError(f"{source} {target}: only {torch.cuda.device_count()} CUDA device(s) visible "
                              "(numbered from 0; CUDA_VISIBLE_DEVICES renumbers them)")
        capability = tuple(torch.cuda.get_device_capability(index))
        gpu_name = torch.cuda.get_device_name(index)
        gpu_gib = round(torch.cuda.get_device_properties(index).total_memory / GIB, 1)
        dtype_name, reason = _cuda_rule(capability, gpu_name)
    elif target == "mps":
        dtype_name, reason = "float32", ("Apple MPS: float32 (fp16 kernels still vary across macOS versions and bf16 "
                                         "needs macOS 14; COURSE_DTYPE=float16 halves the memory for inference)")
    else:
        dtype_name, reason = "float32", "CPU: float32 (no fast half-precision matmul on CPU)"
    if requested is not None:
        reason = f"{source}={requested}; {reason}"
    if forced is not None and forced != dtype_name:
        dtype_name, reason = forced, f"{reason}; COURSE_DTYPE={forced} overrides -> {forced}"
    return DeviceChoice(target, dtype_name, capability, gpu_name, gpu_gib, reason)


def check_fits(need_gib: float, choice: DeviceChoice, what: str, precision: str | None = None) -> float | None:
    """Refuse to start when a CUDA GPU has less free memory than ``need_gib`` (the estimate for ``what`` at
    ``precision``: ``choice.dtype_name`` by default, or ``int8`` / ``int4`` when already quantized).

    Returns the free GiB of the GPU (None off CUDA, where nothing is checked); raises CourseError with both
    numbers and the smaller options (8-bit = half, 4-bit = a quarter of fp16 weights, or a smaller model).
    """
    if not choice.is_cuda:
        return None
    import torch

    precision = precision or choice.dtype_name
    index = int(choice.device.partition(":")[2] or 0)
    free, total = (x / GIB for x in torch.cuda.mem_get_info(index))
    if free >= need_gib:
        return free
    per_byte = need_gib / BYTES[precision]
    options = [f"{flag} (~{per_byte * BYTES[p]:.1f} GiB)" for flag, p in (("--load_in_8bit", "int8"),
                                                                         ("--load_in_4bit", "int4"))
               if BYTES[p] < BYTES[precision]]
    hint = (f"try {' or '.join(options)}, or " if options else "use ") + \
        "a smaller model (e.g. hfl/chinese-alpaca-2-1.3b), or free the GPU (nvidia-smi shows who holds it)"
    gpu = choice.gpu_name or choice.device
    raise CourseError(f"{what} needs ~{need_gib:.1f} GiB of GPU memory ({precision}) but {gpu} has {free:.1f} GiB "
                      f"free of {total:.1f} GiB: {hint}")


def _has_bitsandbytes() -> bool:
    """True when the bitsandbytes package is importable."""
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(bits: int | None, choice: DeviceChoice, flag: str | None = None) -> BitsAndBytesConfig | None:
    """A transformers ``BitsAndBytesConfig`` for ``bits`` 8 or 4 (4-bit: NF4, double quantization, compute dtype
    ``choice.dtype``), or None for ``bits`` None. ``flag`` names the option in messages (default
    ``--load_in_<bits>bit``).

    Raises CourseError off CUDA (bitsandbytes' kernels need a CUDA GPU) or when bitsandbytes is not installed.
    """
    if bits is None:
        return None
    flag = flag or f"--load_in_{bits}bit"
    if bits not in (4, 8):
        raise CourseError(f"{flag}: {bits}-bit loading is not supported; use 8 or 4 (or drop the flag)")
    if not choice.is_cuda:
        where = "CPU" if choice.device == "cpu" else choice.device.upper()
        raise CourseError(f"{flag} needs a CUDA GPU (bitsandbytes); on {where} drop the flag, or run on a "
                          "CUDA machine (Colab T4, AutoDL)")
    if not _has_bitsandbytes():
        raise CourseError(f"{flag} needs bitsandbytes: pip install bitsandbytes=={BITSANDBYTES_VERSION} "
                          "(installed only on GPU machines; the course's CPU environment does not include it)")
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=choice.dtype)


def free_ram() -> tuple[int, int]:
    """``(available RAM, free swap)`` in bytes, from psutil (``available`` already counts the page cache the system
    can drop, e.g. memory-mapped weight files)."""
    import psutil

    return psutil.virtual_memory().available, psutil.swap_memory().free


def check_ram(need_bytes: int, what: str, hint: str = "") -> int:
    """Refuse to start a CPU step that would hold ``need_bytes`` in RAM when the machine cannot give them (available
    RAM + free swap): without this the system kills the process and the learner sees only ``Killed``.

    ``what`` names the step and its input (``"merge of base_dir + 2 LoRA(s)"``); ``hint`` is the step's own way to
    need less (ends with "; "). ``COURSE_SKIP_RAM_CHECK=1`` skips the check (for an estimate that is too cautious).
    Returns the bytes available; raises CourseError with both numbers and what to do (the step's hint, a machine
    with more RAM, or swap).
    """
    ram, swap = free_ram()
    if need_bytes <= ram + swap or os.environ.get("COURSE_SKIP_RAM_CHECK", "").strip() in ("1", "true", "yes"):
        return ram + swap
    raise CourseError(
        f"{what} would hold ~{need_bytes / GIB:.1f} GiB in RAM but this machine has {ram / GIB:.1f} GiB available "
        f"+ {swap / GIB:.1f} GiB free swap: the system would kill it (`Killed`). {hint}close other programs, use a "
        "machine with more RAM, or add swap (slow but it finishes: sudo fallocate -l 16G /swapfile && sudo chmod 600 "
        "/swapfile && sudo mkswap /swapfile && sudo swapon /swapfile); COURSE_SKIP_RAM_CHECK=1 skips this check")
