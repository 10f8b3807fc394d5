"""The tiny-artifact factory: small, deterministic stand-ins for everything the real course downloads.

Everything is built from ``data/`` with fixed seeds, cached in ``<workspace>/tiny/<name>`` and
rebuilt automatically when the factory code or its input data change. Same code + same data ->
byte-identical files (checked by SHA256 in the tests).

| artifact | real counterpart | tiny size |
|---|---|---|
| ``llama_sp``            | LLaMA ``tokenizer.model`` (32000 pieces)          | ~1000 BPE pieces, English |
| ``chinese_sp``          | ``chinese_sp.model`` (20000 pieces)               | see ``TINY_ZH_VOCAB`` |
| ``merged_tokenizers``   | Chinese-LLaMA 49953 / Chinese-Alpaca 49954        | base + Chinese (+ ``[PAD]``) |
| ``hf_model``            | ``llama-7b-hf`` (hidden 4096, 32 layers)          | hidden 64, 2 layers, 4 heads (GQA: 2 kv heads) |
| ``meta_checkpoint``     | ``7B/consolidated.00.pth`` + ``params.json``      | 1 shard, or 2 tensor-parallel shards |
| ``lora_adapters``       | Chinese-LLaMA-LoRA, Chinese-Alpaca-LoRA           | r=8 LoRA + embed_tokens/lm_head |
| ``merged_model``        | merged Chinese-LLaMA / Chinese-Alpaca (step 04)   | base + LoRA(s), HF safetensors |
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .core import DATA_DIR, workspace
from .io import atomic_dir
from .weights import load_hf_state_dict

FACTORY_VERSION = "1"
SEED = 1234
TINY_BASE_VOCAB = 1000
TINY_ZH_VOCAB = 3000

TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=172,  # LLaMA's rule: multiple_of(4) * ceil(2/3 * 4 * 64 / 4)
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    initializer_range=0.1,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"]
_SOURCES = ["tiny.py", "vocab.py", "tokenizer.py", "convert.py", "weights.py"]


def _fingerprint(name: str, inputs: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(f"{FACTORY_VERSION}|{SEED}|{name}|{extra}".encode())
    here = Path(__file__).parent
    for src in _SOURCES:
        h.update((here / src).read_bytes())
    for p in inputs:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def _cached(name: str, build, inputs: list[Path] = (), extra: str = "") -> Path:
    """Return ``<workspace>/tiny/<name>``, building it (atomically, under a lock) when stale."""
    from filelock import FileLock

    root = workspace("tiny")
    target = root / name
    key = _fingerprint(name, list(inputs), extra)
    stamp = target / ".fingerprint"

    def fresh() -> bool:
        return stamp.is_file() and stamp.read_text(encoding="utf-8") == key

    if fresh():
        return target
    with FileLock(str(root / f".{name}.lock")):
        if not fresh():
            with atomic_dir(target, overwrite=True) as tmp:
                build(tmp)
                (tmp / ".fingerprint").write_text(key, encoding="utf-8")
    return target


# --------------------------------------------------------------------------- tokenizers
def _strip_paths(model_file: Path) -> Path:
    """sentencepiece stores the training ``input`` and ``model_prefix`` paths in the model: keep names only,
    so the same data gives byte-identical files wherever the workspace is."""
    from .tokenizer import load_sp_proto

    proto = load_sp_proto(model_file)
    spec = proto.trainer_spec
    names = [Path(x).name for x in spec.input]
    del spec.input[:]
    spec.input.extend(names)
    spec.model_prefix = Path(spec.model_prefix).name
    model_file.write_bytes(proto.SerializeToString())
    return model_file


def base_sp_model() -> Path:
    """LLaMA-like ``tokenizer.model`` trained on ``data/en_corpus.txt`` (BPE, byte_fallback, split_digits)."""
    from .vocab import train_sp_model

    src = DATA_DIR / "en_corpus.txt"

    def build(tmp: Path):
        _strip_paths(train_sp_model([src], tmp / "tokenizer", TINY_BASE_VOCAB, character_coverage=1.0))
        (tmp / "tokenizer.vocab").unlink()

    return _cached("llama_sp", build, [src]) / "tokenizer.model"


def chinese_sp_model() -> Path:
    """The Chinese SentencePiece model (``chinese_sp.model``), built by :func:`helpers.vocab.train_chinese_sp`."""
    from . import vocab

    inputs = vocab.chinese_training_inputs()

    def build(tmp: Path):
        _strip_paths(vocab.train_chinese_sp(tmp / "chinese_sp", vocab_size=TINY_ZH_VOCAB))
        for extra in tmp.glob("*.vocab"):
            extra.unlink()

    return _cached("chinese_sp", build, inputs, extra=str(TINY_ZH_VOCAB)) / "chinese_sp.model"


def merged_tokenizers() -> dict[str, Path]:
    """Chinese-LLaMA (base + Chinese) and Chinese-Alpaca (+ ``[PAD]``) tokenizers, SP and HF formats."""
    from . import vocab

    base, zh = base_sp_model(), chinese_sp_model()

    def build(tmp: Path):
        vocab.merge_tokenizers(base, zh, tmp)

    root = _cached("merged_tokenizers", build, [base, zh])
    return {
        "llama_sp": root / "merged_tokenizer_sp" / "chinese_llama.model",
        "llama_hf": root / "merged_tokenizer_hf",
        "alpaca_sp": root / "merged_tokenizer_sp" / "chinese_alpaca.model",
        "alpaca_hf": root / "alpaca_tokenizer_hf",
    }


# --------------------------------------------------------------------------- models
def _seed(offset: int = 0):
    import torch

    torch.manual_seed(SEED + offset)


def tiny_config(vocab_size: int, gqa: bool = False, llama2: bool = False):
    from transformers import LlamaConfig

    cfg = dict(TINY_CONFIG, vocab_size=vocab_size)
    if gqa:
        cfg["num_key_value_heads"] = 2
    if llama2:
        cfg["rms_norm_eps"] = 1e-5
        cfg["max_position_embeddings"] = 4096
    return LlamaConfig(**cfg)


def _random_llama(config, seed_offset: int):
    """A random LLaMA with non-trivial norms (so layout mistakes show up in the logits)."""
    import torch
    from transformers import LlamaForCausalLM

    _seed(seed_offset)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.generation_config.do_sample = False
    model.config._name_or_path = "tiny-llama"
    return model.eval()


def hf_model(gqa: bool = False) -> Path:
    """A tiny HF ``LlamaForCausalLM`` folder (config, safetensors, base tokenizer). ``gqa``: 4 heads, 2 kv heads."""
    from .tokenizer import save_hf_tokenizer
    import sentencepiece as spm

    sp_model = base_sp_model()
    name = "hf_llama_gqa" if gqa else "hf_llama"

    def build(tmp: Path):
        vocab_size = spm.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
        model = _random_llama(tiny_config(vocab_size, gqa=gqa, llama2=gqa), 1 if gqa else 0)
        model.save_pretrained(tmp, safe_serialization=True)
        save_hf_tokenizer(sp_model, tmp)

    return _cached(name, build, [sp_model])


def meta_checkpoint(num_shards: int = 1, gqa: bool = False) -> Path:
    """An original-format Meta download: ``tokenizer.model`` + ``<size>/consolidated.0N.pth`` + ``params.json``.

    ``<size>`` is ``tiny`` (1 shard) or ``tiny-tp2`` (2 tensor-parallel shards); add ``gqa`` for LLaMA-2-70B-style
    grouped-query attention. The weights are those of :func:`hf_model` in Meta's layout.
    """
    import torch
    from transformers import AutoConfig

    from .convert import hf_to_meta_state_dict, meta_params_from_config, split_meta_shards

    src = hf_model(gqa=gqa)
    size = "tiny" + ("-gqa" if gqa else "") + (f"-tp{num_shards}" if num_shards > 1 else "")

    def build(tmp: Path):
        cfg = AutoConfig.from_pretrained(src)
        sd = load_hf_state_dict(src)
        meta = hf_to_meta_state_dict(sd, cfg.num_attention_heads, cfg.num_key_value_heads)
        params = meta_params_from_config(cfg)
        out = tmp / size
        out.mkdir()
        for rank, shard in enumerate(split_meta_shards(meta, num_shards)):
            torch.save(shard, out / f"consolidated.{rank:02d}.pth")
        (out / "params.json").write_text(json.dumps(params), encoding="utf-8")
        shutil.copyfile(src / "tokenizer.model", tmp / "tokenizer.model")

    return _cached(f"meta_{size}", build, [src / "model.safetensors", src / "config.json"])


def _save_adapter(peft_model, tokenizer_dir: Path, out: Path, base_name: str) -> None:
    peft_model.save_pretrained(out, safe_serialization=True, save_embedding_layers=True)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    # Keep files byte-identical wherever they are built: no absolute workspace paths, and PEFT's
    # set-valued fields (target_modules) in a fixed order.
    cfg["base_model_name_or_path"] = base_name
    cfg = {k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v for k, v in cfg.items()}
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        f"# {out.name} (tiny stand-in)\n\nA random LoRA for the course's tiny `{base_name}` model, built by "
        "`helpers.tiny.lora_adapters()`; it mirrors the real release (PEFT LoRA r=8 on q,k,v,o,gate,down,up plus "
        "full embed_tokens/lm_head, shipped with its tokenizer). Load it with "
        "`helpers.modeling.load_model(base, lora_model=<this folder>)`.\n", encoding="utf-8")
    for f in tokenizer_dir.iterdir():
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copyfile(f, out / f.name)


def _make_lora(model, seed_offset: int):
    """Wrap ``model`` in a LoRA with non-zero B (so merging visibly changes it) and trainable embed/lm_head."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS,
                        modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM")
    pm = get_peft_model(model, config)
    _seed(seed_offset)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
            elif "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.02)
    return pm


