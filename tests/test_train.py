"""helpers.train: seed flags, vocabulary checks, QLoRA guard, PT + SFT runs, resume, --peft_path, 2-process DDP."""
import functools
import importlib.util
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
    # a checkpoint of another run (other batch size and LoRA rank): refused before training, naming both
    with pytest.raises(CourseError) as e:
        train.train("sft", **_sft_flags(tiny_set, tmp_path / "other", save_strategy="steps", save_steps=3,
                                        per_device_train_batch_size=2, lora_rank=4, resume_from_checkpoint=ckpt))
    msg = str(e.value)
    assert "--per_device_train_batch_size: checkpoint 4, now 2" in msg and "--lora_rank: checkpoint 8, now 4" in msg
    assert "--seed" not in msg and not (tmp_path / "other" / "sft_lora_model").exists()


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


# ----------------------------------------------------------------------------- issue 16: DeepSpeed, scripts, init
def _ds_config(tmp_path, **over) -> Path:
    cfg = json.loads(train.DS_ZERO2.read_text(encoding="utf-8"))
    for key, value in over.items():
        if key == "zero":
            cfg["zero_optimization"] = value
        else:
            cfg[key] = value
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def test_deepspeed_config_contradicting_the_flags_is_refused_up_front(tmp_path, monkeypatch):
    argv = MINIMAL + ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "4"]
    for name in ("ds_zero2_no_offload.json", "ds_zero3.json", "ds_zero3_offload.json"):  # shipped configs pass
        train.check_deepspeed_config(train.ASSETS / name, argv, world_size=2)
    # train_batch_size = micro 2 x accumulation 4 x 2 processes = 16, hand-computed
    train.check_deepspeed_config(_ds_config(tmp_path, train_batch_size=16), argv, world_size=2)
    with pytest.raises(CourseError) as e:
        train.check_deepspeed_config(_ds_config(tmp_path, train_batch_size=16), argv, world_size=1)
    assert "train_batch_size is 16" in str(e.value) and "--per_device_train_batch_size 2" in str(e.value)
    assert "--gradient_accumulation_steps 4" in str(e.value) and "= 8" in str(e.value)
    with pytest.raises(CourseError, match="train_micro_batch_size_per_gpu is 4 but --per_device_train_batch_size is 2"):
        train.check_deepspeed_config(_ds_config(tmp_path, train_micro_batch_size_per_gpu=4), argv)
    with pytest.raises(CourseError, match="gradient_accumulation_steps is 1 but --gradient_accumulation_steps is 4"):
        train.check_deepspeed_config(_ds_config(tmp_path, gradient_accumulation_steps=1), argv)
    # flags left at the TrainingArguments defaults (micro 8, accumulation 1)
    with pytest.raises(CourseError, match="--per_device_train_batch_size 8"):
        train.check_deepspeed_config(_ds_config(tmp_path, train_batch_size=4), MINIMAL, world_size=1)
    with pytest.raises(CourseError, match="stage3_gather_16bit_weights_on_model_save"):
        train.check_deepspeed_config(_ds_config(tmp_path, zero={"stage": 3}), argv)
    with pytest.raises(CourseError, match="min_loss_scale is 1e-10"):  # the seed's original value
        train.check_deepspeed_config(_ds_config(tmp_path, fp16={"enabled": "auto", "min_loss_scale": 1e-10}), argv)
    with pytest.raises(CourseError, match="file not found"):
        train.check_deepspeed_config(tmp_path / "nope.json", argv)
    # through the CLI: exit 2, the message names the flag, before any weight is loaded
    if importlib.util.find_spec("deepspeed") is not None:
        monkeypatch.setenv("WORLD_SIZE", "2")
        bad = _ds_config(tmp_path, train_batch_size=3)
        with pytest.raises(CourseError, match="train_batch_size is 3"):
            train.parse_args(argv + ["--deepspeed", str(bad)])


