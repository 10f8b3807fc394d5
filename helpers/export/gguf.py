"""GGUF (llama.cpp, Ollama): an HF LLaMA folder written the way llama.cpp's ``convert_hf_to_gguf.py`` writes one.

llama hyper-parameters (rope scaling included), the SentencePiece vocabulary (pieces, scores, token types),
llama.cpp tensor names (the ``gguf`` package's name map) and Meta's *interleaved* q/k rows (llama.cpp's rotary
kernel expects them; HF stores them half-split: :func:`helpers.weights.hf_to_meta_tensor`). Tensors are
streamed one at a time (header first), so a 7B model needs about one tensor of extra memory. ``gguf`` is the
optional ``[export]`` extra: imported inside the functions.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import prompts
from ..generation import GENERATION_DEFAULTS
from ..weights import WeightReader, hf_to_meta_tensor, kv_heads, rope_parameters
from .source import DEFAULT_FAMILY, ExportError, SpVocab, read_config, sp_model_path, sp_vocab, tokenizer_dir

GGUF_OUTTYPES = ("f32", "f16", "q8_0")


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
    cfg = read_config(model_dir)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(cfg["num_hidden_layers"]))
    plan = []
    with WeightReader(model_dir) as w:
        for key in w.keys:
            if key.endswith("rotary_emb.inv_freq"):
                continue
            name = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ExportError(f"{model_dir}: tensor {key} has no llama.cpp name; is this a plain LlamaForCausalLM?")
            shape, qtype = w.shape(key), outtype
            if len(shape) <= 1 or name.endswith("_norm.weight"):
                qtype = "f32"
            elif qtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
                qtype = "f16"
            plan.append(GgufPlanItem(key, name, shape, qtype))
    return plan


def _gguf_tensor(item: GgufPlanItem, t, cfg: dict) -> np.ndarray:
    """One tensor as llama.cpp stores it: q/k rows in Meta's interleaved rotary order, then f32/f16/q8_0."""
    import gguf

    _, t = hf_to_meta_tensor(item.hf_name, t, int(cfg["num_attention_heads"]), kv_heads(cfg))
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

    model_dir, out = Path(base_model), Path(outfile)
    if out.exists() and not overwrite:
        raise ExportError(f"--outfile {out}: file exists; pass --overwrite to replace it")
    cfg = read_config(model_dir)
    plan = gguf_plan(model_dir, outtype)
    vocab = sp_vocab(sp_model_path(model_dir, tokenizer_path), int(cfg["vocab_size"]),
                     tokenizer_dir(model_dir, tokenizer_path))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        _gguf_metadata(writer, cfg, vocab, outtype, name or model_dir.name, family)
        for item in plan:
            _add_tensor_info(writer, item)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with WeightReader(model_dir) as weights:
            for item in tqdm(plan, desc=f"gguf {outtype}", unit="tensor", disable=not progress):
                writer.write_tensor_data(_gguf_tensor(item, weights.get(item.hf_name).float(), cfg))
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _add_tensor_info(writer, item: GgufPlanItem) -> None:
    """Announce one tensor in the header (name, shape, storage type, bytes) before any data is written."""
    import gguf

    raw = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
           "q8_0": gguf.GGMLQuantizationType.Q8_0}[item.qtype]
    if item.qtype == "q8_0":
        byte_shape = gguf.quants.quant_shape_to_byte_shape(item.shape, raw)
        writer.add_tensor_info(item.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=raw)
    else:
        dt = np.dtype(np.float16 if item.qtype == "f16" else np.float32)
        writer.add_tensor_info(item.name, item.shape, dt, int(np.prod(item.shape)) * dt.itemsize)


def _gguf_rope(writer, cfg: dict) -> None:
    """Rope base and scaling as llama.cpp's converter writes them (linear = position interpolation, YaRN)."""
    import gguf

    rope = rope_parameters(cfg)
    writer.add_rope_freq_base(rope.theta)
    if rope.scaling is None:
        return
    kinds = {"linear": gguf.RopeScalingType.LINEAR, "yarn": gguf.RopeScalingType.YARN}
    if rope.scaling not in kinds:
        raise ExportError(f"config.json: rope scaling {rope.scaling!r} is not exported to GGUF by this course "
                          "(linear and yarn are); use llama.cpp's convert_hf_to_gguf.py for this model")
    writer.add_rope_scaling_type(kinds[rope.scaling])
    writer.add_rope_scaling_factor(rope.factor)
    if rope.original_context:
        writer.add_rope_scaling_orig_ctx_len(rope.original_context)


def _gguf_metadata(writer, cfg: dict, vocab: SpVocab, outtype: str, name: str, family: str | None) -> None:
    """Every key/value of the header: hyper-parameters, rope, the vocabulary, chat template, sampling defaults."""
    import gguf

    n_head, gen = int(cfg["num_attention_heads"]), GENERATION_DEFAULTS
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(kv_heads(cfg))
    writer.add_rope_dimension_count(int(cfg.get("head_dim") or cfg["hidden_size"] // n_head))
    _gguf_rope(writer, cfg)
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types([int(t) for t in vocab.types])
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(vocab.add_dummy_prefix)
    if family:
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
