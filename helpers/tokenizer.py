"""Load LLaMA SentencePiece tokenizers as Hugging Face tokenizers that encode exactly like sentencepiece.

transformers 5 has no slow (sentencepiece) ``LlamaTokenizer`` any more. Its conversion of a
``tokenizer.model`` prepends the dummy prefix only "first" (so ``" lead"`` loses a space) and orders
BPE merges by piece id instead of score. We therefore build the ``tokenizers`` pipeline ourselves
from the SentencePiece protobuf (written by hand because no library exposes this exact mapping) and
always save ``tokenizer.json`` + ``tokenizer_config.json`` next to ``tokenizer.model``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from .core import CourseError
from .weights import TokenType
from .io import read_json, write_json



class TokenizerError(CourseError):
    """A tokenizer file that the course cannot use, with a message saying what to do."""


def load_sp_proto(model_file: str | Path):
    """Parse a SentencePiece ``.model`` file into its protobuf ``ModelProto``."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise TokenizerError("protobuf is needed to read SentencePiece models: pip install protobuf sentencepiece") from e
    path = Path(model_file)
    if not path.is_file():
        raise TokenizerError(f"{path}: SentencePiece model not found")
    proto = sp_pb2.ModelProto()
    data = path.read_bytes()
    try:
        proto.ParseFromString(data)
    except Exception as e:
        raise TokenizerError(
            f"{path}: not a SentencePiece model (protobuf parse failed: {e}). "
            "Only SentencePiece `tokenizer.model` files can be used here; a tokenizer.json-only (BPE/tiktoken) "
            "tokenizer is a different format."
        ) from e
    if len(proto.pieces) == 0:
        raise TokenizerError(f"{path}: not a SentencePiece model (no pieces). Only SentencePiece models can be used here.")
    return proto


