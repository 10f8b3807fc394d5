"""Course step 11: export and deployment — GGUF (llama.cpp / Ollama), fastllm ``.flm``, distributable folders.

``python -m helpers.export gguf --base_model DIR --outfile FILE --outtype f32|f16|q8_0`` writes a GGUF file the
way llama.cpp's ``convert_hf_to_gguf.py`` does for a LLaMA (with the ``gguf`` package's ``GGUFWriter``):
llama hyper-parameters, the SentencePiece vocabulary (pieces, scores, types) of ``tokenizer.model``,
llama.cpp tensor names and Meta's *interleaved* q/k rows (llama.cpp's rotary kernel expects them; HF stores
them half-split, so q/k go through :func:`helpers.convert.permute_hf_to_meta`). Tensors are streamed one at a
time (header first), so a 7B model needs about one tensor of extra memory.

``python -m helpers.export modelfile --gguf FILE --template chinese-alpaca-2 --outfile Modelfile`` writes an
Ollama ``Modelfile`` generated from the chat-family registry (:mod:`helpers.prompts`): a Go ``TEMPLATE`` that
renders the registry's prompt, ``SYSTEM``, ``stop`` and sampling ``PARAMETER`` lines. Ollama itself (a Go
binary) is not installable from PyPI; :func:`render_go_template` renders the subset of Go template syntax
this module emits, so the tests can compare the rendered prompt with the registry's.

``python -m helpers.export fastllm --base_model DIR --outfile FILE.flm --dtype float16|int8|int4`` writes
fastllm's ``.flm`` layout (version 2, as ``ftllm/torch2flm.py`` writes it) with seed 003's chat settings
(``pre_prompt``, ``user_role``, ``bot_role``, ``history_sep``). We write the layout ourselves: ``torch2flm``
cannot read the course tokenizer (transformers 5 has no slow LlamaTokenizer with ``sp_model``) and the
``ftllm`` wheel is 216 MB and depends on CUDA runtime wheels. The runtime check uses ``ftllm``'s bundled CPU
library when it is installed (``pip install --no-deps ftllm==1.9.0``) in a subprocess
(:func:`fastllm_run`); :func:`read_flm` reads the same documented layout back in pure Python.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .core import CourseError
from .io import atomic_dir, atomic_write_text, read_json, write_manifest

GGUF_OUTTYPES = ("f32", "f16", "q8_0")
FLM_DTYPES = {"float32": 0, "float16": 7, "int8": 3, "int4": 8}
FLM_VERSION = 2
DEFAULT_FAMILY = "chinese-alpaca-2"


class ExportError(CourseError):
    """Bad input to an export: the message names the file/flag and says what to do."""


# --------------------------------------------------------------------------- reading an HF LLaMA folder
def _config(model_dir: Path) -> dict:
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"--base_model {model_dir}: no config.json; pass a merged Hugging Face model folder "
                          "(python -m helpers.merge ... --output_type huggingface)")
    cfg = read_json(model_dir / "config.json")
    arch = (cfg.get("architectures") or ["?"])[0]
    if cfg.get("model_type") != "llama":
        raise ExportError(f"{model_dir / 'config.json'}: model_type {cfg.get('model_type')!r} ({arch}); this exporter "
                          "handles LLaMA models only (model_type 'llama')")
    return cfg


def _rope_theta(cfg: dict) -> float:
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    return float(cfg.get("rope_theta", 10000.0))


def _n_kv_heads(cfg: dict) -> int:
    return int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])


class _Weights:
    """The tensors of an HF folder (safetensors or .bin, single or sharded), read one at a time."""

    def __init__(self, model_dir: Path):
        from .merge import base_weight_files

        self.files = base_weight_files(model_dir)
        self._open: dict[Path, object] = {}
        self.where: dict[str, Path] = {}
        for f in self.files:
            for k in self._handle(f).keys():
                self.where[k] = f

    def _handle(self, f: Path):
        if f not in self._open:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                self._open[f] = safe_open(str(f), framework="pt")
            else:
                import torch

                try:
                    self._open[f] = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as e:  # legacy (non-zip) .bin files cannot be memory-mapped
                    if "mmap" not in str(e):
                        raise
                    self._open[f] = torch.load(f, map_location="cpu", weights_only=True)
        return self._open[f]

    def keys(self) -> list[str]:
        return list(self.where)

    def shape(self, key: str) -> tuple[int, ...]:
        h = self._handle(self.where[key])
        return tuple(h.get_slice(key).get_shape()) if hasattr(h, "get_slice") else tuple(h[key].shape)

    def get(self, key: str):
        h = self._handle(self.where[key])
        t = h.get_tensor(key) if hasattr(h, "get_tensor") else h[key]
        return t.float()


def _sp_model_path(model_dir: Path, tokenizer_path: str | Path | None) -> Path:
    for cand in ([Path(tokenizer_path)] if tokenizer_path else []) + [model_dir]:
        if cand.is_file():
            return cand
        if (cand / "tokenizer.model").is_file():
            return cand / "tokenizer.model"
    raise ExportError(f"no tokenizer.model in {tokenizer_path or model_dir}: GGUF and fastllm need the SentencePiece "
                      "model; pass --tokenizer_path (the merged tokenizer folder, e.g. merged_tokenizer_hf)")


@dataclass
class SpVocab:
    """The vocabulary as llama.cpp / fastllm store it: one entry per id."""

    tokens: list[str]
    scores: list[float]
    types: list[int]  # gguf.TokenType values (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int | None
    add_dummy_prefix: bool
    n_pieces: int  # pieces in tokenizer.model (the rest is padding or HF-added tokens)


def sp_vocab(model_file: str | Path, vocab_size: int, hf_dir: str | Path | None = None) -> SpVocab:
    """Pieces, scores and token types of ``tokenizer.model``, padded to the model's ``vocab_size``.

    Like llama.cpp's converter: ids past the SentencePiece model are HF-added tokens (from
    ``tokenizer_config.json``'s ``added_tokens_decoder``; special -> control) or ``[PAD{id}]`` placeholders.
    Raises ExportError when the tokenizer has more pieces than the model has embedding rows.
    """
    from .tokenizer import load_sp_proto

    proto = load_sp_proto(model_file)
    n = len(proto.pieces)
    if n > vocab_size:
        raise ExportError(f"{model_file}: {n} pieces but the model has only {vocab_size} embedding rows; pass the "
                          "tokenizer saved with this (merged) model via --tokenizer_path")
    tokens = [p.piece for p in proto.pieces] + [f"[PAD{i}]" for i in range(n, vocab_size)]
    scores = [float(p.score) for p in proto.pieces] + [-1000.0] * (vocab_size - n)
    types = [int(p.type) for p in proto.pieces] + [5] * (vocab_size - n)
    pad_id = proto.trainer_spec.pad_id if proto.trainer_spec.pad_id >= 0 else None
    cfg_file = Path(hf_dir) / "tokenizer_config.json" if hf_dir else None
    if cfg_file is not None and cfg_file.is_file():
        tcfg = read_json(cfg_file)
        for sid, info in (tcfg.get("added_tokens_decoder") or {}).items():
            i = int(sid)
            if n <= i < vocab_size:
                tokens[i], scores[i], types[i] = info["content"], -1000.0, 3 if info.get("special") else 4
        pad = tcfg.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if pad in tokens:
            pad_id = tokens.index(pad)
    ts = proto.trainer_spec
    return SpVocab(tokens, scores, types, ts.bos_id, ts.eos_id, ts.unk_id, pad_id,
                   bool(proto.normalizer_spec.add_dummy_prefix), n)


# --------------------------------------------------------------------------- GGUF
@dataclass
class GgufPlanItem:
    hf_name: str
    name: str
    shape: tuple[int, ...]
    qtype: str  # "f32" | "f16" | "q8_0"


def gguf_plan(model_dir: str | Path, outtype: str = "f16") -> list[GgufPlanItem]:
    """Every output tensor (llama.cpp name, shape, storage type) computed from the headers, no weights read.

    Norms and 1-D tensors stay f32 (llama.cpp needs them in f32); ``q8_0`` needs rows that are a multiple of
    32 values, otherwise the tensor falls back to f16 (as llama.cpp's converter does).
    """
    import gguf

    if outtype not in GGUF_OUTTYPES:
        raise ExportError(f"--outtype {outtype!r}: choose one of {', '.join(GGUF_OUTTYPES)}")
    model_dir = Path(model_dir)
    cfg = _config(model_dir)
    w = _Weights(model_dir)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(cfg["num_hidden_layers"]))
    plan = []
    for key in w.keys():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        name = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"{model_dir}: tensor {key} has no llama.cpp name; is this a plain LlamaForCausalLM?")
        shape = w.shape(key)
        qtype = outtype
        if len(shape) <= 1 or name.endswith("_norm.weight"):
            qtype = "f32"
        elif qtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
            qtype = "f16"
        plan.append(GgufPlanItem(key, name, shape, qtype))
    return plan


def _gguf_tensor(item: GgufPlanItem, t, cfg: dict) -> np.ndarray:
    import gguf

    from .convert import permute_hf_to_meta

    if item.hf_name.endswith("self_attn.q_proj.weight"):
        t = permute_hf_to_meta(t, int(cfg["num_attention_heads"]))
    elif item.hf_name.endswith("self_attn.k_proj.weight"):
        t = permute_hf_to_meta(t, _n_kv_heads(cfg))
    a = t.contiguous().numpy().astype(np.float32)
    if item.qtype == "f16":
        return a.astype(np.float16)
    if item.qtype == "q8_0":
        return gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
    return a


def export_gguf(base_model: str | Path, outfile: str | Path, outtype: str = "f16", tokenizer_path: str | Path | None = None,
                family: str | None = DEFAULT_FAMILY, name: str | None = None, overwrite: bool = False,
                progress: bool = True) -> Path:
    """Write ``outfile`` (GGUF v3, arch llama) from an HF LLaMA folder; returns its path.

    ``family``: a :mod:`helpers.prompts` chat family stored as ``tokenizer.chat_template`` (``None``: none).
    The file is written beside ``outfile`` under a temporary name and renamed when complete.
    """
    import gguf
    from tqdm.auto import tqdm

    from .generation import GENERATION_DEFAULTS

    model_dir, out = Path(base_model), Path(outfile)
    if out.exists() and not overwrite:
        raise ExportError(f"--outfile {out}: file exists; pass --overwrite to replace it")
    cfg = _config(model_dir)
    plan = gguf_plan(model_dir, outtype)
    vocab = sp_vocab(_sp_model_path(model_dir, tokenizer_path), int(cfg["vocab_size"]),
                     tokenizer_path if tokenizer_path and Path(tokenizer_path).is_dir() else model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        _gguf_metadata(writer, cfg, vocab, outtype, name or model_dir.name, family, GENERATION_DEFAULTS)
        weights = _Weights(model_dir)
        for item in plan:
            raw = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                   "q8_0": gguf.GGMLQuantizationType.Q8_0}[item.qtype]
            n = int(np.prod(item.shape))
            if item.qtype == "q8_0":
                byte_shape = gguf.quants.quant_shape_to_byte_shape(item.shape, raw)
                writer.add_tensor_info(item.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=raw)
            else:
                dt = np.dtype(np.float16 if item.qtype == "f16" else np.float32)
                writer.add_tensor_info(item.name, item.shape, dt, n * dt.itemsize)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for item in tqdm(plan, desc=f"gguf {outtype}", unit="tensor", disable=not progress):
            writer.write_tensor_data(_gguf_tensor(item, weights.get(item.hf_name), cfg))
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _gguf_metadata(writer, cfg: dict, vocab: SpVocab, outtype: str, name: str, family: str | None, gen: dict) -> None:
    import gguf

    n_head = int(cfg["num_attention_heads"])
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(_n_kv_heads(cfg))
    writer.add_rope_dimension_count(int(cfg.get("head_dim") or cfg["hidden_size"] // n_head))
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(vocab.add_dummy_prefix)
    if family:
        from . import prompts

        writer.add_chat_template(prompts.chat_template(family, tokenizer=_FixTokens(vocab.tokens)))
    writer.add_sampling_temp(float(gen["temperature"]))
    writer.add_sampling_top_k(int(gen["top_k"]))
    writer.add_sampling_top_p(float(gen["top_p"]))
    writer.add_sampling_penalty_repeat(float(gen["repetition_penalty"]))


class _FixTokens:
    """The one tokenizer method :func:`helpers.prompts.resolve_fix_tokens` needs, over a plain token list."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens

    def convert_ids_to_tokens(self, i: int):
        return self.tokens[i] if 0 <= i < len(self.tokens) else None

    def __len__(self) -> int:
        return len(self.tokens)


def gguf_summary(path: str | Path) -> dict:
    """Metadata (scalars and array lengths) and the tensor table of a GGUF file, read with ``gguf.GGUFReader``."""
    import gguf

    r = gguf.GGUFReader(str(path))
    meta = {}
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            meta[key] = f"[{len(f.data)} items]"
        else:
            v = f.contents()
            meta[key] = v if not isinstance(v, str) or len(v) < 80 else v[:77] + "..."
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape],
                "bytes": int(t.n_bytes)} for t in r.tensors]
    return {"metadata": meta, "tensors": tensors, "size": Path(path).stat().st_size}


