"""Course step 03: extend the LLaMA vocabulary with a Chinese SentencePiece model.

    python -m helpers.vocab --llama_tokenizer_dir DIR --chinese_sp_model_file chinese_sp.model [--output_dir OUT]
    python -m helpers.vocab --llama_tokenizer_dir DIR --vocab_size 20000      # train chinese_sp.model first

The Chinese model is trained on the project's own corpus (``data/zh_corpus.txt``) plus the word
frequencies of ``jieba``'s ``dict.txt`` (about 350k words with counts, MIT), fed to sentencepiece as a
weighted TSV (``sentence<TAB>count``, ``input_format="tsv"``). The merge appends the Chinese pieces
LLaMA lacks, as the original ``merge_tokenizers.py`` does, with one deliberate difference: the
original gives every new piece score 0, so sentencepiece breaks the many ties by *position* (leftmost
pair first), which no ranked BPE merge list can express; Hugging Face's BPE then segments differently.
We give the new pieces distinct scores that keep the Chinese model's own merge order, so sentencepiece
and the Hugging Face tokenizer agree exactly.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import tempfile
from collections import Counter
from pathlib import Path

from .core import DATA_DIR, CourseError, cli_main
from .io import atomic_dir, atomic_write_bytes
from .weights import TokenType
from .tokenizer import TokenizerError, load_sp_proto, save_hf_tokenizer

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
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
CJK_WORD = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+$")
# Share of the (weighted) training characters that comes from the project's corpus; the rest is jieba's dict.
CORPUS_SHARE = 0.2
MIN_COVERAGE = 0.98  # sentencepiece refuses a lower character_coverage
PROTOBUF_HINT = "protobuf is needed to edit SentencePiece models: pip install protobuf sentencepiece"


class VocabError(CourseError):
    """Bad input to the vocabulary step (not a SentencePiece model, existing output, ...)."""


def _sp_pb2():
    """The sentencepiece protobuf module, or a :class:`VocabError` with the install hint."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    except ImportError as e:
        raise VocabError(PROTOBUF_HINT) from e
    return sp_pb2


def train_sp_model(inputs, model_prefix: str | Path, vocab_size: int, character_coverage: float = 1.0,
                   seed_sentencepiece_size: int = 1_000_000, **overrides) -> Path:
    """Train a LLaMA-style BPE SentencePiece model deterministically (one thread); returns the ``.model`` path."""
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
    return model_prefix.with_name(model_prefix.name + ".model")  # not with_suffix: "zh-v1.5" -> "zh-v1.5.model"


def load_base_sp(path: str | Path):
    """The LLaMA ``ModelProto`` from a folder (``tokenizer.model``) or a file; clear errors otherwise."""
    p = Path(path)
    model = p / "tokenizer.model" if p.is_dir() else p
    if p.is_dir() and not model.is_file():
        found = sorted(x.name for x in p.iterdir())
        if (p / "tokenizer.json").is_file():
            raise VocabError(f"{p}: has tokenizer.json but no tokenizer.model. Only SentencePiece models can be merged "
                             "(LLaMA-1/2 ship tokenizer.model); a tokenizer.json-only BPE tokenizer cannot be extended "
                             "this way.")
        raise VocabError(f"{p}: no tokenizer.model found (files: {found}); pass --llama_tokenizer_dir of the original "
                         "LLaMA tokenizer")
    if not model.is_file():
        raise VocabError(f"{model}: file not found; pass --llama_tokenizer_dir of the original LLaMA tokenizer")
    head = model.read_bytes()[:200]
    try:
        first = head.decode("ascii").splitlines()[0]
        if re.fullmatch(r"[A-Za-z0-9+/=]+ \d+", first):
            raise VocabError(f"{model}: this is a tiktoken BPE ranks file (as in LLaMA-3), not SentencePiece. "
                             "Only SentencePiece models can be merged with this step.")
    except (UnicodeDecodeError, IndexError):
        pass
    try:
        proto = load_sp_proto(model)
    except TokenizerError as e:
        raise VocabError(f"{e} Only SentencePiece models can be merged.") from e
    if proto.trainer_spec.model_type != 2:
        raise VocabError(f"{model}: not a BPE SentencePiece model like LLaMA's; only LLaMA-style models can be merged")
    return proto


