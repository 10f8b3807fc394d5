"""helpers.train under DeepSpeed on two CPU processes: ZeRO-2 (the seed's config, launched with torchrun like
run_sft.sh), ZeRO-3 and ZeRO-3 + offload (launched with the ``deepspeed`` launcher), resume from a DeepSpeed
checkpoint, and the reload check of every saved adapter.

References independent of the code under test: a single-process run with the same global batch (4 = 2 x 2) gives
the loss curve that data parallelism must reproduce; the adapter is reloaded with PEFT itself; the uninterrupted
ZeRO-2 run is the reference of the resumed one.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import train
from helpers.core import DATA_DIR, REPO_ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                 reason="deepspeed not installed (pip install -e '.[train]')")]
BIN = Path(sys.executable).parent
STEPS = 4


@pytest.fixture(scope="module")
def tiny_set():
    from helpers import tiny

    return {"base": tiny.hf_model(), "alpaca_tok": tiny.merged_tokenizers()["alpaca_hf"]}


def _flags(t, out, **extra) -> list[str]:
    flags = dict(model_name_or_path=t["base"], tokenizer_name_or_path=t["alpaca_tok"],
                 dataset_dir=DATA_DIR / "alpaca_zh_sample.json", output_dir=out, max_seq_length=128,
                 per_device_train_batch_size=2, learning_rate=3e-3, max_steps=STEPS, logging_steps=1, seed=7,
                 lora_dropout=0.0, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    flags.update(extra)
    return train.flags(**flags)


def _env() -> dict:
    # the venv's ninja first: DeepSpeed JIT-builds its CPU shared-memory op once (~1-2 min, cached in
    # ~/.cache/torch_extensions); a different ninja on PATH would rebuild it
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "DS_ACCELERATOR": "cpu",
            "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _torchrun(argv: list[str]) -> None:
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "helpers.train", "sft", *argv],
                          cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _deepspeed(argv: list[str]) -> None:
    proc = subprocess.run([str(BIN / "deepspeed"), "--num_gpus", "2", "--no_local_rank", "--module", "helpers.train",
                           "sft", *argv], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _ranks(out: Path) -> list[dict]:
    return [json.loads((out / "ranks" / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]


def _losses(out: Path) -> list[float]:
    return [v for _, v in train.loss_curve(json.loads((out / "loss_history.json").read_text(encoding="utf-8")))]


@pytest.fixture(scope="module")
def single(tiny_set, tmp_path_factory):
    """The reference: one process, the same global batch (4 = 2 processes x 2)."""
    out = tmp_path_factory.mktemp("single") / "run"
    return train.run("sft", _flags(tiny_set, out, per_device_train_batch_size=4))


@pytest.fixture(scope="module")
def zero2(tiny_set, tmp_path_factory):
    """The seed's launch: torchrun + --deepspeed ds_zero2_no_offload.json, a checkpoint every 2 steps."""
    out = tmp_path_factory.mktemp("zero2") / "run"
    _torchrun(["--deepspeed", str(train.DS_ZERO2)] + _flags(tiny_set, out, save_strategy="steps", save_steps=2))
    return out


def test_zero2_trains_like_one_process(zero2, single):
    ranks = _ranks(zero2)
    assert all(r["world_size"] == 2 and r["deepspeed"] and r["zero_stage"] == 2 and r["global_step"] == STEPS
               for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"] == train.adapter_digest(zero2 / "sft_lora_model")
    # ZeRO-2 = data parallelism with sharded optimizer states: same batches, same gradient as one process
    assert _losses(zero2) == pytest.approx(single.losses, abs=1e-3)
    assert (zero2 / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own checkpoint format inside


def test_zero2_adapter_reloads_with_peft(zero2):
    check = train.reload_check(zero2)
    assert check["max_diff_vs_trained"] < 1e-4 and check["max_diff_vs_base"] > 1e-2, check


def test_zero2_resume_from_deepspeed_checkpoint(zero2, tiny_set, tmp_path):
    part = tmp_path / "part"
    part.mkdir()
    ckpt = shutil.copytree(zero2 / "checkpoint-2", part / "checkpoint-2")
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    for entry in state["log_history"]:  # mark the restored history: a run that starts over would not keep it
        entry["loss"] = 99.0
    (ckpt / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    _torchrun(["--deepspeed", str(train.DS_ZERO2), "--resume_from_checkpoint", str(ckpt)]
              + _flags(tiny_set, part, save_strategy="steps", save_steps=2))
    got = _losses(part)
    assert got[:2] == [99.0, 99.0]  # steps 1-2 restored, not trained again
    assert got[2:] == pytest.approx(_losses(zero2)[2:], abs=1e-5)
    assert train.adapter_digest(part / "sft_lora_model") == train.adapter_digest(zero2 / "sft_lora_model")


@pytest.mark.parametrize("config", [train.DS_ZERO3, train.DS_ZERO3_OFFLOAD], ids=["zero3", "zero3_offload"])
def test_zero3_gathers_weights_and_saves_a_full_adapter(config, tiny_set, single, tmp_path):
    """ZeRO-3 shards every weight: the saved adapter must still hold full tensors (gathered on save)."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    _deepspeed(["--deepspeed", str(config)] + _flags(tiny_set, out, max_steps=2))
    ranks = _ranks(out)
    assert all(r["zero_stage"] == 3 and r["global_step"] == 2 for r in ranks)
    saved = load_file(str(out / "sft_lora_model" / "adapter_model.safetensors"))
    from helpers.tokenizer import load_tokenizer

    embed = [v for k, v in saved.items() if "embed_tokens" in k]
    assert embed and embed[0].shape[0] == len(load_tokenizer(tiny_set["alpaca_tok"])) and all(v.numel() > 0 for v in saved.values())
    assert ranks[0]["digest"] == ranks[1]["digest"] == train.adapter_digest(out / "sft_lora_model")
    assert _losses(out) == pytest.approx(single.losses[:2], abs=1e-3)
    check = train.reload_check(out)
    assert check["max_diff_vs_trained"] < 1e-4 and check["max_diff_vs_base"] > 1e-2, check