def _dry_run(script: str, **env) -> list[str]:
    """The command a script would run (DRY_RUN=1), one argument per element."""
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / script)], capture_output=True, text=True,
                          env={**os.environ, "DRY_RUN": "1", "SEED": "123", **env}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _flag_names(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


# the flags of the seed's commands, copied from the seed text (002 step 7: 7.1.1 and 7.1.2) and from the original
# project's scripts/training/run_pt.sh that seed 002 step 6 points to
SEED_COMMON = set("""--deepspeed --model_name_or_path --tokenizer_name_or_path --dataset_dir --validation_split_percentage
--per_device_train_batch_size --per_device_eval_batch_size --do_train --seed --lr_scheduler_type --learning_rate
--warmup_ratio --weight_decay --logging_strategy --logging_steps --save_strategy --save_total_limit --save_steps
--gradient_accumulation_steps --preprocessing_num_workers --output_dir --overwrite_output_dir --ddp_timeout
--logging_first_step --lora_dropout --torch_dtype --ddp_find_unused_parameters""".split())
SEED_SFT_711 = SEED_COMMON | {"--do_eval", "--max_steps", "--evaluation_strategy", "--eval_steps", "--max_seq_length",
                              "--validation_file", "--peft_path"}
SEED_SFT_712 = (SEED_SFT_711 - {"--peft_path"}) | {"--lora_rank", "--lora_alpha", "--trainable", "--modules_to_save",
                                                  "--gradient_checkpointing"}
SEED_PT = SEED_COMMON | {"--data_cache_dir", "--num_train_epochs", "--block_size", "--lora_rank", "--lora_alpha",
                         "--trainable", "--modules_to_save", "--gradient_checkpointing"}


@pytest.mark.parametrize("script,env,want", [
    ("run_sft.sh", {"SCENARIO": "continue_alpaca", "VALIDATION_FILE": "V"}, SEED_SFT_711),
    ("run_sft.sh", {"SCENARIO": "new_lora", "VALIDATION_FILE": "V"}, SEED_SFT_712),
    ("run_pt.sh", {}, SEED_PT)], ids=["sft_7.1.1", "sft_7.1.2", "pt"])
def test_seed_scripts_have_every_flag_and_parse(script, env, want):
    assert subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / script)]).returncode == 0
    cmd = _dry_run(script, **env)
    stage = "sft" if "sft" in script else "pt"
    head = cmd.index("helpers.train")
    assert cmd[:head + 1] == ["torchrun", "--nnodes", "1", "--nproc_per_node", "1", "-m", "helpers.train"]
    assert cmd[head + 1] == stage and _flag_names(cmd[head + 2:]) == want  # the seed's flags, no more, no fewer
    argv = cmd[head + 2:]
    if importlib.util.find_spec("deepspeed") is None:
        argv = argv[2:]  # without deepspeed parse the rest (the --deepspeed refusal is tested above)
    m, d, lo, t = train.parse_args(argv)  # a flag helpers.train renamed or dropped fails here
    assert t.seed == 123 and t.ddp_timeout == 30000 and t.save_total_limit == 3 and m.torch_dtype == "float16"
    assert d.preprocessing_num_workers == 8 and t.logging_first_step
    if stage == "sft" and env["SCENARIO"] == "continue_alpaca":
        assert lo.peft_path and not t.gradient_checkpointing
    else:
        assert lo.modules_to_save == "embed_tokens,lm_head" and t.gradient_checkpointing


