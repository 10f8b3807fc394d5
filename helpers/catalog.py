"""The one table of real models: repo id -> config facts, chat family, published files, resources.

Everything the course says about a released model is read from here: notebook 00's resource table, the
notebooks' real sections (which repo, which template), :mod:`helpers.hub` (which files to download),
:mod:`helpers.standin` (the offline stand-in hub writes these configs and file layouts), the export size
estimates and the LoRA budgets of step 07.

Facts are the published ``config.json`` / ``adapter_config.json`` values of each repository (checked against the
Chinese-LLaMA-Alpaca-2 model cards); resource figures are *estimates* from the parameter count unless a
measurement is named (the rehearsal's figures live in ``benchmarks/README.md``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .core import CourseError
from .weights import kv_heads, rope_parameters

# The LLaMA-2 architecture fields every course model shares (config.json of the hfl releases).
_LLAMA2 = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", bos_token_id=1,
               eos_token_id=2, pad_token_id=0, initializer_range=0.02, rms_norm_eps=1e-05, rope_theta=10000.0,
               max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="float16", pretraining_tp=1)
_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
           num_key_value_heads=32)
_1_3B = dict(_7B, num_hidden_layers=4)
_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
            num_key_value_heads=40)
CHINESE_VOCAB = 55296      # Chinese-LLaMA-2 / Chinese-Alpaca-2 tokenizer (LLaMA's 32000 + 23296 Chinese pieces)
LLAMA_VOCAB = 32000        # LLaMA / Llama-2 SentencePiece vocabulary
LLAMA2_LICENCE = "https://huggingface.co/meta-llama/Llama-2-7b-hf (accept the Llama 2 Community License there)"

# The seven projections the Chinese-LLaMA-Alpaca-2 LoRAs train (scripts/training/run_sft.sh).
LORA_TARGETS = ("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class RealModel:
    """One released repository. ``weights`` are the weight files as published (the stand-in writes the same
    names); ``family`` is the prompt family of :mod:`helpers.prompts` (``llama`` = plain continuation)."""

    repo_id: str
    kind: str                                  # base | chat | lora | embedding
    family: str | None
    config: dict
    weights: tuple[str, ...]
    base: str | None = None                    # LoRA: the model it was trained on
    lora: dict | None = None                   # LoRA: r, lora_alpha, target_modules, modules_to_save
    gated: bool = False
    licence: str = "Apache-2.0 code; weights under the Llama 2 Community License"
    modelscope: str | None = None              # the same weights on ModelScope (users in China)
    notes: str = ""
    extra_files: tuple[str, ...] = ()          # other files in the repo (not downloaded unless asked)

    @property
    def vocab_size(self) -> int:
        return int(self.config.get("vocab_size", 0))

    @property
    def context(self) -> int:
        """Usable context in tokens: ``max_position_embeddings`` times a linear rope-scaling factor."""
        rope = rope_parameters(self.config)
        return int(self.config.get("max_position_embeddings", 0) * (rope.factor if rope.scaling == "linear" else 1))

    @property
    def short_name(self) -> str:
        return self.repo_id.rsplit("/", 1)[-1]


def _llama(repo, kind, family, shape, vocab=CHINESE_VOCAB, weights=("model.safetensors",), **kw) -> RealModel:
    cfg = dict(_LLAMA2, **shape, vocab_size=vocab)
    cfg.update(kw.pop("config", {}))
    return RealModel(repo, kind, family, cfg, tuple(weights), **kw)


_SHARDED_BIN = ("pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json")
_SHARDED_BIN_3 = tuple(f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)) + ("pytorch_model.bin.index.json",)
_SHARDED_ST = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json")
_16K = {"rope_scaling": {"type": "linear", "factor": 4.0}}
_64K = {"max_position_embeddings": 65536, "pad_token_id": None,  # the 64K config.json names no pad token
        "rope_scaling": {"type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096, "finetuned": True}}
_64K_NOTE = "YaRN: rope_scaling yarn x16 over the original 4096 positions -> 64K context; needs no --alpha"
_YARN_CODE = ("configuration_llama.py", "modeling_llama_yarn.py")
_LORA_7B = dict(r=64, lora_alpha=128, lora_dropout=0.05, target_modules=list(LORA_TARGETS),
                modules_to_save=["embed_tokens", "lm_head"])

MODELS: dict[str, RealModel] = {m.repo_id: m for m in [
    _llama("hfl/chinese-llama-2-1.3b", "base", "llama", _1_3B, modelscope="ChineseAlpacaGroup/chinese-llama-2-1.3b",
           notes="4 layers of the 7B width: released as a draft model for speculative decoding; weak on its own"),
    _llama("hfl/chinese-alpaca-2-1.3b", "chat", "chinese-alpaca-2", _1_3B,
           modelscope="ChineseAlpacaGroup/chinese-alpaca-2-1.3b",
           notes="4 layers: answers are short and often wrong; use it to learn the pipeline, 7B for quality"),
    _llama("hfl/chinese-llama-2-7b", "base", "llama", _7B, weights=_SHARDED_BIN,
           modelscope="ChineseAlpacaGroup/chinese-llama-2-7b"),
    _llama("hfl/chinese-alpaca-2-7b", "chat", "chinese-alpaca-2", _7B, weights=_SHARDED_BIN,
           modelscope="ChineseAlpacaGroup/chinese-alpaca-2-7b"),
    _llama("hfl/chinese-alpaca-2-13b", "chat", "chinese-alpaca-2", _13B, weights=_SHARDED_BIN_3,
           modelscope="ChineseAlpacaGroup/chinese-alpaca-2-13b"),
    _llama("hfl/chinese-llama-2-7b-16k", "base", "llama", _7B, weights=_SHARDED_BIN, config=_16K,
           notes="position interpolation: rope_scaling linear x4 -> 16K context"),
    _llama("hfl/chinese-alpaca-2-7b-16k", "chat", "chinese-alpaca-2", _7B, weights=_SHARDED_BIN, config=_16K,
           notes="position interpolation: rope_scaling linear x4 -> 16K context"),
    # 64K (YaRN): config.json of hfl/chinese-llama-2-7b-64k; its auto_map points at a remote modeling_llama_yarn.py,
    # not needed here: transformers >= 4.45 implements rope_type "yarn" itself (the course keeps trust_remote_code off)
    _llama("hfl/chinese-llama-2-7b-64k", "base", "llama", _7B, weights=_SHARDED_BIN, config=_64K,
           extra_files=_SHARDED_ST + _YARN_CODE, notes=_64K_NOTE),
    _llama("hfl/chinese-alpaca-2-7b-64k", "chat", "chinese-alpaca-2", _7B, weights=_SHARDED_BIN, config=_64K,
           extra_files=_SHARDED_ST + _YARN_CODE, notes=_64K_NOTE),
    _llama("meta-llama/Llama-2-7b-hf", "base", "llama", _7B, vocab=LLAMA_VOCAB, weights=_SHARDED_ST,
           config={"pad_token_id": None},  # Meta's config.json names no pad token
           extra_files=_SHARDED_BIN, gated=True, licence=LLAMA2_LICENCE,
           modelscope="shakechen/Llama-2-7b-hf",
           notes="gated: accept the licence on the model page, then set HF_TOKEN; publishes .bin and .safetensors"),
    RealModel("hfl/chinese-alpaca-2-lora-7b", "lora", "chinese-alpaca-2",
              dict(_LLAMA2, **_7B, vocab_size=CHINESE_VOCAB), ("adapter_model.bin", "adapter_config.json"),
              base="meta-llama/Llama-2-7b-hf", lora=_LORA_7B,
              notes="LoRA r=64 on all 7 projections + full 55296-row embed_tokens/lm_head (modules_to_save); "
                    "merge onto the original Llama-2-7b-hf"),
    RealModel("hfl/chinese-llama-2-lora-7b", "lora", "llama",
              dict(_LLAMA2, **_7B, vocab_size=CHINESE_VOCAB), ("adapter_model.bin", "adapter_config.json"),
              base="meta-llama/Llama-2-7b-hf", lora=_LORA_7B),
    RealModel("BAAI/bge-small-zh-v1.5", "embedding", None,
              dict(architectures=["BertModel"], model_type="bert", hidden_size=512, intermediate_size=2048,
                   num_hidden_layers=4, num_attention_heads=8, vocab_size=21128, max_position_embeddings=512,
                   type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.1,
                   attention_probs_dropout_prob=0.1, initializer_range=0.02, pad_token_id=0,
                   torch_dtype="float32"),
              ("model.safetensors",), licence="MIT", modelscope="BAAI/bge-small-zh-v1.5",
              extra_files=("pytorch_model.bin",),
              notes="Chinese sentence embedding (512 dims, CLS pooling, normalized) for step 08"),
]}

# Which model plays which role in the notebooks' real sections.
ROLES = {
    "llama_base": "hfl/chinese-llama-2-1.3b",
    "alpaca": "hfl/chinese-alpaca-2-1.3b",
    "alpaca_7b": "hfl/chinese-alpaca-2-7b",
    "alpaca_16k": "hfl/chinese-alpaca-2-7b-16k",
    "alpaca_64k": "hfl/chinese-alpaca-2-7b-64k",
    "llama2_base": "meta-llama/Llama-2-7b-hf",
    "alpaca_lora": "hfl/chinese-alpaca-2-lora-7b",
    "embedding": "BAAI/bge-small-zh-v1.5",
}


def get(repo_or_role: str) -> RealModel:
    """The :class:`RealModel` for a repo id or a role name (``alpaca``, ``llama_base``, ...)."""
    key = ROLES.get(repo_or_role, repo_or_role)
    if key not in MODELS:
        raise CourseError(f"model {repo_or_role!r} is not in the course's table (helpers.catalog.MODELS): "
                          f"choose one of {sorted(MODELS)} or a role {sorted(ROLES)}")
    return MODELS[key]


def repo_of(path_or_repo: str) -> str:
    """The repo id behind a Hugging Face cache path (``.../models--hfl--chinese-alpaca-2-1.3b/snapshots/<sha>``
    -> ``hfl/chinese-alpaca-2-1.3b``); anything else is returned unchanged."""
    for part in reversed(str(path_or_repo).replace("\\", "/").split("/")):
        if part.startswith("models--"):
            return part[len("models--"):].replace("--", "/")
    return str(path_or_repo)


def template_for(repo_or_path: str) -> str:
    """The prompt family for a released model (from the table; a hub cache path counts as its repo id), else
    what :func:`helpers.prompts.get_family` infers from a folder name; never a hand-picked template for a
    model the table knows. Raises ``CourseError`` when nothing is known."""
    from .prompts import get_family

    key = repo_of(repo_or_path).rstrip("/")
    for repo, model in MODELS.items():
        if model.family and (key == repo or key.endswith("/" + model.short_name) or key == model.short_name):
            return model.family
    return get_family(key).name


def template_or_default(repo_or_path, template: str | None = None, default: str = "alpaca") -> str:
    """``template`` when given, else :func:`template_for` the model, else ``default`` (a folder nothing is known
    about, such as the tiny stand-ins)."""
    if template:
        return template
    try:
        return template_for(str(repo_or_path))
    except CourseError:
        return default


# --------------------------------------------------------------------------- sizes
def param_count(cfg: dict) -> int:
    """Parameters of a LLaMA with config ``cfg`` (embeddings, attention with GQA, MLP, norms, lm_head)."""
    v, h, f, n = (int(cfg[k]) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"))
    kv = h // int(cfg["num_attention_heads"]) * kv_heads(cfg)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
    heads = 1 if cfg.get("tie_word_embeddings") else 2
    return heads * v * h + n * per_layer + h


def lora_param_count(cfg: dict, r: int, targets=LORA_TARGETS, modules_to_save=("embed_tokens", "lm_head")) -> int:
    """Trainable parameters of a LoRA of rank ``r`` on ``targets`` plus full copies of ``modules_to_save``."""
    h, f, n = (int(cfg[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    kv = h // int(cfg["num_attention_heads"]) * kv_heads(cfg)
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, f),
            "up_proj": (h, f), "down_proj": (f, h)}
    lora = n * sum(r * (dims[t][0] + dims[t][1]) for t in targets)
    return lora + len(modules_to_save) * int(cfg["vocab_size"]) * h


BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}
GIB = 2 ** 30


def weights_gib(repo_or_cfg, dtype: str = "float16") -> float:
    """GiB of the model's weights at ``dtype`` (``float32``, ``bfloat16``, ``float16``, ``int8``, ``int4``)."""
    cfg = repo_or_cfg if isinstance(repo_or_cfg, dict) else get(repo_or_cfg).config
    return param_count(cfg) * BYTES[dtype] / GIB