# --------------------------------------------------------------------------- llama.cpp (llama-cpp-python)
def llama_cpp_model(gguf_path: str | Path, n_ctx: int = 512, vocab_only: bool = False, n_threads: int | None = None,
                    kv_f32: bool = True):
    """A ``llama_cpp.Llama`` on ``gguf_path`` with every position's logits kept (``logits_all``), quiet.

    ``kv_f32``: keep the KV cache in f32 (llama.cpp's default f16 cache alone moves logits by ~1e-3, which
    would hide layout mistakes in a parity check; deployments keep the f16 default).
    """
    try:
        from llama_cpp import Llama
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ExportError("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36 "
                          "(it compiles llama.cpp, ~4 min on 2 cores)") from e
    threads = n_threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    kv = dict(type_k=0, type_v=0) if kv_f32 else {}  # 0 = GGML_TYPE_F32
    return Llama(model_path=str(gguf_path), n_ctx=n_ctx, logits_all=True, vocab_only=vocab_only, n_threads=threads,
                 n_threads_batch=threads, verbose=False, seed=0, **kv)


def llama_cpp_tokenize(llm, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
    """llama.cpp's token ids for ``text`` (``special``: parse control-token text such as ``</s>``)."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))


def llama_cpp_logits(llm, ids: list[int]) -> np.ndarray:
    """Logits ``[len(ids), vocab]`` of llama.cpp for a whole sequence (fresh context)."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def llama_cpp_greedy(llm, ids: list[int], max_new_tokens: int = 8) -> list[int]:
    """Greedy continuation with llama.cpp's own sampler (temperature 0, no repetition penalty); new ids only."""
    out = []
    for tok in llm.generate(list(ids), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if tok == llm.token_eos() or len(out) >= max_new_tokens:
            break
        out.append(int(tok))
    return out


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """Logits ``[len(ids), vocab]`` of a transformers model, float32."""
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model, ids: list[int], max_new_tokens: int = 8, eos_id: int | None = None) -> list[int]:
    """Greedy continuation with ``model.generate`` (no sampling, no penalty); new ids only, stops at EOS."""
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                             pad_token_id=eos_id, repetition_penalty=1.0)
    return [int(t) for t in out[0, len(ids):]]