def test_run_pt_script_trains_the_tiny_model(tiny_set, tmp_path):
    """One real (1-process, 2-step) run through scripts/run_pt.sh."""
    out = tmp_path / "pt"
    env = {**os.environ, "MODEL": str(tiny_set["base"]), "TOKENIZER": str(tiny_set["llama_tok"]),
           "DATASET_DIR": str(DATA_DIR / "pt_sample.txt"), "DATA_CACHE": str(tmp_path / "cache"),
           "OUTPUT_DIR": str(out), "MAX_STEPS": "2", "BLOCK_SIZE": "64", "TORCH_DTYPE": "float32",
           "DEEPSPEED_CONFIG": "", "PREPROCESSING_NUM_WORKERS": "2", "SEED": "1", "OMP_NUM_THREADS": "1",
           "TORCHRUN": str(Path(sys.executable).with_name("torchrun")), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "run_pt.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "pt_lora_model" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "ranks" / "rank0.json").read_text(encoding="utf-8"))["global_step"] == 2


def test_new_embedding_rows_mean_or_random(tiny_set, tmp_path):
    """--embedding_init mean: every new row of embed_tokens and lm_head is the mean of the base's rows (computed
    here from the base file); random: rows drawn like fresh weights (std = initializer_range), old rows kept."""
    import torch
    from safetensors.torch import load_file

    from helpers.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_set["llama_tok"])
    base = load_file(str(Path(tiny_set["base"]) / "model.safetensors"))
    old_emb, old_head = base["model.embed_tokens.weight"], base["lm_head.weight"]
    n_old = old_emb.shape[0]
    for init in ("mean", "random"):
        m, _, lo, t = train.parse_args(train.flags(**_sft_flags(tiny_set, tmp_path / init, embedding_init=init)))
        model, note = train.build_model(m, lo, t, tok)
        assert f"new rows: {init}" in note
        base_model = model.get_base_model()
        emb = base_model.get_input_embeddings().weight.detach()
        head = base_model.get_output_embeddings().weight.detach()
        assert emb.shape[0] == len(tok) > n_old and torch.equal(emb[:n_old], old_emb)
        if init == "mean":
            assert torch.allclose(emb[n_old:], old_emb.mean(0).expand_as(emb[n_old:]), atol=1e-6)
            assert torch.allclose(head[n_old:], old_head.mean(0).expand_as(head[n_old:]), atol=1e-6)
        else:
            std = base_model.config.initializer_range
            assert abs(float(emb[n_old:].std()) - std) < 0.2 * std
            assert not torch.allclose(head[n_old:], old_head.mean(0).expand_as(head[n_old:]), atol=1e-3)


def _sft_with_pid(items, tokenizer):
    from helpers import data

    ds, stats = data.tokenize_sft(items, tokenizer, max_seq_length=128)
    stats.extra["pids"] = [os.getpid()]
    return ds, stats