def merge_sp_models(llama_model: str | Path, chinese_model: str | Path, out_model: str | Path,
                    zero_scores: bool = False) -> dict:
    """Append the Chinese pieces the LLaMA model lacks, as the original ``merge_tokenizers.py`` does.

    Every base piece keeps its id and score. New pieces get distinct scores above every base score, in the
    Chinese model's own order (``max_base + n_new - k``): no ties, so Hugging Face's ranked BPE merges and
    sentencepiece agree (the original's constant score 0 made sentencepiece break ties by position).
    ``zero_scores=True`` reproduces the original script exactly (to show the mismatch).
    Returns the counts ``{"base", "chinese", "added", "merged"}``.
    """
    sp_pb2 = _sp_pb2()
    llama = load_base_sp(llama_model)
    try:
        chinese = load_sp_proto(chinese_model)
    except TokenizerError as e:
        raise VocabError(f"{e} (--chinese_sp_model_file)") from e
    have = {p.piece for p in llama.pieces}
    base_size = len(llama.pieces)
    new_pieces = []
    for p in chinese.pieces:
        if p.piece in have or p.type != TokenType.NORMAL:  # only NORMAL pieces; control/byte pieces exist already
            continue
        new_pieces.append(p.piece)
        have.add(p.piece)
    top = max((p.score for p in llama.pieces if p.type == TokenType.NORMAL), default=0.0)
    for k, piece in enumerate(new_pieces):
        new = sp_pb2.ModelProto().SentencePiece()
        new.piece = piece
        new.score = 0.0 if zero_scores else float(top + len(new_pieces) - k)
        llama.pieces.append(new)
    out_model = Path(out_model)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_model, llama.SerializeToString())
    return {"base": base_size, "chinese": len(chinese.pieces), "added": len(new_pieces), "merged": len(llama.pieces)}


def jieba_dict_path() -> Path:
    """``jieba``'s bundled ``dict.txt`` (word, count, part of speech per line)."""
    spec = importlib.util.find_spec("jieba")
    if spec is None or spec.origin is None:
        raise VocabError("jieba is needed for the Chinese word frequencies: pip install jieba")
    return Path(spec.origin).parent / "dict.txt"


def chinese_training_inputs() -> list[Path]:
    """The files the Chinese SentencePiece model is trained on: the project corpus and jieba's dict.txt."""
    return [DATA_DIR / "zh_corpus.txt", jieba_dict_path()]


def jieba_words(path: str | Path | None = None, top: int | None = None) -> list[tuple[str, int]]:
    """``(word, count)`` for the all-Chinese words of jieba's dictionary, most frequent first."""
    rows = []
    for line in Path(path or jieba_dict_path()).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and CJK_WORD.match(parts[0]) and parts[1].isdigit():
            rows.append((parts[0], int(parts[1])))
    rows.sort(key=lambda r: (-r[1], r[0]))
    return rows[:top] if top else rows


def write_weighted_tsv(out: str | Path, corpus_files, words: list[tuple[str, int]],
                       corpus_share: float = CORPUS_SHARE) -> dict:
    """Write sentencepiece's TSV input (``text<TAB>count``): jieba words with their counts, plus every corpus
    line repeated so the corpus is ``corpus_share`` of all weighted characters. Returns weights and sizes."""
    lines = []
    for f in corpus_files:
        lines += [x.strip().replace("\t", " ") for x in Path(f).read_text(encoding="utf-8").splitlines() if x.strip()]
    word_chars = sum(len(w) * c for w, c in words)
    corpus_chars = sum(len(x) for x in lines) or 1
    weight = max(1, round(corpus_share / (1 - corpus_share) * word_chars / corpus_chars)) if words else 1
    rows = [f"{w}\t{c}" for w, c in words] + [f"{x}\t{weight}" for x in lines]
    Path(out).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"words": len(words), "corpus_lines": len(lines), "corpus_weight": weight}


def _coverage_for(tsv: Path, max_chars: int, wanted: float) -> float:
    """The character coverage that keeps sentencepiece's required characters within ``max_chars``."""
    counts: Counter = Counter()
    for row in tsv.read_text(encoding="utf-8").splitlines():
        text, _, n = row.rpartition("\t")
        n = int(n)
        for ch in text:
            counts[ch] += n
    total = sum(counts.values())
    freqs = sorted(counts.values(), reverse=True)
    if len(freqs) <= max_chars:
        return wanted
    return min(wanted, sum(freqs[:max_chars]) / total)