@dataclass
class Need:
    """What one step needs for one model: GiB of GPU memory, RAM and disk, and the time as text."""

    step: str
    model: str
    gpu_gib: float
    ram_gib: float
    disk_gib: float
    time: str
    notes: str = field(default="")


def step_needs(repo: str) -> list[Need]:
    """Per-notebook needs for ``repo`` in the real profile, estimated from its parameter count (fp16 weights).

    Rules (estimates, said so in the table): inference = weights x 1.2 (KV cache, activations at 4K tokens);
    streaming merge RAM = the largest shard + 1 GiB; convert (not streaming) = 2x weights + 1 GiB; LoRA training
    (r=64 on the 7 projections, as step 07's real run) = weights + 16 bytes per trainable parameter (fp32 master,
    grad, two AdamW moments) + 2 GiB activations with gradient checkpointing.
    """
    m = get(repo)
    w = weights_gib(m.config)
    b = param_count(m.config) / 1e9
    lora = lora_param_count(m.config, 64, modules_to_save=()) * 16 / GIB   # step 07's real run: no new vocabulary
    lora_emb = lora_param_count(m.config, 64) * 16 / GIB
    gguf_f16, gguf_q4 = w, param_count(m.config) * 4.5 / 8 / GIB
    name = m.short_name
    return [
        Need("02_convert_llama", name, 0, round(2 * w + 1, 1), round(2 * w, 1), f"~{max(1, round(b))} min (disk bound)",
             notes="not streaming: shards + permuted copy in RAM (1-2x weights); pth + HF copy on disk"),
        Need("03_extend_vocab", name, 0, 1, 0.01, "~1 min (SentencePiece on ~350K words: ~12 s, P3)"),
        Need("04_merge_lora", name, 0, round(w / 2 + 1, 1), round(w, 1), f"~{max(1, round(b * 0.6))} min",
             notes="streaming: one shard resident"),
        Need("05_inference", name, round(w * 1.2, 1), round(w + 1, 1), round(w, 1), "seconds per answer",
             notes=f"8-bit: {w / 2 * 1.2:.1f} GiB, 4-bit: {w / 4 * 1.2:.1f} GiB"),
        Need("06_webui", name, round(w * 1.2, 1), round(w + 1, 1), round(w, 1), "interactive"),
        Need("07_pretrain_and_sft_lora", name, round(w + lora + 2, 1), round(w + 2, 1), round(lora / 8 + 0.1, 1),
             "hours (100 steps of 8x512 tokens: ~10-30 min)", notes="LoRA r=64 only (vocabulary unchanged, as 07 "
             f"runs it); training embed_tokens/lm_head too: +{lora_emb - lora:.1f} GiB; QLoRA 4-bit saves "
             f"{w * 0.75:.1f} GiB"),
        Need("08_langchain_qa", name, round(w * 1.2 + 0.2, 1), round(w + 1, 1), round(w + 0.1, 1),
             "seconds per question", notes="+ bge-small-zh embedding (0.1 GiB)"),
        Need("09_langchain_summarize", name, round(w * 1.2, 1), round(w + 1, 1), round(w, 1), "~1 min per document"),
        Need("10_openai_api", name, round(w * 1.2, 1), round(w + 1, 1), round(w, 1), "serving"),
        Need("11_export_deploy", name, 0, round(w / 2 + 1, 1), round(gguf_f16 + gguf_q4 + w, 1),
             f"~{max(1, round(b))} min per format", notes="f16 GGUF + q4 GGUF beside the HF folder"),
        Need("12_evaluate", name, round(w * 1.2, 1), round(w + 1, 1), round(w + 0.1, 1),
             "minutes (C-Eval val: 1346 questions, one forward each)", notes="+ C-Eval/CMMLU data (~0.1 GiB)"),
    ]


