"""What every export reads from the merged Hugging Face folder: its ``config.json`` and its SentencePiece vocabulary."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core import CourseError
from ..io import read_json
from ..tokenizer import load_sp_proto
from ..weights import TokenType

DEFAULT_FAMILY = "chinese-alpaca-2"


class ExportError(CourseError):
    """Bad input to an export: the message names the file/flag and says what to do."""


def read_config(model_dir: Path) -> dict:
    """``config.json`` of a LLaMA folder; raises ExportError when it is missing or not a LLaMA."""
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"--base_model {model_dir}: no config.json; pass a merged Hugging Face model folder "
                          "(python -m helpers.merge ... --output_type huggingface)")
    cfg = read_json(model_dir / "config.json")
    arch = (cfg.get("architectures") or ["?"])[0]
    if cfg.get("model_type") != "llama":
        raise ExportError(f"{model_dir / 'config.json'}: model_type {cfg.get('model_type')!r} ({arch}); this exporter "
                          "handles LLaMA models only (model_type 'llama')")
    return cfg


def sp_model_path(model_dir: Path, tokenizer_path: str | Path | None) -> Path:
    """The ``tokenizer.model`` to export: ``tokenizer_path`` (a file or a folder), else the model folder's."""
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
    types: list[TokenType]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int | None
    add_dummy_prefix: bool
    n_pieces: int  # pieces in tokenizer.model (the rest is padding or HF-added tokens)


def sp_vocab(model_file: str | Path, vocab_size: int, hf_dir: str | Path | None = None) -> SpVocab:
    """Pieces, scores and token types of ``tokenizer.model``, padded to the model's ``vocab_size``.

    Like llama.cpp's converter: ids past the SentencePiece model are HF-added tokens (from
    ``tokenizer_config.json``'s ``added_tokens_decoder``; special -> CONTROL, else USER_DEFINED) or ``[PAD{id}]``
    placeholders (UNUSED). Raises ExportError when the tokenizer has more pieces than the model has embedding rows.
    """
    proto = load_sp_proto(model_file)
    n = len(proto.pieces)
    if n > vocab_size:
        raise ExportError(f"{model_file}: {n} pieces but the model has only {vocab_size} embedding rows; pass the "
                          "tokenizer saved with this (merged) model via --tokenizer_path")
    tokens = [p.piece for p in proto.pieces] + [f"[PAD{i}]" for i in range(n, vocab_size)]
    scores = [float(p.score) for p in proto.pieces] + [-1000.0] * (vocab_size - n)
    types = [TokenType(p.type) for p in proto.pieces] + [TokenType.UNUSED] * (vocab_size - n)
    pad_id = proto.trainer_spec.pad_id if proto.trainer_spec.pad_id >= 0 else None
    cfg_file = Path(hf_dir) / "tokenizer_config.json" if hf_dir else None
    if cfg_file is not None and cfg_file.is_file():
        tcfg = read_json(cfg_file)
        for sid, info in (tcfg.get("added_tokens_decoder") or {}).items():
            i = int(sid)
            if n <= i < vocab_size:
                tokens[i], scores[i] = info["content"], -1000.0
                types[i] = TokenType.CONTROL if info.get("special") else TokenType.USER_DEFINED
        pad = tcfg.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if pad in tokens:
            pad_id = tokens.index(pad)
    ts = proto.trainer_spec
    return SpVocab(tokens, scores, types, ts.bos_id, ts.eos_id, ts.unk_id, pad_id,
                   bool(proto.normalizer_spec.add_dummy_prefix), n)


def tokenizer_dir(model_dir: Path, tokenizer_path: str | Path | None) -> Path:
    """The folder whose ``tokenizer_config.json`` names the added tokens: ``tokenizer_path`` if it is a folder,
    else the model folder."""
    return Path(tokenizer_path) if tokenizer_path and Path(tokenizer_path).is_dir() else model_dir