def _merges_by_score(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges ranked as sentencepiece applies them: higher score of the merged piece first, then lower id."""
    merges = []
    for piece, pid in vocab.items():
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                merges.append((-scores[piece], pid, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(m[4], m[5]) for m in merges]


def build_backend(model_file: str | Path) -> tuple[Tokenizer, dict]:
    """Build a ``tokenizers.Tokenizer`` equivalent to a LLaMA-style BPE SentencePiece model."""
    proto = load_sp_proto(model_file)
    if proto.trainer_spec.model_type != 2:  # 2 = BPE
        raise TokenizerError(f"{model_file}: only BPE SentencePiece models (like LLaMA's) are supported")
    spec = proto.normalizer_spec
    if spec.name not in ("identity", "") and spec.precompiled_charsmap:
        raise TokenizerError(f"{model_file}: normalization '{spec.name}' is not supported; train with identity normalization like LLaMA")
    vocab, scores = {}, {}
    special, user = [], []
    for i, p in enumerate(proto.pieces):
        vocab[p.piece] = i
        scores[p.piece] = p.score
        if p.type in (TokenType.CONTROL, TokenType.UNKNOWN):
            special.append(p.piece)
        elif p.type == TokenType.USER_DEFINED:
            user.append(p.piece)
    merge_vocab = {k: v for k, v in vocab.items() if k not in special and k not in user}
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    bpe = models.BPE(vocab=vocab, merges=_merges_by_score(merge_vocab, scores), unk_token=unk,
                     fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback, dropout=None)
    tk = Tokenizer(bpe)
    # sentencepiece always prepends the dummy prefix, even before a leading space; tokenizers'
    # Metaspace does not ("always" skips strings already starting with ▁), so use a normalizer.
    steps = [normalizers.Prepend("▁")] if spec.add_dummy_prefix else []
    tk.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = None
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tk.decoder = decoders.Sequence(steps)
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    if user:
        tk.add_tokens([AddedToken(s, special=False, normalized=False) for s in user])
    ids = proto.trainer_spec
    info = {"unk": unk,
            "bos": proto.pieces[ids.bos_id].piece if ids.bos_id >= 0 else None,
            "eos": proto.pieces[ids.eos_id].piece if ids.eos_id >= 0 else None,
            "pad": proto.pieces[ids.pad_id].piece if ids.pad_id >= 0 else None}
    return tk, info


def build_hf_tokenizer(model_file: str | Path, pad_token: str | None = None):
    """A ``PreTrainedTokenizerFast`` that encodes like sentencepiece (BOS added, no EOS)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tk, info = build_backend(model_file)
    bos, eos = info["bos"], info["eos"]
    if bos is not None:
        bos_id = tk.token_to_id(bos)
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    pad = pad_token or info["pad"]
    if pad is not None and tk.token_to_id(pad) is None:
        tk.add_special_tokens([AddedToken(pad, special=True, normalized=False)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=eos, unk_token=info["unk"], pad_token=pad,
        padding_side="left", clean_up_tokenization_spaces=False, model_max_length=4096,
    )
    tok.add_bos_token, tok.add_eos_token = True, False
    return tok


def save_hf_tokenizer(model_file: str | Path, out_dir: str | Path, pad_token: str | None = None):
    """Write ``tokenizer.model`` + ``tokenizer.json`` + ``tokenizer_config.json`` into ``out_dir``; returns the
    tokenizer (:func:`build_hf_tokenizer`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_hf_tokenizer(model_file, pad_token=pad_token)
    tok.save_pretrained(out)
    if Path(model_file).resolve() != (out / "tokenizer.model").resolve():
        shutil.copyfile(model_file, out / "tokenizer.model")
    cfg_path = out / "tokenizer_config.json"
    cfg = read_json(cfg_path)
    cfg.update({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False,
                "padding_side": "left", "clean_up_tokenization_spaces": False})
    write_json(cfg_path, cfg)
    return tok


def load_tokenizer(path: str | Path, pad_token: str | None = None):
    """Load the course tokenizer from a folder or a ``.model`` file.

    A folder with ``tokenizer.json`` is loaded with ``AutoTokenizer``; a folder holding only
    ``tokenizer.model`` (or the file itself) is converted with :func:`build_hf_tokenizer`.
    """
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_file():
        return build_hf_tokenizer(p, pad_token=pad_token)
    if not p.is_dir():
        raise TokenizerError(f"{p}: tokenizer folder not found (pass a folder with tokenizer.model or tokenizer.json)")
    if (p / "tokenizer.json").is_file() and (p / "tokenizer_config.json").is_file():
        try:
            tok = AutoTokenizer.from_pretrained(p, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - json, tokenizers (Rust) and transformers each raise their own
            raise TokenizerError(f"{p}: tokenizer.json / tokenizer_config.json cannot be loaded "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); re-save the "
                                 "folder (helpers.tokenizer.save_hf_tokenizer) or pass its tokenizer.model") from e
        if pad_token and tok.pad_token is None:
            tok.add_special_tokens({"pad_token": pad_token})
        return tok
    if (p / "tokenizer.model").is_file():
        return build_hf_tokenizer(p / "tokenizer.model", pad_token=pad_token)
    raise TokenizerError(f"{p}: no tokenizer.model or tokenizer.json + tokenizer_config.json found")


def sp_mismatches(tok, model_file: str | Path, lines) -> list[tuple[str, list[int], list[int]]]:
    """Lines on which ``tok`` (with BOS) encodes differently from sentencepiece; empty when identical.

    Text is taken literally (``split_special_tokens=True``): sentencepiece never turns the characters
    ``<s>`` in a sentence into the BOS id, while HF tokenizers do unless told not to.
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    bos = [sp.bos_id()] if sp.bos_id() >= 0 else []
    bad = []
    for line in lines:
        want = bos + sp.encode(line)
        got = tok(line, split_special_tokens=True)["input_ids"]
        if want != got:
            bad.append((line, want, got))
    return bad