def train_chinese_sp(model_prefix: str | Path, vocab_size: int = 20000, jieba_top: int | None = None,
                     corpus_share: float = CORPUS_SHARE, character_coverage: float = 0.9995) -> Path:
    """Train ``chinese_sp.model`` (the file the original project downloads); returns its path.

    Input: ``data/zh_corpus.txt`` + jieba's word counts as weighted TSV. ``jieba_top`` keeps only the most
    frequent words (default: ``20 * vocab_size``). No dummy prefix: Chinese words are not preceded by spaces,
    so pieces like ``中国`` (not ``▁中国``) are the useful ones. For small vocabularies the coverage is lowered
    (and, below 98 %, the word list shortened) so that single characters take at most 60 % of the pieces.
    """
    corpus, dict_txt = chinese_training_inputs()
    top = jieba_top or 20 * vocab_size
    words = jieba_words(dict_txt, top=top)
    with tempfile.TemporaryDirectory(prefix="zh_sp_") as tmp:
        tsv = Path(tmp) / "zh_weighted.tsv"
        while True:  # small vocabularies: fewer words, so that >= 98 % of the characters fit in 60 % of the pieces
            write_weighted_tsv(tsv, [corpus], words[:top], corpus_share)
            coverage = _coverage_for(tsv, int(vocab_size * 0.6), character_coverage)
            if coverage >= MIN_COVERAGE or top <= 1000:
                break
            top //= 2
        return train_sp_model([tsv], model_prefix, vocab_size, character_coverage=max(coverage, MIN_COVERAGE),
                              input_format="tsv", add_dummy_prefix=False, byte_fallback=False,
                              max_sentence_length=1 << 16)


def add_pad_piece(model_file: str | Path, out_model: str | Path, pad: str = "[PAD]") -> int:
    """Append ``pad`` as a control piece: Chinese-Alpaca's 49953 -> 49954 step. Returns the new size."""
    sp_pb2 = _sp_pb2()
    proto = load_sp_proto(model_file)
    if any(p.piece == pad for p in proto.pieces):
        raise VocabError(f"{model_file}: already has {pad} (an Alpaca tokenizer?); pass the Chinese-LLaMA model "
                         "without it, or use this one as is")
    new = sp_pb2.ModelProto().SentencePiece()
    new.piece, new.score, new.type = pad, 0.0, TokenType.CONTROL  # never produced from text
    proto.pieces.append(new)
    atomic_write_bytes(out_model, proto.SerializeToString())
    return len(proto.pieces)


def merge_tokenizers(llama_model: str | Path, chinese_model: str | Path, out_dir: str | Path) -> dict:
    """The vocabulary step's outputs under ``out_dir`` (written in place; see :func:`extend_vocab` for atomic):

    ``merged_tokenizer_sp/chinese_llama.model``, ``merged_tokenizer_hf/`` (Chinese-LLaMA) and
    ``merged_tokenizer_sp/chinese_alpaca.model``, ``alpaca_tokenizer_hf/`` (Chinese-Alpaca, + ``[PAD]``).
    Returns the counts of :func:`merge_sp_models` plus ``alpaca`` (the size with ``[PAD]``).
    """
    out = Path(out_dir)
    sp_dir = out / "merged_tokenizer_sp"
    stats = merge_sp_models(llama_model, chinese_model, sp_dir / "chinese_llama.model")
    save_hf_tokenizer(sp_dir / "chinese_llama.model", out / "merged_tokenizer_hf")
    stats["alpaca"] = add_pad_piece(sp_dir / "chinese_llama.model", sp_dir / "chinese_alpaca.model")
    save_hf_tokenizer(sp_dir / "chinese_alpaca.model", out / "alpaca_tokenizer_hf", pad_token="[PAD]")
    return stats


def extend_vocab(llama_tokenizer_dir: str | Path, chinese_sp_model_file: str | Path | None, output_dir: str | Path,
                 overwrite: bool = False, vocab_size: int = 20000) -> dict:
    """The whole step, atomically: (train ``chinese_sp.model`` if none is given,) merge, write SP + HF folders.

    An existing ``output_dir`` is refused unless ``overwrite``. Returns the counts of :func:`merge_tokenizers`.
    """
    load_base_sp(llama_tokenizer_dir)  # fail early, before training
    base = Path(llama_tokenizer_dir)
    base = base / "tokenizer.model" if base.is_dir() else base
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        if chinese_sp_model_file is None:
            chinese_sp_model_file = train_chinese_sp(tmp / "chinese_sp", vocab_size=vocab_size)
        elif not Path(chinese_sp_model_file).is_file():
            raise VocabError(f"{chinese_sp_model_file}: --chinese_sp_model_file not found; pass the path of "
                             "chinese_sp.model, or leave the flag out to train one")
        stats = merge_tokenizers(base, chinese_sp_model_file, tmp)
    return stats


