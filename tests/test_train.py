"""helpers.train: seed flags, vocabulary checks, QLoRA guard, PT + SFT runs, resume, --peft_path, 2-process DDP."""
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import train
from helpers.core import DATA_DIR, REPO_ROOT, CourseError


@pytest.fixture(scope="module")
def tiny_set():
    from helpers import tiny

    toks = tiny.merged_tokenizers()
    return {"base": tiny.hf_model(), "llama_tok": toks["llama_hf"], "alpaca_tok": toks["alpaca_hf"],
            **{f"lora_{k}": v for k, v in tiny.lora_adapters().items()}}


def _sft_flags(t, out, **extra):
    flags = dict(model_name_or_path=t["base"], tokenizer_name_or_path=t["alpaca_tok"],
                 dataset_dir=DATA_DIR / "alpaca_zh_sample.json", output_dir=out, max_seq_length=128,
                 per_device_train_batch_size=4, learning_rate=3e-3, max_steps=6, logging_steps=1, seed=7,
                 lora_dropout=0.0, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    flags.update(extra)
    return flags


# seed 002, run_sft.sh (minus --deepspeed, tested below): every flag must parse
SEED_SFT = """--model_name_or_path M --tokenizer_name_or_path T --dataset_dir D --validation_split_percentage 0.001
--per_device_train_batch_size 1 --per_device_eval_batch_size 1 --do_train --do_eval --seed 123 --max_steps 10
--lr_scheduler_type cosine --learning_rate 1e-4 --warmup_ratio 0.03 --weight_decay 0 --logging_strategy steps
--logging_steps 10 --save_strategy steps --save_total_limit 3 --evaluation_strategy steps --eval_steps 250
--save_steps 500 --gradient_accumulation_steps 1 --preprocessing_num_workers 8 --max_seq_length 512 --output_dir O
--overwrite_output_dir --ddp_timeout 30000 --logging_first_step True --lora_rank 8 --lora_alpha 32
--trainable q_proj,v_proj --modules_to_save embed_tokens,lm_head --lora_dropout 0.05 --torch_dtype float16
--validation_file V --gradient_checkpointing --ddp_find_unused_parameters False --peft_path P""".split()


def test_seed_flags_parse():
    m, d, lo, t = train.parse_args(SEED_SFT)
    assert (m.model_name_or_path, m.tokenizer_name_or_path, m.torch_dtype) == ("M", "T", "float16")
    assert (d.dataset_dir, d.max_seq_length, d.validation_file, d.validation_split_percentage) == ("D", 512, "V", 0.001)
    assert (lo.lora_rank, lo.lora_alpha, lo.lora_dropout, lo.trainable) == (8, 32.0, 0.05, "q_proj,v_proj")
    assert lo.modules_to_save == "embed_tokens,lm_head" and lo.peft_path == "P" and lo.overwrite_output_dir
    assert t.warmup_steps == 0.03 and t.eval_strategy == "steps" and t.eval_steps == 250
    assert t.gradient_checkpointing and t.max_steps == 10 and t.save_total_limit == 3 and t.ddp_timeout == 30000
    _, _, _, t2 = train.parse_args(["--dataset_dir", "D", "--model_name_or_path", "M", "--output_dir", "O",
                                    "--group_by_length", "--lora_trainable", "q_proj"])
    assert t2.train_sampling_strategy == "group_by_length"
    with pytest.raises(CourseError, match="--output_dir"):
        train.parse_args(["--dataset_dir", "D", "--model_name_or_path", "M"])


def test_deepspeed_flag_and_config():
    cfg = json.loads(train.DS_ZERO2.read_text(encoding="utf-8"))
    assert cfg["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in cfg["zero_optimization"]
    assert cfg["train_micro_batch_size_per_gpu"] == "auto"
    cmd = train.launch_command("sft", 2, model_name_or_path="M", output_dir="O")
    assert cmd.startswith("torchrun --nnodes 1 --nproc_per_node 2 -m helpers.train sft")
    assert "--deepspeed helpers/assets/ds_zero2_no_offload.json" in cmd and "--output_dir O" in cmd
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(CourseError, match="deepspeed"):
            train.parse_args(SEED_SFT + ["--deepspeed", str(train.DS_ZERO2)])


def test_library_signatures_have_the_arguments_we_pass():
    """Drift guard: an upgrade that renames these keyword arguments must fail here, not in class."""
    from peft import LoraConfig, PeftModel
    from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

    ta = set(inspect.signature(TrainingArguments).parameters)
    assert {"warmup_steps", "eval_strategy", "train_sampling_strategy", "use_cpu", "ddp_backend", "deepspeed",
            "resume_from_checkpoint", "gradient_checkpointing", "logging_first_step", "ddp_timeout"} <= ta
    assert {"task_type", "target_modules", "r", "lora_alpha", "lora_dropout", "modules_to_save",
            "inference_mode"} <= set(inspect.signature(LoraConfig).parameters)
    assert {"is_trainable"} <= set(inspect.signature(PeftModel.from_pretrained).parameters)
    assert {"data_collator", "processing_class", "eval_dataset"} <= set(inspect.signature(Trainer).parameters)
    assert {"return_position_ids", "separator_id"} <= set(inspect.signature(DataCollatorWithFlattening).parameters)


def test_vocab_checks_explain_the_pairing(tiny_set, capsys):
    from helpers.tokenizer import load_tokenizer

    n_llama = len(load_tokenizer(tiny_set["llama_tok"]))
    n_alpaca = len(load_tokenizer(tiny_set["alpaca_tok"]))
    assert n_alpaca == n_llama + 1
    assert train.adapter_vocab_size(tiny_set["lora_alpaca"]) == n_alpaca
    assert "resized 1000" in train.check_vocab(1000, n_alpaca, "A", "B", tiny_set["lora_alpaca"])
    with pytest.raises(CourseError) as e:  # Alpaca LoRA with the LLaMA tokenizer: the classic mistake
        train.check_vocab(1000, n_llama, str(tiny_set["llama_tok"]), "base", str(tiny_set["lora_alpaca"]))
    msg = str(e.value)
    assert f"{n_alpaca}-token" in msg and "Chinese-Alpaca tokenizer" in msg and str(tiny_set["lora_alpaca"]) in msg
    with pytest.raises(CourseError, match="smaller vocabulary"):
        train.check_vocab(n_alpaca, n_llama, "llama_tok", "alpaca_model")
    # the CLI refuses up front (before loading weights or data), exit 2
    argv = ["sft"] + train.flags(**_sft_flags(tiny_set, "/tmp/never", tokenizer_name_or_path=tiny_set["llama_tok"],
                                              peft_path=tiny_set["lora_alpaca"]))
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{n_alpaca}-token" in err and "Traceback" not in err
    assert train.main(["sft"] + train.flags(**_sft_flags(tiny_set, "/tmp/never", model_name_or_path="/no/such"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "/no/such" in err and "Traceback" not in err
    assert train.main(["train"]) == 2  # unknown stage: usage, exit 2
    assert "usage: python -m helpers.train {pt,sft}" in capsys.readouterr().err


def test_qlora_needs_cuda(tiny_set, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("GPU machine: QLoRA is available")
    with pytest.raises(CourseError, match="CUDA GPU"):
        train.train("sft", **_sft_flags(tiny_set, tmp_path / "q", load_in_kbits=4))


def test_sft_trains_saves_and_generates(tiny_set, tmp_path):
    from helpers.generation import generate
    from helpers.modeling import load_model
    from helpers.prompts import build_prompt

    res = train.train("sft", **_sft_flags(tiny_set, tmp_path / "sft", max_steps=10))
    assert res.losses[-1] < res.losses[0] - 0.3, res.losses
    files = {p.name for p in res.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer.model"} <= files
    cfg = json.loads((res.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert cfg["r"] == 8 and set(cfg["target_modules"]) == set(train.DEFAULT_TRAINABLE.split(","))
    assert set(cfg["modules_to_save"]) == {"embed_tokens", "lm_head"}
    rank0 = json.loads((res.output_dir / "ranks" / "rank0.json").read_text(encoding="utf-8"))
    assert rank0["digest"] == train.adapter_digest(res.adapter_dir) and rank0["global_step"] == 10
    assert res.data_stats["records"] == 139 and res.data_stats["truncated"] > 0
    history = json.loads((res.output_dir / "loss_history.json").read_text(encoding="utf-8"))
    ax = train.plot_loss(history)
    assert len(ax.lines[0].get_xdata()) == 10
    model, tok = load_model(tiny_set["base"], res.adapter_dir, device="cpu")
    out = generate(model, tok, [build_prompt("你好", None)], max_new_tokens=5, do_sample=False)
    assert len(out) == 1 and isinstance(out[0], str)
    # same output folder again: refused without --overwrite_output_dir
    with pytest.raises(CourseError, match="overwrite_output_dir"):
        train.train("sft", **_sft_flags(tiny_set, tmp_path / "sft"))


def test_pt_blocks_train(tiny_set, tmp_path):
    res = train.train("pt", model_name_or_path=tiny_set["base"], tokenizer_name_or_path=tiny_set["llama_tok"],
                      dataset_dir=DATA_DIR / "pt_sample.txt", output_dir=tmp_path / "pt", block_size=64,
                      per_device_train_batch_size=4, learning_rate=3e-3, max_steps=8, logging_steps=1,
                      lora_dropout=0.0, save_strategy="no", disable_tqdm=True, data_cache_dir=tmp_path / "cache",
                      validation_split_percentage=0.1, do_eval=True, eval_strategy="steps", eval_steps=4)
    assert res.adapter_dir.name == "pt_lora_model"
    assert res.losses[-1] < res.losses[0]
    assert "eval_loss" in res.metrics and any("eval_loss" in e for e in res.log_history)
    assert res.data_stats["max_seq_length"] == 64 and any((tmp_path / "cache").iterdir())


def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_set, tmp_path):
    full = train.train("sft", **_sft_flags(tiny_set, tmp_path / "full", save_strategy="steps", save_steps=3))
    part = tmp_path / "part"
    part.mkdir()
    ckpt = shutil.copytree(full.output_dir / "checkpoint-3", part / "checkpoint-3")
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    for entry in state["log_history"]:  # mark the restored history: a run that starts over would not keep it
        entry["loss"] = 99.0
    (ckpt / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    resumed = train.train("sft", **_sft_flags(tiny_set, part, save_strategy="steps", save_steps=3,
                                              resume_from_checkpoint=ckpt))
    want = train.loss_curve(full.log_history)
    got = train.loss_curve(resumed.log_history)
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in got[:3]] == [99.0] * 3  # steps 1-3 were restored, not trained again
    assert [v for _, v in got[3:]] == pytest.approx([v for _, v in want[3:]], abs=1e-4)
    assert train.adapter_digest(resumed.adapter_dir) == train.adapter_digest(full.adapter_dir)


def test_continue_existing_adapter_with_peft_path(tiny_set, tmp_path):
    """Scenario 7.1.1 of seed 002: keep training Chinese-Alpaca-LoRA (its tokenizer, its LoRA settings)."""
    res = train.train("sft", **_sft_flags(tiny_set, tmp_path / "cont", peft_path=tiny_set["lora_alpaca"],
                                          lora_rank=2, max_steps=2))
    cfg = json.loads((res.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert cfg["r"] == 8  # taken from the adapter, not from --lora_rank
    assert train.adapter_digest(res.adapter_dir) != train.adapter_digest(tiny_set["lora_alpaca"])


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tiny_set, tmp_path):
    """Real data parallelism: 2 ranks (gloo), both finish, their LoRA weights and the saved adapter agree."""
    out = tmp_path / "ddp"
    argv = train.flags(**_sft_flags(tiny_set, out, max_steps=3, per_device_train_batch_size=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "helpers.train", "sft", *argv],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["global_step"] == 3 for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"] == train.adapter_digest(out / "sft_lora_model")


def test_lora_budget_matches_known_model_sizes():
    from helpers import catalog

    # first-generation Chinese-LLaMA-7B: LLaMA-7B's shapes with the 49953-piece vocabulary
    first_gen = dict(catalog.get("hfl/chinese-llama-2-7b").config, vocab_size=49953)
    seven = train.lora_budget(first_gen)
    assert 6.8 < seven["params_b"] < 7.0  # LLaMA-7B (6.74 B) + 2 x 17953 x 4096 Chinese embedding rows = 6.89 B
    # rank 8 on 7 projections: 32 layers x 8 x (4 x 2 x 4096 + 3 x (4096 + 11008)) = 19.99 M
    assert 19.9 < seven["trainable_m"] - 2 * 49953 * 4096 / 1e6 < 20.1 and seven["weights_gb"] > 12
    lora_only = train.lora_budget(first_gen, kbits=4, train_embeddings=False)
    assert lora_only["total_gb"] < seven["total_gb"] / 4 and 19.9 < lora_only["trainable_m"] < 20.1
    assert train.lora_budget("hfl/chinese-llama-2-1.3b")["params_b"] == 1.26  # the table's 1.3B: 4 layers


def test_trainer_feeds_packed_batches_to_the_model(tiny_set, tmp_path, monkeypatch):
    """With --packing flatten the model sees one row, restarting position_ids, no mask and no KV cache."""
    import transformers.models.llama.modeling_llama as ml

    seen = []
    original = ml.LlamaModel.forward

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("position_ids"), kwargs.get("attention_mask"), self.config.use_cache))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ml.LlamaModel, "forward", spy)
    train.train("sft", **_sft_flags(tiny_set, tmp_path / "spy", max_steps=1, packing="flatten"))
    pos, mask, use_cache = seen[0]
    assert pos.shape[0] == 1 and mask is None and use_cache is False
    assert int((pos[0] == 0).sum()) == 4  # 4 examples per device batch, each restarting at position 0


def _t4():
    from helpers.device import DeviceChoice

    return DeviceChoice("cuda", "float16", (7, 5), "Tesla T4", 15.0, "mocked T4")


MINIMAL = ["--model_name_or_path", "M", "--dataset_dir", "D", "--output_dir", "O"]


def test_mixed_precision_follows_the_device_choice(monkeypatch):
    """A T4 (compute 7.5) trains with fp16 + loss scaling, never emulated bf16; Ampere+ with bf16; the CPU with
    neither; what the command line says wins."""
    from helpers.device import DeviceChoice

    a100 = DeviceChoice("cuda", "bfloat16", (8, 0), "NVIDIA A100", 40.0, "mocked A100")
    p100 = DeviceChoice("cuda", "float16", (6, 0), "Tesla P100", 16.0, "mocked P100")
    cpu = DeviceChoice("cpu", "float32")
    assert train.precision_flags(MINIMAL, _t4()) == ["--fp16", "True"]
    assert train.precision_flags(MINIMAL, a100) == ["--bf16", "True"]
    assert train.precision_flags(MINIMAL, p100) == []  # pre-Volta: float32 training
    assert train.precision_flags(MINIMAL + ["--torch_dtype", "bfloat16"], _t4()) == ["--bf16", "True"]
    assert train.precision_flags(MINIMAL + ["--torch_dtype=float16"], a100) == ["--fp16", "True"]
    assert train.precision_flags(MINIMAL + ["--fp16", "False"], _t4()) == []
    assert train.precision_flags(MINIMAL + ["--bf16"], _t4()) == []
    monkeypatch.setattr(train, "_cuda", lambda: False)
    assert train.precision_flags(MINIMAL, cpu) == []
    monkeypatch.setattr(train, "_cuda", lambda: True)  # COURSE_DEVICE=cpu on a GPU machine: the Trainer must obey
    assert train.precision_flags(MINIMAL, cpu) == ["--use_cpu", "True"]


def test_t4_passes_fp16_to_training_arguments(monkeypatch):
    monkeypatch.setattr(train, "choose", lambda device=None: _t4())
    *_, t = train.parse_args(MINIMAL)
    assert t.fp16 is True and t.bf16 is False and t.mixed_precision == "fp16"
    *_, t = train.parse_args(MINIMAL + ["--fp16", "False"])
    assert t.fp16 is False and t.bf16 is False


def test_fp16_training_keeps_trainable_weights_float32(tiny_set, monkeypatch, tmp_path):
    """fp16 base (from the T4 choice), but every trainable tensor float32: torch's GradScaler refuses fp16 grads."""
    import torch

    from helpers.tokenizer import load_tokenizer

    monkeypatch.setattr(train, "choose", lambda device=None: _t4())
    m, _, lo, t = train.parse_args(train.flags(**_sft_flags(tiny_set, tmp_path / "o")))
    assert t.fp16 and m.torch_dtype == "auto"
    model, _ = train.build_model(m, lo, t, load_tokenizer(tiny_set["alpaca_tok"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.float16}  # the base really is half precision
    for p in trainable:
        p.grad = torch.ones_like(p)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.tensor(1.0))
    scaler.unscale_(torch.optim.SGD(trainable, lr=0.1))  # raises "Attempting to unscale FP16 gradients" otherwise
    assert {p.dtype for p in trainable} == {torch.float32}
