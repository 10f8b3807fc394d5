"""helpers.device: device and dtype from the GPU's compute capability (mocked GPUs), overrides, memory check,
bitsandbytes configs and their errors."""
from types import SimpleNamespace

import pytest
import torch

from helpers import device
from helpers.core import CourseError, pick_device

GIB = 2 ** 30

# NVIDIA's published compute capabilities (developer.nvidia.com/cuda-gpus) and what the course expects of each:
# bf16 is native from Ampere (8.x) on; Volta/Turing (7.x) have fp16 tensor cores only; Pascal (6.x) has neither.
# name, capability, total GiB, dtype, TrainingArguments bf16, TrainingArguments fp16
GPUS = [
    ("Tesla P100-PCIE-16GB", (6, 0), 16.0, "float16", False, False),
    ("Tesla V100-SXM2-16GB", (7, 0), 16.0, "float16", False, True),
    ("Tesla T4", (7, 5), 15.0, "float16", False, True),
    ("NVIDIA A100-SXM4-40GB", (8, 0), 40.0, "bfloat16", True, False),
    ("NVIDIA A10G", (8, 6), 24.0, "bfloat16", True, False),
    ("NVIDIA L4", (8, 9), 24.0, "bfloat16", True, False),
    ("NVIDIA H100 80GB HBM3", (9, 0), 80.0, "bfloat16", True, False),
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.delenv("COURSE_DTYPE", raising=False)


def fake_gpu(monkeypatch, name="Tesla T4", capability=(7, 5), total_gib=15.0, free_gib=None, count=1):
    """Make torch.cuda report ``count`` GPUs like ``name``; returns the list of device indices queried."""
    asked = []

    def capability_of(index=None):
        asked.append(index)
        return capability

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index=None: SimpleNamespace(name=name, total_memory=int(total_gib * GIB),
                                                           major=capability[0], minor=capability[1]))
    free = total_gib if free_gib is None else free_gib
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (int(free * GIB), int(total_gib * GIB)))
    return asked


def no_gpu(monkeypatch, mps=False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("name,capability,total,dtype,bf16,fp16", GPUS, ids=[g[0] for g in GPUS])
def test_dtype_follows_the_compute_capability(monkeypatch, name, capability, total, dtype, bf16, fp16):
    fake_gpu(monkeypatch, name, capability, total)
    c = device.choose()
    assert (c.device, c.dtype_name, c.bf16, c.fp16) == ("cuda", dtype, bf16, fp16)
    assert (c.capability, c.gpu_name, c.gpu_gib) == (capability, name, total)
    assert c.dtype is getattr(torch, dtype) and c.torch_dtype == dtype
    assert name in c.reason and f"compute {capability[0]}.{capability[1]}" in c.reason and dtype in c.reason
    assert ("fp16 with loss scaling" in c.reason) == fp16 and ("bf16 mixed precision" in c.reason) == bf16
    assert pick_device() == "cuda"


def test_t4_is_not_fooled_by_emulated_bf16(monkeypatch):
    """torch.cuda.is_bf16_supported() is True on a T4 (emulation): the choice must not use it."""
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    c = device.choose()
    assert c.dtype_name == "float16" and c.fp16 and not c.bf16
    assert "loss scaling" in c.reason


def test_no_gpu_is_cpu_float32(monkeypatch):
    no_gpu(monkeypatch)
    c = device.choose()
    assert (c.device, c.dtype_name, c.bf16, c.fp16, c.capability, c.gpu_name) == ("cpu", "float32", False, False,
                                                                                   None, None)
    assert c.dtype is torch.float32 and pick_device() == "cpu"


def test_mps_is_float32(monkeypatch):
    no_gpu(monkeypatch, mps=True)
    c = device.choose()
    assert (c.device, c.dtype_name, c.bf16, c.fp16) == ("mps", "float32", False, False)
    assert "COURSE_DTYPE=float16" in c.reason


def test_course_device_cpu_overrides_a_present_gpu(monkeypatch):
    asked = fake_gpu(monkeypatch)
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    c = device.choose()
    assert (c.device, c.dtype_name, c.fp16, c.capability) == ("cpu", "float32", False, None)
    assert "COURSE_DEVICE=cpu" in c.reason and asked == []
    assert pick_device() == "cpu"
    assert device.choose("cuda").device == "cuda"  # an explicit argument wins over the environment


def test_second_gpu_is_the_one_asked(monkeypatch):
    asked = fake_gpu(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0), 40.0, count=2)
    names, sizes = ["NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB"], [40.0, 80.0]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: names[index])
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index=None: SimpleNamespace(total_memory=int(sizes[index] * GIB)))
    c = device.choose("cuda:1")
    assert (c.device, c.dtype_name, c.gpu_name, c.gpu_gib) == ("cuda:1", "bfloat16", names[1], 80.0)
    assert asked == [1]
    with pytest.raises(CourseError, match="cuda:2"):
        device.choose("cuda:2")