# --------------------------------------------------------------------------- efficiency and embeddings
def chinese_chars(text: str) -> int:
    """How many CJK ideographs ``text`` holds."""
    return len(CJK.findall(text))


def tokens_per_chinese_char(sp_model: str | Path, lines) -> dict:
    """Tokens (no BOS) per Chinese character of ``lines`` under a SentencePiece model: ``{tokens, chars, ratio}``."""
    import sentencepiece as spm

    lines = list(lines)  # read twice below: a generator would be empty the second time
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    tokens = sum(len(ids) for ids in sp.encode(lines))
    chars = sum(chinese_chars(x) for x in lines)
    if chars == 0:
        raise VocabError(f"no Chinese characters in the {len(lines)} evaluation line(s); pass Chinese text "
                         "(e.g. data/zh_heldout.txt)")
    return {"tokens": tokens, "chars": chars, "ratio": tokens / chars}


def efficiency_table(models: dict[str, str | Path], lines, base: str | None = None):
    """A DataFrame: vocabulary size, tokens, Chinese chars, tokens per Chinese char and ``vs_base`` per model."""
    import pandas as pd
    import sentencepiece as spm

    if base is not None and base not in models:
        raise VocabError(f"base={base!r} is not one of the tokenizers {list(models)}")
    lines = list(lines)  # every model reads them
    rows = []
    for name, path in models.items():
        r = tokens_per_chinese_char(path, lines)
        rows.append({"tokenizer": name, "vocab": spm.SentencePieceProcessor(model_file=str(path)).get_piece_size(),
                     "tokens": r["tokens"], "chinese_chars": r["chars"], "tokens_per_char": round(r["ratio"], 3)})
    df = pd.DataFrame(rows)
    ref = df.loc[df.tokenizer == (base or rows[0]["tokenizer"]), "tokens_per_char"].iloc[0]
    df["vs_base"] = (df.tokens_per_char / ref).round(3)
    return df


def char_coverage(sp_model: str | Path, lines) -> dict:
    """How a SentencePiece model covers the Chinese characters of ``lines``; returns a dict:

    ``chars`` / ``distinct`` (CJK occurrences / distinct characters), ``in_vocab`` / ``distinct_in_vocab`` (those
    whose character is itself a NORMAL piece: 1 token or less, BPE may merge it further), ``fallback`` (occurrences
    the model cannot spell with a piece: byte fallback, one token per UTF-8 byte, or ``<unk>`` without it),
    ``fallback_tokens`` (what ``fallback`` costs: UTF-8 bytes with byte fallback, else 1 each), ``in_vocab_share``
    and ``tokens_per_char`` (all tokens, no BOS, per CJK character; as :func:`tokens_per_chinese_char`).
    """
    import sentencepiece as spm

    from .tokenizer import load_sp_proto

    lines = list(lines)
    proto = load_sp_proto(sp_model)
    normal = {p.piece for p in proto.pieces if p.type in (TokenType.NORMAL, TokenType.USER_DEFINED)}
    byte_fallback = any(p.type == TokenType.BYTE for p in proto.pieces)
    counts = Counter(ch for x in lines for ch in CJK.findall(x))
    if not counts:
        raise VocabError(f"no Chinese characters in the {len(lines)} evaluation line(s); pass Chinese text "
                         "(e.g. data/zh_heldout.txt)")
    missing = {ch: n for ch, n in counts.items() if ch not in normal}
    fallback = sum(missing.values())
    chars = sum(counts.values())
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    tokens = sum(len(ids) for ids in sp.encode(lines))
    return {"chars": chars, "distinct": len(counts), "in_vocab": chars - fallback,
            "distinct_in_vocab": len(counts) - len(missing), "fallback": fallback,
            "fallback_tokens": sum(n * (len(ch.encode("utf-8")) if byte_fallback else 1) for ch, n in missing.items()),
            "in_vocab_share": (chars - fallback) / chars, "tokens_per_char": tokens / chars}