def lora_adapters() -> dict[str, Path]:
    """Tiny Chinese-LLaMA-LoRA (vocab base+Chinese) and Chinese-Alpaca-LoRA (+ ``[PAD]``) in PEFT format.

    As in the real release, the Alpaca LoRA was trained on top of the LLaMA LoRA merged into the base,
    so the two must be applied in that order.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .tokenizer import load_tokenizer

    base = hf_model()
    toks = merged_tokenizers()

    def build(tmp: Path):
        llama_vocab = len(load_tokenizer(toks["llama_hf"]))
        alpaca_vocab = len(load_tokenizer(toks["alpaca_hf"]))
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        _seed(10)
        model.resize_token_embeddings(llama_vocab, mean_resizing=False)
        pm = _make_lora(model, 12)
        _save_adapter(pm, toks["llama_hf"], tmp / "chinese-llama-lora", "tiny-llama")
        merged = pm.merge_and_unload()
        _seed(13)
        merged.resize_token_embeddings(alpaca_vocab, mean_resizing=False)
        pm2 = _make_lora(merged, 14)
        _save_adapter(pm2, toks["alpaca_hf"], tmp / "chinese-alpaca-lora", "tiny-llama")

    root = _cached("lora_adapters", build, [base / "model.safetensors", toks["llama_sp"], toks["alpaca_sp"]])
    return {"llama": root / "chinese-llama-lora", "alpaca": root / "chinese-alpaca-lora"}


def merged_model(kind: str = "alpaca") -> Path:
    """The tiny merged model with the extended vocabulary, merged by :func:`helpers.merge.merge_lora_into` as in
    step 04: ``llama`` = base + Chinese-LLaMA-LoRA, ``alpaca`` = base + Chinese-LLaMA-LoRA + Chinese-Alpaca-LoRA.
    Returns the HF folder (``<workspace>/tiny/merged_<kind>/tiny-chinese-<kind>-merged``)."""
    from .core import CourseError
    from .merge import merge_lora_into

    if kind not in ("llama", "alpaca"):
        raise CourseError(f"kind {kind!r}: choose llama or alpaca")
    loras = lora_adapters()
    chain = [loras["llama"]] + ([loras["alpaca"]] if kind == "alpaca" else [])
    base, name = hf_model(), f"tiny-chinese-{kind}-merged"
    here = Path(__file__).parent

    def build(tmp: Path):
        merge_lora_into(base, chain, tmp / name, output_type="huggingface", progress=False)

    inputs = [base / "model.safetensors", *(p / "adapter_model.safetensors" for p in chain), here / "merge.py"]
    return _cached(f"merged_{kind}", build, inputs) / name


def build_all() -> dict[str, Path]:
    """Build (or reuse) every tiny artifact; returns their paths."""
    paths = {
        "llama_sp": base_sp_model(),
        "chinese_sp": chinese_sp_model(),
        "hf_llama": hf_model(),
        "hf_llama_gqa": hf_model(gqa=True),
        "meta_tiny": meta_checkpoint(1),
        "meta_tiny_tp2": meta_checkpoint(2),
        "meta_tiny_gqa_tp2": meta_checkpoint(2, gqa=True),
    }
    paths.update({f"tok_{k}": v for k, v in merged_tokenizers().items()})
    paths.update({f"lora_{k}": v for k, v in lora_adapters().items()})
    return paths


def describe(paths: dict[str, Path] | None = None):
    """A table (pandas DataFrame) of the tiny artifacts: path, files, size."""
    import pandas as pd

    paths = paths or build_all()
    rows = []
    for name, p in paths.items():
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
        rows.append({"artifact": name, "path": str(p.relative_to(workspace())), "files": len(files),
                     "size_kb": round(sum(f.stat().st_size for f in files) / 1024, 1)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- step 11: K-quants and GGUF LoRA adapters
KQUANT_CONFIG = dict(TINY_CONFIG, hidden_size=256, intermediate_size=768, initializer_range=0.05)


def kquant_model() -> Path:
    """A small-but-wide HF LLaMA for llama.cpp's K-quants (every matrix row a multiple of 256 values): hidden 256,
    FFN 768, 2 layers, 4 heads, the tiny Chinese-Alpaca tokenizer (~3.7 M parameters). Returns the folder."""
    from transformers import LlamaConfig

    from .tokenizer import load_tokenizer

    tok_dir = merged_tokenizers()["alpaca_hf"]
    sp_model = tok_dir / "tokenizer.model"

    def build(tmp: Path):
        tok = load_tokenizer(tok_dir)
        model = _random_llama(LlamaConfig(**KQUANT_CONFIG, vocab_size=len(tok)), 20)
        _briefly_train(model, tok(corpus.read_text(encoding="utf-8"))["input_ids"])
        model.config._name_or_path = "tiny-kquant"
        model.save_pretrained(tmp, safe_serialization=True)
        for f in tok_dir.iterdir():
            if f.is_file() and f.name.startswith(("tokenizer", "special_tokens")):
                shutil.copyfile(f, tmp / f.name)

    corpus = DATA_DIR / "zh_corpus.txt"
    return _cached("kquant_llama", build, [sp_model, tok_dir / "tokenizer_config.json", corpus])


def _briefly_train(model, ids: list[int], steps: int = 60, batch: int = 4, seq: int = 128) -> None:
    """A few steps of next-token prediction on ``ids`` through :func:`_adamw_steps` (one thread, fixed seed:
    deterministic, ~15 s), so that perplexities of quantized copies mean something (a random model is flatter than
    uniform)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)
        gen = torch.Generator().manual_seed(SEED)
        batches = ({"input_ids": (x := data[torch.randint(0, len(data), (batch,), generator=gen)]), "labels": x}
                   for _ in range(steps))
        _adamw_steps(model, batches, lr=3e-3)
    finally:
        torch.set_num_threads(threads)


