"""Course step 03: extend the LLaMA vocabulary with a Chinese SentencePiece model."""
from __future__ import annotations

from pathlib import Path

from .tokenizer import load_sp_proto

# LLaMA's tokenizer.model settings (read from the released model's trainer_spec).
LLAMA_SP_SETTINGS = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
)


def train_sp_model(inputs, model_prefix: str | Path, vocab_size: int, character_coverage: float = 1.0,
                   seed_sentencepiece_size: int = 1_000_000, **overrides) -> Path:
    """Train a LLaMA-style BPE SentencePiece model deterministically (one thread)."""
    import sentencepiece as spm

    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    inputs = [str(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    kwargs = dict(LLAMA_SP_SETTINGS)
    kwargs.update(
        input=",".join(inputs), model_prefix=str(model_prefix), vocab_size=vocab_size,
        character_coverage=character_coverage, num_threads=1, input_sentence_size=0,
        shuffle_input_sentence=False, minloglevel=2, seed_sentencepiece_size=seed_sentencepiece_size,
    )
    kwargs.update(overrides)
    spm.SentencePieceTrainer.train(**kwargs)
    return model_prefix.with_suffix(".model")


def merge_sp_models(llama_model: str | Path, chinese_model: str | Path, out_model: str | Path) -> dict:
    """Append the Chinese pieces the LLaMA model lacks, as the original ``merge_tokenizers.py`` does.

    Every base piece keeps its id; returns the counts.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    llama = load_sp_proto(llama_model)
    chinese = load_sp_proto(chinese_model)
    have = {p.piece for p in llama.pieces}
    base_size = len(llama.pieces)
    added = 0
    for p in chinese.pieces:
        if p.piece in have or p.type != 1:  # only NORMAL pieces; control/byte pieces exist already
            continue
        new = sp_pb2.ModelProto().SentencePiece()
        new.piece = p.piece
        new.score = 0
        llama.pieces.append(new)
        have.add(p.piece)
        added += 1
    out_model = Path(out_model)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    out_model.write_bytes(llama.SerializeToString())
    return {"base": base_size, "chinese": len(chinese.pieces), "added": added, "merged": len(llama.pieces)}


def chinese_training_inputs() -> list[Path]:
    """The files the Chinese SentencePiece model is trained on."""
    from .core import DATA_DIR

    return [DATA_DIR / "zh_corpus.txt"]


def train_chinese_sp(model_prefix: str | Path, vocab_size: int = 20000) -> Path:
    """Train ``chinese_sp.model`` (the file the original project downloads) from ``data/``."""
    return train_sp_model(chinese_training_inputs(), model_prefix, vocab_size, character_coverage=0.9995)


def add_pad_piece(model_file: str | Path, out_model: str | Path, pad: str = "[PAD]") -> int:
    """Append ``pad`` as a control piece: Chinese-Alpaca's 49953 -> 49954 step. Returns the new size."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = load_sp_proto(model_file)
    if any(p.piece == pad for p in proto.pieces):
        raise ValueError(f"{model_file}: already has {pad}")
    new = sp_pb2.ModelProto().SentencePiece()
    new.piece, new.score, new.type = pad, 0.0, 3  # CONTROL: never produced from text
    proto.pieces.append(new)
    Path(out_model).write_bytes(proto.SerializeToString())
    return len(proto.pieces)


def merge_tokenizers(llama_model: str | Path, chinese_model: str | Path, out_dir: str | Path) -> dict:
    """The vocabulary step's outputs under ``out_dir``:

    ``merged_tokenizer_sp/chinese_llama.model``, ``merged_tokenizer_hf/`` (Chinese-LLaMA) and
    ``merged_tokenizer_sp/chinese_alpaca.model``, ``alpaca_tokenizer_hf/`` (Chinese-Alpaca, + ``[PAD]``).
    """
    from .tokenizer import save_hf_tokenizer

    out = Path(out_dir)
    sp_dir = out / "merged_tokenizer_sp"
    stats = merge_sp_models(llama_model, chinese_model, sp_dir / "chinese_llama.model")
    save_hf_tokenizer(sp_dir / "chinese_llama.model", out / "merged_tokenizer_hf")
    stats["alpaca"] = add_pad_piece(sp_dir / "chinese_llama.model", sp_dir / "chinese_alpaca.model")
    save_hf_tokenizer(sp_dir / "chinese_alpaca.model", out / "alpaca_tokenizer_hf", pad_token="[PAD]")
    return stats