def test_bad_or_missing_devices_are_clear_errors(monkeypatch):
    no_gpu(monkeypatch)
    monkeypatch.setenv("COURSE_DEVICE", "gpu")
    with pytest.raises(CourseError, match="COURSE_DEVICE 'gpu'.*cpu, mps, cuda"):
        device.choose()
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(CourseError, match="COURSE_DEVICE cuda: no CUDA GPU"):
        device.choose()
    with pytest.raises(CourseError, match="mps"):
        device.choose("mps")


def test_course_dtype_forces_and_is_validated(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    monkeypatch.setenv("COURSE_DTYPE", "float32")
    c = device.choose()
    assert (c.device, c.dtype_name, c.fp16, c.bf16) == ("cuda", "float32", False, False)
    assert "COURSE_DTYPE=float32" in c.reason
    monkeypatch.setenv("COURSE_DTYPE", "fp16")
    with pytest.raises(CourseError) as e:
        device.choose()
    assert "COURSE_DTYPE" in str(e.value) and all(d in str(e.value) for d in ("bfloat16", "float16", "float32"))


def test_check_fits_gives_both_numbers_and_the_smaller_options(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), total_gib=15.0, free_gib=14.0)
    c = device.choose()
    assert device.check_fits(13.0, c, "--base_model chinese-alpaca-2-7b") == pytest.approx(14.0)
    with pytest.raises(CourseError) as e:
        device.check_fits(16.0, c, "--base_model chinese-alpaca-2-13b")
    msg = str(e.value)
    # 16 GiB of fp16 weights: 8-bit is half (8 GiB), 4-bit a quarter (4 GiB)
    for part in ("--base_model chinese-alpaca-2-13b", "16.0 GiB", "14.0 GiB free", "15.0 GiB", "Tesla T4",
                 "--load_in_8bit (~8.0 GiB)", "--load_in_4bit (~4.0 GiB)", "smaller model"):
        assert part in msg, (part, msg)
    with pytest.raises(CourseError) as e:  # already 8-bit: only 4-bit is smaller (8 GiB int8 -> 4 GiB int4)
        device.check_fits(16.0, c, "the model", precision="int8")
    assert "--load_in_4bit (~8.0 GiB)" in str(e.value) and "--load_in_8bit" not in str(e.value)


def test_check_fits_skips_the_cpu(monkeypatch):
    no_gpu(monkeypatch)
    assert device.check_fits(1e6, device.choose(), "anything") is None


@pytest.mark.parametrize("bits", [4, 8])
def test_quantization_on_cpu_names_the_flag(monkeypatch, bits):
    no_gpu(monkeypatch)
    with pytest.raises(CourseError, match=f"--load_in_{bits}bit needs a CUDA GPU.*on CPU drop the flag"):
        device.quantization_config(bits, device.choose())
    assert device.quantization_config(None, device.choose()) is None


def test_missing_bitsandbytes_says_what_to_install(monkeypatch):
    fake_gpu(monkeypatch)
    monkeypatch.setattr(device, "_has_bitsandbytes", lambda: False)
    with pytest.raises(CourseError, match=r"--load_in_4bit needs bitsandbytes: pip install bitsandbytes==\d+\.\d+"):
        device.quantization_config(4, device.choose())


def test_bitsandbytes_configs(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    monkeypatch.setattr(device, "_has_bitsandbytes", lambda: True)
    c = device.choose()
    q4 = device.quantization_config(4, c)
    assert q4.load_in_4bit and not q4.load_in_8bit
    assert (q4.bnb_4bit_quant_type, q4.bnb_4bit_use_double_quant, q4.bnb_4bit_compute_dtype) == ("nf4", True,
                                                                                                   torch.float16)
    q8 = device.quantization_config(8, c)
    assert q8.load_in_8bit and not q8.load_in_4bit
    with pytest.raises(CourseError, match="3-bit"):
        device.quantization_config(3, c)


def fake_ram(monkeypatch, available_gib, swap_gib=0.0):
    """Make psutil report ``available_gib`` of available RAM and ``swap_gib`` of free swap."""
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=int(available_gib * GIB),
                                                                          total=int(64 * GIB)))
    monkeypatch.setattr(psutil, "swap_memory", lambda: SimpleNamespace(free=int(swap_gib * GIB)))


def test_check_ram_refuses_with_both_numbers_and_what_to_do(monkeypatch):
    monkeypatch.delenv("COURSE_SKIP_RAM_CHECK", raising=False)
    fake_ram(monkeypatch, 3.0, 1.0)
    with pytest.raises(CourseError) as e:
        device.check_ram(int(4.5 * GIB), "merge of base + 1 LoRA(s)", "use smaller shards; ")
    msg = str(e.value)
    assert msg.startswith("merge of base + 1 LoRA(s) would hold ~4.5 GiB in RAM")
    assert "3.0 GiB available + 1.0 GiB free swap" in msg and "Killed" in msg
    assert "use smaller shards; " in msg and "more RAM" in msg and "swapon" in msg
    assert device.check_ram(4 * GIB, "x") == 4 * GIB  # RAM + swap is enough: exactly the need passes


def test_check_ram_can_be_skipped(monkeypatch):
    fake_ram(monkeypatch, 0.5)
    monkeypatch.setenv("COURSE_SKIP_RAM_CHECK", "1")
    assert device.check_ram(100 * GIB, "x") == int(0.5 * GIB)