def coverage_table(models: dict[str, str | Path], lines):
    """A DataFrame, one row per tokenizer: vocabulary size, Chinese characters (occurrences, distinct), the share
    spelled by a piece of their own, the fallback tokens per missing character, and tokens per Chinese character."""
    import pandas as pd

    lines = list(lines)
    rows = []
    for name, path in models.items():
        c = char_coverage(path, lines)
        rows.append({"tokenizer": name, "vocab": len(load_sp_proto(path).pieces), "chinese_chars": c["chars"],
                     "distinct": c["distinct"], "distinct_in_vocab": c["distinct_in_vocab"],
                     "in_vocab_share": round(c["in_vocab_share"], 3), "fallback_chars": c["fallback"],
                     "tokens_per_fallback_char": round(c["fallback_tokens"] / c["fallback"], 2) if c["fallback"]
                     else None, "tokens_per_char": round(c["tokens_per_char"], 3)})
    return pd.DataFrame(rows)


def plot_efficiency(df, path: str | Path | None = None, goal: float = 0.6):
    """Bar chart of tokens per Chinese character (goal line at ``goal`` x base); saved to ``path`` if given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(df)), 3.6))
    ax.bar(df.tokenizer, df.tokens_per_char, color=["#999999"] + ["#cc3333"] * (len(df) - 1))
    ax.axhline(df.tokens_per_char.iloc[0] * goal, ls="--", color="k", lw=1, label=f"goal: {goal} x base")
    for i, v in enumerate(df.tokens_per_char):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    ax.set_ylabel("tokens per Chinese character")
    ax.set_title("Chinese tokens per character (held-out text)")
    ax.set_ylim(0, df.tokens_per_char.max() * 1.15)
    ax.tick_params(axis="x", labelrotation=15)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def resize_embeddings(model, new_size: int):
    """Resize input and output embeddings to ``new_size``; new rows start as the mean of the old rows.

    (transformers' ``mean_resizing=True`` samples around the mean with the old covariance; we use the plain
    mean, which keeps new tokens neutral. Under DeepSpeed ZeRO-3 the sharded rows are gathered to be set.)
    Returns ``model``.
    """
    from contextlib import nullcontext

    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    old = model.get_input_embeddings().weight.shape[0]
    if is_deepspeed_zero3_enabled():  # under ZeRO-3 a weight's full shape is ds_shape, the tensor holds a shard
        old = getattr(model.get_input_embeddings().weight, "ds_shape", (old,))[0]
    model.resize_token_embeddings(new_size, mean_resizing=False)
    if new_size > old:
        embs = list({id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                     if m is not None}.values())
        gather = nullcontext()
        if is_deepspeed_zero3_enabled():
            import deepspeed

            gather = deepspeed.zero.GatheredParameters([e.weight for e in embs], modifier_rank=0)
        with gather, torch.no_grad():
            for emb in embs:
                emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
    return model


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.vocab`` (the flags of the original merge_tokenizers.py, and more)."""
    ap = argparse.ArgumentParser(prog="python -m helpers.vocab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama_tokenizer_dir", required=True, help="folder with LLaMA's tokenizer.model")
    ap.add_argument("--chinese_sp_model_file", default=None,
                    help="Chinese SentencePiece model; omitted: train one from data/ + jieba (see --vocab_size)")
    ap.add_argument("--output_dir", default="merged_tokenizer", help="writes merged_tokenizer_sp/, merged_tokenizer_hf/, "
                    "alpaca_tokenizer_hf/ inside")
    ap.add_argument("--vocab_size", type=int, default=20000, help="pieces of the Chinese model when training one")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    return ap


def _run(args) -> int:
    """The CLI: the whole step, then one line with the sizes."""
    stats = extend_vocab(args.llama_tokenizer_dir, args.chinese_sp_model_file, args.output_dir,
                         overwrite=args.overwrite, vocab_size=args.vocab_size)
    print(f"LLaMA {stats['base']} + {stats['added']} Chinese pieces = {stats['merged']} (Chinese-LLaMA); "
          f"+ [PAD] = {stats['alpaca']} (Chinese-Alpaca) -> {args.output_dir}")
    return 0


def main(argv=None) -> int:
    """``python -m helpers.vocab --llama_tokenizer_dir DIR --chinese_sp_model_file FILE [--output_dir OUT]``;
    returns the exit code (2 with a message on bad input)."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