def plain_lora_adapter() -> Path:
    """A PEFT LoRA (r=8, alpha=16, q/k/v/o/gate/up/down, no ``modules_to_save``) on the tiny merged Chinese-Alpaca
    (:func:`merged_model`), with non-zero B: the kind of adapter llama.cpp can load as a GGUF LoRA. Returns the folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = merged_model("alpaca")

    def build(tmp: Path):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                              task_type="CAUSAL_LM"))
        _seed(21)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.05)
        out = tmp / "chinese-alpaca-plain-lora"
        pm.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
        cfg = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
        cfg.update(base_model_name_or_path="tiny-chinese-alpaca-merged", target_modules=sorted(cfg["target_modules"]))
        (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    return _cached("plain_lora", build, [base / "model.safetensors"]) / "chinese-alpaca-plain-lora"


# --------------------------------------------------------------------------- speculative decoding (step 05)
SPECULATIVE_TARGET = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=4)
DEEP_LAYER_SCALE = 0.1  # the target's layers 2-4 write updates 10x smaller than random into the residual stream


def speculative_pair() -> dict[str, Path]:
    """A tiny target and two drafts sharing :func:`base_sp_model`'s vocabulary, for speculative decoding:
    ``target`` (4 layers, width 128; layers 2-4 scaled down by :data:`DEEP_LAYER_SCALE` so they refine rather than
    replace what layer 1 predicts, as in a trained model), ``draft`` (its first layer: same embeddings, final norm
    and lm_head, the way a small model of the same family shares the big one's tokenizer) and ``draft_random`` (an unrelated random
    1-layer model, the lower bound). Returns ``{"target", "draft", "draft_random"}`` -> HF folders (cached)."""
    import copy

    import sentencepiece as spm
    import torch

    from .tokenizer import save_hf_tokenizer

    sp_model = base_sp_model()

    def build(tmp: Path):
        from transformers import LlamaConfig

        vocab_size = spm.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
        cfg = LlamaConfig(**dict(TINY_CONFIG, **SPECULATIVE_TARGET), vocab_size=vocab_size)
        target = _random_llama(cfg, 20)
        with torch.no_grad():  # deeper layers only refine: a random model would otherwise share nothing with its
            for layer in list(target.model.layers)[1:]:  # first layer (measured: ~50% accepted at 0.1, ~3% at 1)
                layer.self_attn.o_proj.weight.mul_(DEEP_LAYER_SCALE)
                layer.mlp.down_proj.weight.mul_(DEEP_LAYER_SCALE)
        draft = copy.deepcopy(target)
        draft.model.layers = torch.nn.ModuleList(list(draft.model.layers)[:1])
        draft.config.num_hidden_layers = 1
        unrelated = _random_llama(LlamaConfig(**dict(TINY_CONFIG, **dict(SPECULATIVE_TARGET, num_hidden_layers=1)),
                                              vocab_size=vocab_size), 21)
        for name, model in (("target", target), ("draft", draft), ("draft_random", unrelated)):
            model.save_pretrained(tmp / name, safe_serialization=True)
            save_hf_tokenizer(sp_model, tmp / name)

    root = _cached("speculative", build, [sp_model])
    return {k: root / k for k in ("target", "draft", "draft_random")}


# --------------------------------------------------------------------------- a tiny model that has learned something
# Issue 17: the random models above answer noise. This one is trained once (plain torch AdamW, the course's
# own data, the Chinese-Alpaca tokenizer) so that PT and SFT have a visible effect: base = random init,
# pt = + continued pre-training on zh_corpus + pt_sample, sft = pt + instruction tuning (alpaca template).
TRAINED_STAGES = ("base", "pt", "sft")
TRAINED_RECIPE = dict(block_size=64, pt_steps=120, pt_batch=16, sft_records=8, sft_steps=80, lr=1e-2,
                      initializer_range=0.02, threads=1)
TRAINED_PT_FILES = ("zh_corpus.txt", "pt_sample.txt")
TRAINED_SFT_FILE = "alpaca_zh_sample.json"


def trained_sft_records(n: int | None = None) -> list[dict]:
    """The SFT records the tiny trained model learns: the ``n`` (default ``TRAINED_RECIPE["sft_records"]``)
    shortest single-turn records of ``data/alpaca_zh_sample.json`` by characters, in file order. Returns them
    normalized (``{"turns": [{"user", "assistant"}], ...}``, :func:`helpers.data.normalize_sft_record`) with the
    original ``instruction`` / ``input`` / ``output`` added, so a notebook can ask them again."""
    from .data import load_sft_records, read_json_records

    n = TRAINED_RECIPE["sft_records"] if n is None else n
    path = DATA_DIR / TRAINED_SFT_FILE
    raw = read_json_records(path)
    recs = load_sft_records([path])
    size = [len(r["instruction"]) + len(r.get("input") or "") + len(r["output"]) for r in raw]
    keep = sorted(sorted(range(len(raw)), key=lambda i: (size[i], i))[:n])
    return [dict(recs[i], instruction=raw[i]["instruction"], input=raw[i].get("input") or "",
                 output=raw[i]["output"]) for i in keep]


def _adamw_steps(model, batches, lr: float) -> list[float]:
    """Plain AdamW over ``batches`` (dicts of tensors with ``labels``), gradient norm clipped at 1, linear decay to
    10 %; returns the loss of every step. (Hand-written: helpers.train trains LoRA adapters through the Trainer,
    this trains every weight of a 0.6M-parameter model from scratch in about a minute.)"""
    import torch

    batches = list(batches)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.9 * s / max(1, len(batches)))
    model.train()
    losses = []
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 6))
    model.eval()
    return losses


def train_tiny_stages(out: Path, pt_steps: int | None = None, sft_steps: int | None = None) -> dict:
    """Train the tiny model and save ``out/{base,pt,sft}`` (HF folders: config, safetensors, the Chinese-Alpaca
    tokenizer). Deterministic: fixed seeds, ``torch.use_deterministic_algorithms``, batches drawn from a seeded
    generator. Returns ``{"pt": [losses], "sft": [losses], "seconds": {...}}`` (also written to
    ``out/train_log.json``)."""
    import time

    import torch
    from transformers import LlamaForCausalLM

    from .data import group_texts, make_collator, tokenize_sft_record

    r = TRAINED_RECIPE
    pt_steps = r["pt_steps"] if pt_steps is None else pt_steps
    sft_steps = r["sft_steps"] if sft_steps is None else sft_steps
    tok_dir = merged_tokenizers()["alpaca_hf"]
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    texts = [line for name in TRAINED_PT_FILES
             for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    blocks = torch.tensor(group_texts(tok(texts)["input_ids"], r["block_size"]))
    rows = [tokenize_sft_record(rec, tok, 256) for rec in trained_sft_records()]
    rows = [{"input_ids": x["input_ids"], "labels": x["labels"]} for x in rows]
    collate = make_collator(tok, "longest")
    was_det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    # one thread: the same sums in the same order whatever the machine's core count (and no spinning threads
    # on a shared CPU)
    torch.set_num_threads(r["threads"])
    try:
        config = tiny_config(len(tok))
        config.initializer_range = r["initializer_range"]
        _seed(20)
        model = LlamaForCausalLM(config).eval()
        model.generation_config.do_sample = False
        model.config._name_or_path = "tiny-chinese-trained"
        log: dict = {"recipe": dict(r, pt_steps=pt_steps, sft_steps=sft_steps), "seconds": {}}

        def save(stage: str) -> None:
            model.save_pretrained(out / stage, safe_serialization=True)
            for f in tok_dir.iterdir():
                if f.is_file():
                    shutil.copyfile(f, out / stage / f.name)

        save("base")
        gen = torch.Generator().manual_seed(SEED + 21)
        t0 = time.perf_counter()
        pt_batches = ({"input_ids": (b := blocks[torch.randint(len(blocks), (r["pt_batch"],), generator=gen)]),
                       "labels": b} for _ in range(pt_steps))
        log["pt"] = _adamw_steps(model, pt_batches, r["lr"])
        log["seconds"]["pt"] = round(time.perf_counter() - t0, 1)
        save("pt")
        t0 = time.perf_counter()
        sft_batch = collate(rows)  # every record in every step: a handful of instructions learned by heart
        sft_batches = (sft_batch for _ in range(sft_steps))
        log["sft"] = _adamw_steps(model, sft_batches, r["lr"])
        log["seconds"]["sft"] = round(time.perf_counter() - t0, 1)
        save("sft")
    finally:
        torch.use_deterministic_algorithms(was_det)
        torch.set_num_threads(threads)
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    return log


def trained_model(stage: str = "sft") -> Path:
    """The tiny LLaMA trained on the course's Chinese data (built once, ~1 min on 2 CPU cores, then cached):
    ``base`` (random init), ``pt`` (after continued pre-training), ``sft`` (after instruction tuning; answers a
    few training-set instructions, :func:`trained_sft_records`). Returns the HF folder of ``stage``; the losses
    and times are in ``<folder>/../train_log.json``."""
    from .core import CourseError

    if stage not in TRAINED_STAGES:
        raise CourseError(f"stage {stage!r}: choose one of {list(TRAINED_STAGES)}")
    toks = merged_tokenizers()
    here = Path(__file__).parent
    inputs = [toks["alpaca_sp"], *(DATA_DIR / n for n in (*TRAINED_PT_FILES, TRAINED_SFT_FILE)),
              here / "data.py", here / "prompts.py"]
    root = _cached("trained_llama", lambda tmp: train_tiny_stages(tmp), inputs,
                   extra=json.dumps(TRAINED_RECIPE, sort_keys=True))
    return root / stage