def compare_with_llama_cpp(hf_dir: str | Path, gguf_path: str | Path, texts: list[str], max_new_tokens: int = 8,
                           model=None) -> dict:
    """llama.cpp on the GGUF vs transformers on the HF folder, on the same token ids.

    Returns ``{"token_mismatches", "max_abs_logit_diff", "greedy_equal", "greedy": [(hf, llama.cpp), ...]}``;
    ids are those of the course tokenizer, checked against llama.cpp's tokenizer first.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .tokenizer import load_tokenizer

    if not texts:
        raise ExportError("compare_with_llama_cpp: pass at least one text to compare")
    tok = load_tokenizer(hf_dir)
    model = model or AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    llm = llama_cpp_model(gguf_path)
    mism, diffs, greedy = [], [], []
    try:
        for text in texts:
            ids = tok(text)["input_ids"]
            ll_ids = llama_cpp_tokenize(llm, text)
            if ll_ids != ids:
                mism.append((text, ids, ll_ids))
            diffs.append(float(np.abs(llama_cpp_logits(llm, ids) - hf_logits(model, ids)).max()))
            greedy.append((hf_greedy(model, ids, max_new_tokens, tok.eos_token_id),
                           llama_cpp_greedy(llm, ids, max_new_tokens)))
    finally:
        llm.close()
    return {"token_mismatches": mism, "max_abs_logit_diff": max(diffs), "greedy_equal": all(a == b for a, b in greedy),
            "greedy": greedy}


# --------------------------------------------------------------------------- Ollama Modelfile
def _go_text(s: str) -> str:
    """Literal text for a Go template (``{{`` would start an action: emit it as a string action)."""
    return s.replace("{{", '{{ "{{" }}')


def leading_bos(family: str = DEFAULT_FAMILY) -> str:
    """The BOS token text a family's ``pre_prompt`` starts with (seed 003 writes BOS as a leading
    ``<FLM_FIX_TOKEN_n>``), resolved with the family's ``fix_tokens``; ``""`` when there is none."""
    from . import prompts

    fam = prompts.get_family(family)
    m = prompts.FIX_TOKEN_RE.match(fam.pre_prompt)
    return prompts.resolve_fix_tokens(m.group(0), None, fam.fix_tokens) if m else ""


def ollama_template(family: str = DEFAULT_FAMILY) -> str:
    """The Go ``TEMPLATE`` that renders the registry prompt of ``family`` from Ollama's ``.System``/``.Messages``.

    One line, no ``{{-`` trim markers (role strings may start or end with spaces). The leading BOS token
    (:func:`leading_bos`) is left out: llama.cpp/Ollama add BOS themselves (``add_bos_token``), so the text
    equals ``prompts.render(...)`` minus that token.
    """
    from . import prompts

    fam = prompts.get_family(family)
    res = lambda s: prompts.resolve_fix_tokens(s, None, fam.fix_tokens)  # noqa: E731
    pre = res(fam.pre_prompt)[len(leading_bos(fam)):]
    before, _, after = pre.partition("{system}")
    head = _go_text(before) + ("{{ .System }}" + _go_text(after) if fam.has_system else "")
    return (head + '{{ range .Messages }}{{ if eq .Role "user" }}' + _go_text(res(fam.user_role)) + "{{ .Content }}"
            + _go_text(res(fam.bot_role)) + '{{ else if eq .Role "assistant" }}{{ .Content }}'
            + _go_text(res(fam.history_sep)) + "{{ end }}{{ end }}")


def _mf_quote(s: str) -> str:
    if '"""' in s:
        raise ExportError(f'cannot write {s[:40]!r}... into a Modelfile: it contains """')
    return f'"""{s}"""'


def modelfile(gguf_file: str, family: str = DEFAULT_FAMILY, system: str | None = None, num_ctx: int | None = None,
              **sampling) -> str:
    """The text of an Ollama ``Modelfile`` for ``gguf_file`` (a path relative to the Modelfile, or absolute).

    ``TEMPLATE`` from :func:`ollama_template`, ``SYSTEM`` (the family's default unless ``system``), one
    ``PARAMETER stop`` per registry stop string plus EOS, and sampling defaults from
    ``helpers.generation.GENERATION_DEFAULTS`` (override with ``temperature=...`` etc.).
    """
    from . import prompts
    from .generation import GENERATION_DEFAULTS

    fam = prompts.get_family(family)
    gen = {**GENERATION_DEFAULTS, **{k: v for k, v in sampling.items() if v is not None}}
    lines = [f"# Ollama Modelfile generated by `python -m helpers.export modelfile` (chat family: {fam.name})",
             f"FROM {gguf_file}", f"TEMPLATE {_mf_quote(ollama_template(fam))}"]
    sys_text = fam.system if system is None else system
    if fam.has_system and sys_text:
        lines.append(f"SYSTEM {_mf_quote(sys_text)}")
    params = [("temperature", gen["temperature"]), ("top_k", gen["top_k"]), ("top_p", gen["top_p"]),
              ("repeat_penalty", gen["repetition_penalty"]), ("num_predict", gen["max_new_tokens"])]
    if num_ctx:
        params.append(("num_ctx", num_ctx))
    for stop in [*prompts.stop_strings(fam), "</s>"]:
        params.append(("stop", json.dumps(stop, ensure_ascii=False)))
    lines += [f"PARAMETER {k} {v}" for k, v in params]
    return "\n".join(lines) + "\n"


_MF_LINE = re.compile(r'^([A-Za-z]+)[ \t]+(?:"""(.*?)"""|([^\n]*))[ \t]*$', re.M | re.S)


def parse_modelfile(text: str) -> dict:
    '''``{"from", "template", "system", "parameters": [(name, value), ...]}`` of a Modelfile (``"""`` strings
    may span lines; ``#`` lines are comments).'''
    out: dict = {"from": None, "template": None, "system": None, "parameters": []}
    for m in _MF_LINE.finditer(text):  # a match consumes its whole """ string; '#' lines never match
        cmd, value = m.group(1).lower(), m.group(2) if m.group(2) is not None else m.group(3).strip()
        if cmd == "parameter":
            k, _, v = value.partition(" ")
            v = v.strip()
            out["parameters"].append((k, json.loads(v) if v.startswith('"') else v))
        elif cmd in out:
            out[cmd] = value
    return out


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render_go_template(template: str, system: str = "", messages: list[dict] | None = None) -> str:
    """Render the Go-template subset this module emits, with Ollama's ``.System`` and ``.Messages``.

    Supported: text, ``{{ .System }}``, ``{{ .Content }}``, ``{{ .Role }}``, ``{{ "literal" }}``,
    ``{{ range .Messages }}``, ``{{ if X }}`` / ``{{ else if X }}`` / ``{{ else }}`` / ``{{ end }}`` with
    ``X`` a field or ``eq FIELD "literal"``, and ``{{-``/``-}}`` whitespace trimming. Anything else raises
    ExportError (written by hand: no Python package implements Go's text/template).
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if tokens and tokens[-1][0] == "trim_next":
            tokens.pop()
            text = text.lstrip(" \t\r\n")
        tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        if m.group(3):
            tokens.append(("trim_next", ""))
        pos = m.end()
    tail = template[pos:]
    if tokens and tokens[-1][0] == "trim_next":
        tokens.pop()
        tail = tail.lstrip(" \t\r\n")
    tokens.append(("text", tail))
    tree, rest = _go_parse(tokens, 0, ())
    if rest != len(tokens):
        raise ExportError(f"Go template: unexpected {tokens[rest][1]!r}")
    return _go_exec(tree, {"System": system, "Messages": messages or []}, None)


def _go_parse(tokens, i, stop):
    nodes = []
    while i < len(tokens):
        kind, val = tokens[i]
        if kind == "text":
            nodes.append(("text", val))
            i += 1
            continue
        head = val.split(None, 1)[0] if val else ""
        if head in stop or (head == "else" and "else" in stop):
            return nodes, i
        if head == "if":
            node, i = _go_parse_if(tokens, i, val[2:].strip())
            nodes.append(node)
        elif head == "range":
            body, i = _go_parse(tokens, i + 1, ("end",))
            if i >= len(tokens):
                raise ExportError("Go template: range without end")
            nodes.append(("range", val[5:].strip(), body))
            i += 1
        elif head in ("end", "else"):
            raise ExportError(f"Go template: unexpected {{{{ {val} }}}}")
        else:
            nodes.append(("expr", val))
            i += 1
    return nodes, i


def _go_parse_if(tokens, i, cond):
    branches, default = [], []
    body, i = _go_parse(tokens, i + 1, ("end", "else"))
    branches.append((cond, body))
    while i < len(tokens):
        val = tokens[i][1]
        if val == "end":
            return ("if", branches, default), i + 1
        if val.startswith("else if "):
            body, i = _go_parse(tokens, i + 1, ("end", "else"))
            branches.append((val[8:].strip(), body))
        elif val == "else":
            default, i = _go_parse(tokens, i + 1, ("end",))
        else:
            break
    raise ExportError("Go template: if without end")


def _go_value(expr: str, ctx: dict, dot):
    expr = expr.strip()
    if expr.startswith('"'):
        return json.loads(expr)
    if expr.startswith("$."):
        return ctx.get(expr[2:], "")
    if expr.startswith("."):
        src = dot if dot is not None else ctx
        return src.get(expr[1:], "") if isinstance(src, dict) else ""
    m = re.fullmatch(r'eq\s+(\S+)\s+("(?:[^"\\]|\\.)*")', expr)
    if m:
        return _go_value(m.group(1), ctx, dot) == json.loads(m.group(2))
    raise ExportError(f"Go template: {expr!r} is outside the supported subset")


def _go_exec(nodes, ctx, dot) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            out.append(str(_go_value(node[1], ctx, dot)))
        elif node[0] == "if":
            for cond, body in node[1]:
                if _go_value(cond, ctx, dot):
                    out.append(_go_exec(body, ctx, dot))
                    break
            else:
                out.append(_go_exec(node[2], ctx, dot))
        elif node[0] == "range":
            for item in _go_value(node[1], ctx, dot) or []:
                out.append(_go_exec(node[2], ctx, item))
    return "".join(out)


def ollama_messages(messages: list[dict], default_system: str = "") -> tuple[str, list[dict]]:
    """What Ollama passes to the template: ``.System`` (the system message, else the Modelfile's SYSTEM)
    and ``.Messages`` (Go field names ``Role``/``Content``; system messages left out, the emitted template skips
    them anyway)."""
    sys_msgs = [m["content"] for m in messages if m.get("role") == "system"]
    msgs = [{"Role": m["role"], "Content": m.get("content", "")} for m in messages if m.get("role") != "system"]
    return (sys_msgs[-1] if sys_msgs else default_system), msgs


def ollama_prompt(modelfile_text: str, messages: list[dict]) -> str:
    """The prompt text Ollama would build from a Modelfile and a conversation (BOS is added by llama.cpp)."""
    mf = parse_modelfile(modelfile_text)
    system, msgs = ollama_messages(messages, mf["system"] or "")
    return render_go_template(mf["template"], system, msgs)


# --------------------------------------------------------------------------- fastllm .flm
def _flm_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<i", len(b)) + b


def flm_config(cfg: dict, vocab: SpVocab, family: str | None, system: str | None = None) -> dict[str, str]:
    """The key/value header of a ``.flm`` file: model hyper-parameters, generation defaults, tokenizer flags and
    seed 003's chat settings (``pre_prompt``/``user_role``/``bot_role``/``history_sep``), all as strings."""
    from . import prompts
    from .generation import GENERATION_DEFAULTS

    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
            "rms_norm_eps", "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
    out = {k: str(cfg[k]) for k in keys if cfg.get(k) is not None}
    out.update({"model_type": "llama", "architectures": "LlamaForCausalLM", "num_key_value_heads": str(_n_kv_heads(cfg)),
                "rope_theta": str(_rope_theta(cfg)), "max_positions": str(cfg.get("max_position_embeddings", 2048)),
                "tokenizer_use_score": "1", "tokenizer_add_dummy_prefix": str(vocab.add_dummy_prefix),
                "temperature": str(GENERATION_DEFAULTS["temperature"]), "top_k": str(GENERATION_DEFAULTS["top_k"]),
                "top_p": str(GENERATION_DEFAULTS["top_p"]),
                "repetition_penalty": str(GENERATION_DEFAULTS["repetition_penalty"])})
    if family:
        # like torch2flm: the three role strings always (fastllm falls back to its own defaults for missing
        # keys), history_sep only when non-empty
        out.update({k: v for k, v in prompts.fastllm_config(family, system=system).items() if v or k != "history_sep"})
    return out


def _flm_quant(a: np.ndarray, dtype: str) -> bytes:
    """One weight's payload: data-type id then the data, as ``torch2flm.py`` writes it."""
    if dtype == "float32":
        return struct.pack("<i", 0) + a.astype("<f4").tobytes()
    if dtype == "float16":
        return struct.pack("<i", 7) + a.astype("<f2").tobytes()
    if dtype == "int8":  # per row: symmetric range (-max|w|, max|w|), codes 1..255 around 128
        c_max = np.maximum(np.abs(a).max(axis=-1, keepdims=True), 0.1)
        q = np.clip(a / (c_max / 127.0) + 128.5, 1, 255).astype(np.uint8)
        mm = np.concatenate([-c_max, c_max], axis=1).astype("<f4")
        return struct.pack("<ii", 3, 0) + mm.tobytes() + q.tobytes()
    if dtype == "int4":  # per row: (min, max) with min on the zero-point grid, two 4-bit codes per byte
        if a.shape[-1] % 2:
            raise ExportError(f"int4 needs an even row length, got {a.shape}")
        c_min, c_max = a.min(axis=-1, keepdims=True), a.max(axis=-1, keepdims=True)
        scale = np.where(c_max > c_min, (c_max - c_min) / 15.0, 1.0)
        zero = np.clip(np.round(-c_min / scale), 0, 15)
        c_min = -scale * zero
        q = np.clip((a - c_min) / scale + 0.5, 0, 15).astype(np.int8).astype(np.uint8)
        packed = (q[:, 0::2] * 16 + q[:, 1::2]).astype(np.uint8)
        mm = np.concatenate([c_min, c_max], axis=1).astype("<f4")
        return struct.pack("<ii", 8, 0) + mm.tobytes() + packed.tobytes()
    raise ExportError(f"--dtype {dtype!r}: choose one of {', '.join(FLM_DTYPES)}")


def export_fastllm(base_model: str | Path, outfile: str | Path, dtype: str = "float16", family: str | None = DEFAULT_FAMILY,
                   system: str | None = None, tokenizer_path: str | Path | None = None, overwrite: bool = False,
                   progress: bool = True) -> Path:
    """Write fastllm's ``.flm`` (version 2) from an HF LLaMA folder; returns its path.

    Layout (little endian): ``int32 version``; ``int32 n`` then ``n`` key/value strings (``int32 len`` +
    UTF-8, keys sorted); the vocabulary (``int32 n``; per piece ``int32 len``, ``len`` x ``int32`` bytes,
    ``int32 id``, ``float32 score``); the weights (``int32 n``; per weight name, ``int32 ndim``, dims, ``int32
    dtype`` + data). Linear weights get ``dtype`` (float16, int8 or int4 with per-row min/max); embeddings and
    norms stay float32 — as ``torch2flm.tofile`` does.
    """
    from tqdm.auto import tqdm

    if dtype not in FLM_DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose one of {', '.join(FLM_DTYPES)}")
    model_dir, out = Path(base_model), Path(outfile)
    if out.exists() and not overwrite:
        raise ExportError(f"--outfile {out}: file exists; pass --overwrite to replace it")
    cfg = _config(model_dir)
    vocab = sp_vocab(_sp_model_path(model_dir, tokenizer_path), int(cfg["vocab_size"]),
                     tokenizer_path if tokenizer_path and Path(tokenizer_path).is_dir() else model_dir)
    header = flm_config(cfg, vocab, family, system)
    weights = _Weights(model_dir)
    keys = [k for k in weights.keys() if not k.endswith("rotary_emb.inv_freq")]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fo:
            fo.write(struct.pack("<ii", FLM_VERSION, len(header)))
            for k in sorted(header):
                fo.write(_flm_str(k) + _flm_str(header[k]))
            fo.write(struct.pack("<i", vocab.n_pieces))
            for i in range(vocab.n_pieces):
                b = vocab.tokens[i].encode("utf-8")
                fo.write(struct.pack(f"<i{len(b)}iif", len(b), *b, i, vocab.scores[i]))
            fo.write(struct.pack("<i", len(keys)))
            for k in tqdm(keys, desc=f"flm {dtype}", unit="tensor", disable=not progress):
                a = weights.get(k).contiguous().numpy()
                fo.write(_flm_str(k) + struct.pack(f"<i{a.ndim}i", a.ndim, *a.shape))
                linear = a.ndim == 2 and "embed_tokens" not in k
                fo.write(_flm_quant(a, dtype if linear else "float32"))
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


@dataclass
class FlmFile:
    version: int
    config: dict[str, str]
    vocab: list[tuple[bytes, int, float]]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # dequantized, float32
    dtypes: dict[str, int] = field(default_factory=dict)


def read_flm(path: str | Path) -> FlmFile:
    """Read a ``.flm`` file (the layout :func:`export_fastllm` and ``torch2flm`` write) and dequantize every
    weight the way fastllm does (``scale = (max - min) / (2^bits - 1)``, ``zero = round(-min / scale)``)."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return vals

    def string() -> str:
        nonlocal pos
        (n,) = take("<i")
        s = data[pos:pos + n].decode("utf-8")
        pos += n
        return s

    (version,) = take("<i")
    if version != FLM_VERSION:
        raise ExportError(f"{path}: .flm version {version}; only version {FLM_VERSION} is supported")
    (n_kv,) = take("<i")
    config = {}
    for _ in range(n_kv):
        k = string()
        config[k] = string()
    (n_vocab,) = take("<i")
    vocab = []
    for _ in range(n_vocab):
        (n,) = take("<i")
        b = bytes(take(f"<{n}i"))
        tid, score = take("<if")
        vocab.append((b, tid, score))
    (n_w,) = take("<i")
    out = FlmFile(version, config, vocab)
    for _ in range(n_w):
        name = string()
        (ndim,) = take("<i")
        shape = take(f"<{ndim}i")
        (dt,) = take("<i")
        count = int(np.prod(shape))
        if dt in (0, 7):
            np_dt = "<f4" if dt == 0 else "<f2"
            a = np.frombuffer(data, np_dt, count, pos).astype(np.float32).reshape(shape)
            pos += count * np.dtype(np_dt).itemsize
        elif dt in (3, 8):
            take("<i")
            rows, bits = shape[0], (8 if dt == 3 else 4)
            mm = np.frombuffer(data, "<f4", rows * 2, pos).reshape(rows, 2)
            pos += rows * 8
            nbytes = count if bits == 8 else count // 2
            raw = np.frombuffer(data, np.uint8, nbytes, pos)
            pos += nbytes
            q = raw if bits == 8 else np.stack([raw >> 4, raw & 15], axis=-1).reshape(-1)
            q = q.reshape(shape).astype(np.float32)
            scale = (mm[:, 1:] - mm[:, :1]) / (2 ** bits - 1)
            zero = np.round(-mm[:, :1] / np.where(scale == 0, 1, scale))
            a = (q - zero) * scale
        else:
            raise ExportError(f"{path}: weight {name} has data type {dt}, which this reader does not handle")
        out.tensors[name], out.dtypes[name] = a, dt
    if pos != len(data):
        raise ExportError(f"{path}: {len(data) - pos} trailing bytes; the file is damaged")
    return out


def fastllm_path() -> str | None:
    """Where the ``ftllm`` package is: ``FTLLM_PATH`` (a folder holding ``ftllm/``), else the installed one."""
    env = os.environ.get("FTLLM_PATH")
    if env and (Path(env) / "ftllm" / "llm.py").is_file():
        return env
    import importlib.util

    spec = importlib.util.find_spec("ftllm")
    if spec and spec.origin:
        return str(Path(spec.origin).parent.parent)
    return None


_FASTLLM_DRIVER = r"""
import ctypes, json, sys
req = json.loads(sys.argv[1])
sys.path.insert(0, req["ftllm_path"])
from ftllm import llm
llm.set_cpu_threads(req["threads"])
m = llm.model(req["flm"])
lib = llm.fastllm_lib
out = {"encode": [m.encode(t) for t in req.get("encode", [])]}
if req.get("chat"):
    q, hist = req["chat"]["query"], [tuple(h) for h in req["chat"]["history"]]
    out["prompt"] = m.get_prompt(q, hist)
greedy, logits = [], []
for ids in req.get("ids", []):
    arr = (ctypes.c_int * len(ids))(*ids)
    h = lib.launch_response_llm_model(m.model, len(ids), arr, req["max_new_tokens"], 0, False, 1.0, 1, 1.0, 1.0,
                                      False, 0, None)
    toks = []
    while True:
        t = lib.fetch_response_llm_model(m.model, h)
        if t <= -1:
            break
        toks.append(t)
    greedy.append(toks)
    h = lib.launch_response_llm_model(m.model, len(ids), arr, 1, 0, False, 1.0, 1, 1.0, 1.0, True, 0, None)
    n = lib.get_tokenizer_vocab_size(m.model)
    buf = (ctypes.c_float * (n * 4))()
    lib.fetch_response_logits_llm_model(m.model, h, buf)
    logits.append(list(buf)[:n])
    while lib.fetch_response_logits_llm_model(m.model, h, buf) != -1:
        pass
out["greedy"], out["last_logits"] = greedy, logits
print("\n@@JSON@@" + json.dumps(out))
"""


def fastllm_run(flm_path: str | Path, ids: list[list[int]] = (), encode: list[str] = (), chat: dict | None = None,
                max_new_tokens: int = 8, timeout: int = 300) -> dict:
    """Load ``flm_path`` in fastllm (``ftllm``'s CPU library) in a subprocess and return what it computed.

    ``ids``: token sequences to continue greedily (``greedy``: new ids) and to score (``last_logits``: logits at
    the last position); ``encode``: texts for fastllm's tokenizer; ``chat``: ``{"query", "history": [[q, a]]}``
    for fastllm's own prompt builder (``prompt``). A subprocess because ``ftllm`` calls ``exit()`` when its
    library does not load. Raises ExportError when ``ftllm`` is not installed.
    """
    path = fastllm_path()
    if path is None:
        raise ExportError("fastllm (ftllm) is not installed: pip install --no-deps ftllm==1.9.0 (its CPU library "
                          "libfastllm_tools-cpu.so works without CUDA), or set FTLLM_PATH to an unpacked wheel")
    req = {"ftllm_path": path, "flm": str(flm_path), "ids": [list(map(int, x)) for x in ids], "encode": list(encode),
           "chat": chat, "max_new_tokens": max_new_tokens, "threads": int(os.environ.get("OMP_NUM_THREADS") or 1)}
    proc = subprocess.run([sys.executable, "-c", _FASTLLM_DRIVER, json.dumps(req)], capture_output=True, encoding="utf-8",
                          errors="replace", timeout=timeout, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    if "@@JSON@@" not in proc.stdout:
        raise ExportError(f"fastllm could not run {flm_path} (exit {proc.returncode}):\n"
                          f"{(proc.stdout + proc.stderr)[-2000:]}")
    return json.loads(proc.stdout.split("@@JSON@@", 1)[1])


# --------------------------------------------------------------------------- distributable folders
def package_gguf(gguf_file: str | Path, output_dir: str | Path, family: str = DEFAULT_FAMILY, model_name: str = "course-model",
                 overwrite: bool = False) -> Path:
    """An Ollama/llama.cpp-ready folder: the GGUF, a ``Modelfile`` (``FROM ./<file>``), a model card with the
    ``ollama create`` / llama.cpp commands and a ``SHA256SUMS`` manifest; returns the folder."""
    src = Path(gguf_file)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        shutil.copyfile(src, tmp / src.name)
        atomic_write_text(tmp / "Modelfile", modelfile(f"./{src.name}", family))
        atomic_write_text(tmp / "README.md", (
            f"---\ntags: [gguf, llama.cpp, ollama, chinese]\n---\n# {model_name} (GGUF)\n\n"
            f"`{src.name}` ({src.stat().st_size / 2**20:.1f} MiB) for llama.cpp and Ollama; chat format "
            f"`{family}` (see `Modelfile`).\n\n## Ollama\n\n```bash\nollama create {model_name} -f Modelfile\n"
            f"ollama run {model_name}\n```\n\n## llama.cpp\n\n```bash\nllama-cli -m {src.name} -cnv --temp 0.2\n```\n\n"
            "Check the files first: `sha256sum -c SHA256SUMS`.\n"))
        write_manifest(tmp)
    return Path(output_dir)


def package_fastllm(flm_file: str | Path, output_dir: str | Path, model_name: str = "course-model",
                    overwrite: bool = False) -> Path:
    """A fastllm folder: the ``.flm``, a model card with the ``ftllm`` commands and ``SHA256SUMS``; returns it."""
    src = Path(flm_file)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        shutil.copyfile(src, tmp / src.name)
        atomic_write_text(tmp / "README.md", (
            f"---\ntags: [fastllm, chinese]\n---\n# {model_name} (fastllm)\n\n`{src.name}` "
            f"({src.stat().st_size / 2**20:.1f} MiB), chat settings inside the file.\n\n```python\n"
            f"from ftllm import llm\nmodel = llm.model('{src.name}')\nprint(model.response('你好'))\n```\n\n"
            "Check the files first: `sha256sum -c SHA256SUMS`.\n"))
        write_manifest(tmp)
    return Path(output_dir)


def artifact_sizes(paths: dict[str, str | Path]):
    """A table (pandas DataFrame) ``artifact, files, MiB`` of files or folders (hidden files excluded)."""
    import pandas as pd

    rows = []
    for name, p in paths.items():
        p = Path(p)
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
        rows.append({"artifact": name, "files": len(files), "MiB": round(sum(f.stat().st_size for f in files) / 2**20, 3)})
    return pd.DataFrame(rows)


# Real model shapes come from the one table, helpers.catalog (config.json of the hfl releases).
SIZE_MODELS = ("hfl/chinese-alpaca-2-1.3b", "hfl/chinese-alpaca-2-7b", "hfl/chinese-alpaca-2-13b")
SIZE_FORMATS = ("hf fp16", "gguf f32", "gguf f16", "gguf q8_0", "flm float16", "flm int8", "flm int4")


def _shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    v, h, f = int(cfg["vocab_size"]), int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    kv = h // int(cfg["num_attention_heads"]) * _n_kv_heads(cfg)
    out = [("embed", (v, h)), ("norm", (h,))] + ([] if cfg.get("tie_word_embeddings") else [("lm_head", (v, h))])
    for _ in range(int(cfg["num_hidden_layers"])):
        out += [("q", (h, h)), ("k", (kv, h)), ("v", (kv, h)), ("o", (h, h)), ("gate", (f, h)), ("up", (f, h)),
                ("down", (h, f)), ("norm", (h,)), ("norm", (h,))]
    return out


def tensor_bytes(cfg: dict, fmt: str) -> int:
    """Bytes of the weights of a LLaMA with config ``cfg`` stored as ``fmt`` (one of ``SIZE_FORMATS``), from the
    storage rules above (norms f32; q8_0 = 34 bytes per 32 values, f16 where rows are not a multiple of 32;
    fastllm keeps embeddings in f32 and adds a (min, max) float pair per row of a quantized matrix).
    Headers (vocabulary, metadata) are not included."""
    total = 0
    for kind, shape in _shapes(cfg):
        n = int(np.prod(shape))
        if fmt == "hf fp16":
            total += 2 * n
        elif len(shape) == 1 or fmt in ("gguf f32", "flm float32"):
            total += 4 * n
        elif fmt == "gguf f16":
            total += 2 * n
        elif fmt == "gguf q8_0":
            total += n * 34 // 32 if shape[-1] % 32 == 0 else 2 * n
        elif kind == "embed":  # fastllm: embeddings stay float32
            total += 4 * n
        elif fmt == "flm float16":
            total += 2 * n
        elif fmt in ("flm int8", "flm int4"):
            total += (n if fmt == "flm int8" else n // 2) + 8 * shape[0]
        else:
            raise ExportError(f"format {fmt!r}: choose one of {SIZE_FORMATS}")
    return total


def size_table(configs: dict[str, dict] | None = None):
    """A DataFrame (GiB) of :func:`tensor_bytes` for every format and config (default: the :data:`SIZE_MODELS` of
    :mod:`helpers.catalog`, columns named by their short names)."""
    import pandas as pd

    from . import catalog

    configs = configs or {catalog.get(r).short_name: catalog.get(r).config for r in SIZE_MODELS}
    return pd.DataFrame({name: {fmt: round(tensor_bytes(cfg, fmt) / 2**30, 2) for fmt in SIZE_FORMATS}
                         for name, cfg in configs.items()})


# --------------------------------------------------------------------------- tiny inputs
def tiny_merged_model(kind: str = "alpaca") -> Path:
    """The tiny merged model with the extended vocabulary (cached under ``<workspace>/export``):
    ``llama`` = base + Chinese-LLaMA-LoRA, ``alpaca`` = base + Chinese-LLaMA-LoRA + Chinese-Alpaca-LoRA,
    merged by :func:`helpers.merge.merge_lora_into` like step 04."""
    from filelock import FileLock

    from . import tiny
    from .core import workspace
    from .merge import merge_lora_into

    if kind not in ("llama", "alpaca"):
        raise ExportError(f"kind {kind!r}: choose llama or alpaca")
    loras = tiny.lora_adapters()
    chain = [loras["llama"]] + ([loras["alpaca"]] if kind == "alpaca" else [])
    base = tiny.hf_model()
    key = "|".join((base / ".fingerprint").read_text(encoding="utf-8") + (p.parent / ".fingerprint").read_text(encoding="utf-8")
                   for p in chain)
    root = workspace("export")
    out = root / f"tiny-chinese-{kind}-merged"
    stamp = root / f".tiny-chinese-{kind}-merged.key"
    with FileLock(str(root / f".{kind}.lock")):
        if not (out.is_dir() and stamp.is_file() and stamp.read_text(encoding="utf-8") == key):
            merge_lora_into(base, chain, out, output_type="huggingface", overwrite=True, progress=False)
            atomic_write_text(stamp, key)
    return out


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.export", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gguf", help="HF LLaMA folder -> GGUF (llama.cpp / Ollama)")
    g.add_argument("--base_model", required=True)
    g.add_argument("--outfile", required=True)
    g.add_argument("--outtype", default="f16", choices=GGUF_OUTTYPES)
    g.add_argument("--tokenizer_path", default=None)
    g.add_argument("--template", default=DEFAULT_FAMILY, help="chat family stored as tokenizer.chat_template ('' = none)")
    g.add_argument("--overwrite", action="store_true")
    m = sub.add_parser("modelfile", help="Ollama Modelfile for a GGUF file")
    m.add_argument("--gguf", required=True, help="GGUF path as FROM writes it (relative to the Modelfile or absolute)")
    m.add_argument("--template", default=DEFAULT_FAMILY)
    m.add_argument("--system", default=None)
    m.add_argument("--num_ctx", type=int, default=None)
    m.add_argument("--temperature", type=float, default=None)
    m.add_argument("--outfile", default="Modelfile")
    f = sub.add_parser("fastllm", help="HF LLaMA folder -> fastllm .flm")
    f.add_argument("--base_model", required=True)
    f.add_argument("--outfile", required=True)
    f.add_argument("--dtype", default="float16", choices=tuple(FLM_DTYPES))
    f.add_argument("--template", default=DEFAULT_FAMILY, help="chat family for pre_prompt/user_role/bot_role/history_sep")
    f.add_argument("--system", default=None)
    f.add_argument("--tokenizer_path", default=None)
    f.add_argument("--overwrite", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "gguf":
            out = export_gguf(args.base_model, args.outfile, args.outtype, args.tokenizer_path, args.template or None,
                              overwrite=args.overwrite)
        elif args.cmd == "modelfile":
            out = atomic_write_text(args.outfile, modelfile(args.gguf, args.template, args.system, args.num_ctx,
                                                            temperature=args.temperature))
        else:
            out = export_fastllm(args.base_model, args.outfile, args.dtype, args.template or None, args.system,
                                 args.tokenizer_path, overwrite=args.overwrite)
    except CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({Path(out).stat().st_size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