def needs_table(repos=("hfl/chinese-alpaca-2-1.3b", "hfl/chinese-alpaca-2-7b")):
    """:func:`step_needs` for several models as one DataFrame (notebook 00)."""
    import pandas as pd

    rows = [vars(n) for repo in repos for n in step_needs(repo)]
    return pd.DataFrame(rows).set_index(["step", "model"]).sort_index()


def facts_table():
    """The table's config facts, one row per repository (notebook 00)."""
    import pandas as pd

    rows = []
    for m in MODELS.values():
        c = m.config
        rows.append({"repo": m.repo_id, "kind": m.kind, "family": m.family or "-", "vocab": c.get("vocab_size"),
                     "layers": c.get("num_hidden_layers"), "hidden": c.get("hidden_size"), "context": m.context,
                     "rope_scaling": rope_parameters(c).scaling or "-",
                     "params_B": round(param_count(c) / 1e9, 2) if m.kind in ("base", "chat") else "-",
                     "fp16_GiB": round(weights_gib(c), 1) if m.kind in ("base", "chat") else "-",
                     "gated": m.gated})
    return pd.DataFrame(rows).set_index("repo")


# --------------------------------------------------------------------------- which merge each release needs
@dataclass(frozen=True)
class MergeRecipe:
    """How one released model family is rebuilt from LoRAs: ``loras`` go onto ``base`` in this order (one LoRA:
    the single merge; several: the ordered multi-LoRA merge, order as trained). ``vocab`` = the merged vocabulary."""

    model: str
    generation: str                            # v1 (LLaMA) | v2 (Llama-2)
    base: str
    loras: tuple[str, ...]
    vocab: int
    source: str

    @property
    def merge(self) -> str:
        return "single" if len(self.loras) == 1 else "ordered multi-LoRA"