def test_preprocessing_num_workers_tokenizes_in_parallel_with_the_same_result(tiny_set):
    """--preprocessing_num_workers 3: three processes, and the same SFT dataset as one process (records are
    independent); PT shards each drop their own tail, like the original's map(group_texts, num_proc=...)."""
    from helpers import data
    from helpers.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_set["alpaca_tok"])
    records = data.load_sft_records(DATA_DIR / "alpaca_zh_sample.json")
    serial, s_stats = data.tokenize_sft(records, tok, max_seq_length=128)
    ds, stats = train.tokenize_in_shards(functools.partial(_sft_with_pid, tokenizer=tok), records, 3)
    pids = stats.extra.pop("pids")
    assert len(set(pids)) == 3 and os.getpid() not in pids  # three worker processes
    assert ds["input_ids"] == serial["input_ids"] and ds["labels"] == serial["labels"]
    assert stats.as_dict() == s_stats.as_dict()
    texts = data.load_pt_texts(DATA_DIR / "pt_sample.txt")
    blocks, pt_stats = train.tokenize_in_shards(lambda t: data.tokenize_pt(t, tok, 64), texts, 1)
    assert blocks["input_ids"] == data.tokenize_pt(texts, tok, 64)[0]["input_ids"]
    d = train.DataArguments(dataset_dir=str(DATA_DIR / "pt_sample.txt"), block_size=64, preprocessing_num_workers=2)
    two, _, two_stats = train.build_datasets("pt", d, tok, seed=0)
    ids = tok(texts)["input_ids"]
    half = -(-len(texts) // 2)  # hand-computed: each half's tokens // 64 blocks
    want = sum(sum(len(x) for x in part) // 64 for part in (ids[:half], ids[half:]))
    assert len(two) == two_stats.kept == want and two_stats.records == len(texts)


def test_fp16_overflow_turns_the_loss_into_nan_and_the_fixes():
    """Pure float16 SGD with a too-large learning rate: NaN exactly at the step where the float32 run's activations
    pass float16's largest value (torch.finfo, not the code under test); bf16, a lower LR or clipping stay finite."""
    import math

    import torch

    fp16 = train.precision_demo("float16", 20.0, steps=4)
    fp32 = train.precision_demo("float32", 20.0, steps=4)
    limit = torch.finfo(torch.float16).max  # 65504
    nan_step = next(i for i, x in enumerate(fp16["loss"]) if math.isnan(x))
    assert fp32["max_abs_hidden"][nan_step - 1] < limit < fp32["max_abs_hidden"][nan_step]
    assert fp16["loss"][0] == pytest.approx(fp32["loss"][0], abs=0.02)  # the same run until the overflow
    assert all(math.isfinite(x) for x in fp32["loss"])
    for kwargs in (dict(dtype="bfloat16"), dict(dtype="float16", learning_rate=1.0),
                   dict(dtype="float16", max_grad_norm=1.0)):
        losses = train.precision_demo(**{"learning_rate": 20.0, **kwargs}, steps=4)["loss"]
        assert all(math.isfinite(x) for x in losses), (kwargs, losses)


def test_memory_per_gpu_splits_like_zero():
    """Hand-worked: ZeRO-3 on 2 GPUs holds half of everything; ZeRO-2 keeps the weights (4 B) and shares grads (4 B)
    and AdamW moments (8 B) per trainable parameter."""
    from helpers import catalog

    cfg = catalog.get("hfl/chinese-llama-2-7b").config
    base, lora = catalog.param_count(cfg), catalog.lora_param_count(cfg, 8)
    gb = 1024 ** 3
    one = train.memory_per_gpu(cfg, 1, 0)
    assert one["total_gb"] == pytest.approx((2 * base + 16 * lora) / gb, abs=0.05)
    assert one["total_gb"] == pytest.approx(train.lora_budget(cfg)["total_gb"], abs=0.05)
    assert train.memory_per_gpu(cfg, 2, 2)["trainable_gb"] == pytest.approx((4 + 12 / 2) * lora / gb, abs=0.01)
    assert train.memory_per_gpu(cfg, 2, 3)["total_gb"] == pytest.approx((2 * base + 16 * lora) / 2 / gb, abs=0.05)
    assert train.memory_per_gpu(cfg, 1, 0, kbits=4)["base_gb"] == pytest.approx(base / 2 / gb, abs=0.01)


def test_launch_commands_parse_with_the_launchers_own_parsers():
    """Multi-node torchrun and the deepspeed launcher (hostfile): the printed commands are read back by torchrun's and
    DeepSpeed's own argument parsers, and the training flags by helpers.train's."""
    import shlex

    from torch.distributed.run import get_args_parser

    text = train.launch_command("sft", 8, deepspeed="zero3", nnodes=2, rdzv_endpoint="10.0.0.1:29500",
                                model_name_or_path="M", output_dir="O")
    argv = shlex.split(text.replace("\\\n", " "))
    assert argv[0] == "torchrun"
    ns = get_args_parser().parse_args(argv[1:])
    assert (ns.nnodes, ns.nproc_per_node, ns.rdzv_endpoint, ns.rdzv_backend) == ("2", "8", "10.0.0.1:29500", "c10d")
    assert ns.module and ns.training_script == "helpers.train" and ns.training_script_args[0] == "sft"
    assert ns.training_script_args[1:3] == ["--deepspeed", "helpers/assets/ds_zero3.json"]
    if importlib.util.find_spec("deepspeed") is not None:
        from deepspeed.launcher.runner import parse_args as ds_parse

        text = train.launch_command("pt", 4, launcher="deepspeed", hostfile="hostfile", output_dir="O")
        ds = ds_parse(shlex.split(text.replace("\\\n", " "))[1:])
        assert (ds.hostfile, ds.num_gpus, ds.no_local_rank, ds.module) == ("hostfile", 4, True, True)
        assert ds.user_script == "helpers.train" and ds.user_args[:3] == ["pt", "--deepspeed",
                                                                        "helpers/assets/ds_zero2_no_offload.json"]
    with pytest.raises(CourseError, match="torchrun or deepspeed"):
        train.launch_command("sft", launcher="mpirun")


def test_a_diverging_run_stops_with_a_message(tiny_set, tmp_path):
    """A learning rate of 1e38 makes the weights and then the loss infinite / NaN within a few steps; the run must stop there with a
    CourseError naming the step and the fixes, not train a broken adapter to the end."""
    with pytest.raises(CourseError, match=r"loss became (nan|inf).*step \d+.*--learning_rate"):
        train.train("sft", **_sft_flags(tiny_set, tmp_path / "nan", learning_rate=1e38, max_steps=30, max_grad_norm=0))