V1_VOCAB = {"llama": 49953, "alpaca": 49954}   # Chinese-LLaMA / Chinese-Alpaca (v1): 32000 + 20K Chinese (+ [PAD])
_V1_BASE = "original LLaMA, HF format (step 02)"
MERGE_RECIPES: tuple[MergeRecipe, ...] = (
    MergeRecipe("Chinese-LLaMA", "v1", _V1_BASE, ("chinese_llama_lora_7b",), V1_VOCAB["llama"], "seed 002 step 3, way 1"),
    MergeRecipe("Chinese-LLaMA-Plus", "v1", _V1_BASE, ("chinese_llama_plus_lora_7b",), V1_VOCAB["llama"],
                "seed 002 step 3, way 1"),
    MergeRecipe("Chinese-Alpaca", "v1", _V1_BASE, ("chinese_alpaca_lora_7b",), V1_VOCAB["alpaca"],
                "seed 002 step 3, way 1; 7.1.1: non-Plus Alpaca sits on the original LLaMA"),
    MergeRecipe("Chinese-Alpaca-Plus", "v1", _V1_BASE, ("chinese_llama_plus_lora_7b", "chinese_alpaca_plus_lora_7b"),
                V1_VOCAB["alpaca"], "seed 002 step 3, way 2 and 8.1.1: LLaMA-Plus-LoRA first, then Alpaca-Plus-LoRA"),
    *(MergeRecipe(m.short_name.replace("-lora", ""), "v2", m.base, (m.repo_id,), m.vocab_size,
                  "Chinese-LLaMA-Alpaca-2: each LoRA merges onto the original Llama-2 (full models need no merge)")
      for m in MODELS.values() if m.kind == "lora"),
)


def merge_recipe(model: str) -> MergeRecipe:
    """The :class:`MergeRecipe` of a released model name (``Chinese-Alpaca-Plus``, ``chinese-alpaca-2-7b``, ...)."""
    for r in MERGE_RECIPES:
        if r.model.lower() == model.lower():
            return r
    raise CourseError(f"model {model!r} has no merge recipe in helpers.catalog.MERGE_RECIPES: choose one of "
                      f"{[r.model for r in MERGE_RECIPES]}")


def merge_table():
    """:data:`MERGE_RECIPES` as a DataFrame (notebook 04): model, single or ordered merge, base, LoRAs in order."""
    import pandas as pd

    rows = [{"model": r.model, "generation": r.generation, "merge": r.merge, "base": r.base,
             "--lora_model (in this order)": ",".join(r.loras), "vocab": r.vocab, "source": r.source}
            for r in MERGE_RECIPES]
    return pd.DataFrame(rows).set_index("model")
