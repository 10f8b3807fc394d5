"""Training data for LoRA pre-training (PT) and instruction fine-tuning (SFT).

One record shape for every SFT input format (Alpaca JSON/JSONL, OpenAI ``messages``, ShareGPT
``conversations``)::

    {"system": str, "turns": [{"user": str, "assistant": str}, ...]}

Alpaca records become one turn whose ``user`` text is ``instruction`` + ``"\\n"`` + ``input`` (seed 001,
``helpers.prompts.join_instruction``). PT inputs (plain text, CSV / JSON text column) become ``{"text": str}``.

SFT tokenization follows ``run_clm_sft_with_peft.py``: the prompt (template + BOS) is labelled -100, the target
is ``output`` + EOS, the whole is cut at ``max_seq_length`` (cut records are counted). PT tokenization follows
``run_clm_pt_with_peft.py``: tokenize, concatenate, cut into ``block_size`` blocks (the tail is dropped).

Batching: ``pad_to_max`` (every row padded to ``max_seq_length``), ``longest`` (pad to the longest row of
the batch, as the original collator), ``flatten`` (no padding: the batch is one row, ``position_ids`` restart
at 0 for each example and transformers builds a block-diagonal causal mask from them, so examples never
attend to each other).
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .core import CourseError
from .io import atomic_dir, read_json, write_json
from .prompts import ALPACA2_SYSTEM, TEMPLATES, build_prompt, join_instruction

IGNORE_INDEX = -100
SFT_SUFFIXES = (".json", ".jsonl")
PT_SUFFIXES = (".txt", ".csv", ".json", ".jsonl")
PACKING_MODES = ("flatten", "longest", "pad_to_max")

_USER_ROLES = {"user", "human"}
_ASSISTANT_ROLES = {"assistant", "gpt", "bot", "model"}
_SYSTEM_ROLES = {"system"}


# --------------------------------------------------------------------------- reading files
def _bad(path: Path, index: int, what: str) -> CourseError:
    return CourseError(f"{path}: record {index}: {what}. Fix or remove this record (records are counted from 0).")


def read_json_records(path: str | Path) -> list:
    """The records of a ``.json`` file (a list, or ``{"data": [...]}``) or a ``.jsonl`` file (one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise CourseError(f"{path}: file not found (check --dataset_dir / --validation_file)")
    if path.suffix == ".jsonl":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CourseError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); save the data as UTF-8") from e
        records = []
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CourseError(f"{path}: line {n + 1} (record {len(records)}): invalid JSON: {e.msg}") from e
        return records
    obj = read_json(path)
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise CourseError(f"{path}: expected a JSON list of records (or JSONL, one record per line)")
    return obj


def _text(path: Path, i: int, rec: dict, key: str, required: bool = True) -> str:
    value = rec.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _bad(path, i, f"field {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _bad(path, i, f"field {key!r} is empty")
    return value


def _messages_to_record(path: Path, i: int, messages, role_key: str, content_key: str) -> dict:
    if not isinstance(messages, list) or not messages:
        raise _bad(path, i, "the conversation must be a non-empty list of messages")
    system, turns, pending = "", [], None
    for j, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(path, i, f"message {j} must be an object with {role_key!r} and {content_key!r}")
        role = str(msg.get(role_key, "")).lower()
        content = msg.get(content_key)
        if not isinstance(content, str):
            raise _bad(path, i, f"message {j}: {content_key!r} must be a string")
        if role in _SYSTEM_ROLES and j == 0:
            system = content
        elif role in _USER_ROLES and pending is None:
            pending = content
        elif role in _ASSISTANT_ROLES and pending is not None:
            if not content.strip():
                raise _bad(path, i, f"message {j}: empty assistant reply")
            turns.append({"user": pending, "assistant": content})
            pending = None
        else:
            raise _bad(path, i, f"message {j}: unexpected role {role!r}; expected an optional system message "
                                "first, then user/assistant messages alternating")
    if pending is not None or not turns:
        raise _bad(path, i, "the conversation must end with an assistant reply")
    return {"system": system, "turns": turns}


def normalize_sft_record(rec, path: str | Path = "<records>", index: int = 0) -> dict:
    """One SFT record (Alpaca, OpenAI ``messages`` or ShareGPT ``conversations``) -> ``{"system", "turns"}``."""
    path = Path(path)
    if not isinstance(rec, dict):
        raise _bad(path, index, f"expected an object, got {type(rec).__name__}")
    if "messages" in rec:
        return _messages_to_record(path, index, rec["messages"], "role", "content")
    if "conversations" in rec:
        out = _messages_to_record(path, index, rec["conversations"], "from", "value")
        if isinstance(rec.get("system"), str):
            out["system"] = rec["system"]
        return out
    if "instruction" in rec or "output" in rec:
        instruction = _text(path, index, rec, "instruction")
        input_text = _text(path, index, rec, "input", required=False)
        output = _text(path, index, rec, "output")
        return {"system": rec.get("system") or "", "turns": [{"user": join_instruction(instruction, input_text),
                                                              "assistant": output}]}
    raise _bad(path, index, "unknown record format: expected instruction/input/output (Alpaca), "
                            "messages (OpenAI) or conversations (ShareGPT)")


def dataset_files(dataset_dir: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The data files of ``--dataset_dir`` (a folder: every file with one of ``suffixes``; or a single file)."""
    p = Path(dataset_dir)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise CourseError(f"--dataset_dir {p}: not found; pass a folder of {'/'.join(suffixes)} files or one file")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in suffixes)
    if not files:
        raise CourseError(f"--dataset_dir {p}: no {'/'.join(suffixes)} files in this folder")
    return files


def load_sft_records(paths) -> list[dict]:
    """Normalized SFT records of one or more JSON/JSONL files (a bad record raises naming file and index)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out = []
    for path in paths:
        path = Path(path)
        if path.suffix not in SFT_SUFFIXES:
            raise CourseError(f"{path}: SFT data must be .json or .jsonl (Alpaca, OpenAI messages or ShareGPT)")
        out += [normalize_sft_record(r, path, i) for i, r in enumerate(read_json_records(path))]
    return out


def load_pt_texts(paths, text_column: str = "text", data_cache_dir: str | Path | None = None) -> list[str]:
    """Pre-training texts: ``.txt`` (one text per non-empty line), ``.csv`` / ``.json`` / ``.jsonl`` text column.

    Text and CSV files are read with ``datasets`` (``load_dataset("text"|"csv")``, cached in ``data_cache_dir``);
    JSON is parsed here so that a bad record can be reported by index, which pyarrow cannot do.
    """
    from datasets import load_dataset

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    texts: list[str] = []
    cache = str(data_cache_dir) if data_cache_dir else None
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise CourseError(f"{path}: file not found")
        if path.suffix == ".txt":
            ds = load_dataset("text", data_files=str(path), split="train", cache_dir=cache)
            texts += [t for t in ds["text"] if t.strip()]
        elif path.suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                header = next(csv.reader(f), [])
            if text_column not in header:
                raise CourseError(f"{path}: no column {text_column!r} (columns: {header}); pass --text_column")
            ds = load_dataset("csv", data_files=str(path), split="train", cache_dir=cache)
            for i, t in enumerate(ds[text_column]):
                if not isinstance(t, str):
                    raise _bad(path, i, f"column {text_column!r} is empty or not text")
                if t.strip():
                    texts.append(t)
        elif path.suffix in (".json", ".jsonl"):
            for i, rec in enumerate(read_json_records(path)):
                if isinstance(rec, str):
                    texts.append(rec)
                    continue
                if not isinstance(rec, dict):
                    raise _bad(path, i, f"expected an object with a {text_column!r} field")
                texts.append(_text(path, i, rec, text_column))
        else:
            raise CourseError(f"{path}: pre-training data must be .txt, .csv, .json or .jsonl")
    if not texts:
        raise CourseError(f"{', '.join(map(str, paths))}: no text found")
    return texts


# --------------------------------------------------------------------------- tokenization
@dataclass
class TokenStats:
    """What tokenization did: counts that the notebook and the CLI report."""

    records: int = 0
    kept: int = 0
    truncated: int = 0  # records longer than max_seq_length (cut)
    dropped: int = 0  # records with no target token left after the cut
    tokens: int = 0  # tokens kept (after truncation)
    target_tokens: int = 0  # tokens with a label (trained on)
    max_seq_length: int = 0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if "dropped_tail_tokens" in self.extra:  # pre-training blocks
            return (f"{self.records} texts -> {self.kept} blocks of {self.max_seq_length} tokens ({self.tokens} tokens; "
                    f"{self.extra['dropped_tail_tokens']} tail tokens dropped)")
        return (f"{self.records} records -> {self.kept} kept, {self.truncated} truncated to {self.max_seq_length} "
                f"tokens, {self.dropped} dropped (no target left); {self.tokens} tokens, "
                f"{self.target_tokens} trained on")


def turn_prompt(user: str, template: str, system: str, first: bool) -> str:
    """The prompt text of one turn: the full template for the first turn, ``[INST] .. [/INST]`` after (alpaca2)."""
    if template == "alpaca2" and not first:
        return f"[INST] {user} [/INST]"
    return build_prompt(user, None, template=template, system_prompt=system or None)


def tokenize_sft_record(record: dict, tokenizer, max_seq_length: int, template: str = "alpaca") -> dict:
    """``{"input_ids", "labels", "truncated"}`` for one normalized record (prompt -100, reply + EOS trained).

    Like the original script, the prompt is tokenized with BOS and the reply separately without
    special tokens; each later turn of a conversation starts again with BOS (Llama-2 chat style).
    """
    if template not in TEMPLATES:
        raise CourseError(f"--prompt_template {template!r}: choose one of {sorted(TEMPLATES)}")
    ids: list[int] = []
    labels: list[int] = []
    system = record.get("system") or (ALPACA2_SYSTEM if template == "alpaca2" else "")
    for n, turn in enumerate(record["turns"]):
        prompt = tokenizer(turn_prompt(turn["user"], template, system, n == 0), add_special_tokens=True)["input_ids"]
        reply = tokenizer(turn["assistant"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids += prompt + reply
        labels += [IGNORE_INDEX] * len(prompt) + reply
    truncated = len(ids) > max_seq_length
    return {"input_ids": ids[:max_seq_length], "labels": labels[:max_seq_length], "truncated": truncated}


def tokenize_sft(records: list[dict], tokenizer, max_seq_length: int = 512, template: str = "alpaca"):
    """Tokenize normalized records into a ``datasets.Dataset`` (``input_ids``, ``labels``, ``length``) + :class:`TokenStats`."""
    from datasets import Dataset

    stats = TokenStats(records=len(records), max_seq_length=max_seq_length)
    rows = {"input_ids": [], "labels": [], "length": []}
    for rec in records:
        out = tokenize_sft_record(rec, tokenizer, max_seq_length, template)
        stats.truncated += out["truncated"]
        n_target = sum(1 for x in out["labels"] if x != IGNORE_INDEX)
        if n_target == 0:
            stats.dropped += 1
            continue
        rows["input_ids"].append(out["input_ids"])
        rows["labels"].append(out["labels"])
        rows["length"].append(len(out["input_ids"]))
        stats.tokens += len(out["input_ids"])
        stats.target_tokens += n_target
    stats.kept = len(rows["input_ids"])
    if stats.kept == 0:
        raise CourseError(f"no SFT record left after truncation to --max_seq_length {max_seq_length}; raise it")
    return Dataset.from_dict(rows), stats


def group_texts(token_lists: list[list[int]], block_size: int) -> list[list[int]]:
    """Concatenate token lists and cut them into ``block_size`` blocks; the incomplete tail is dropped."""
    flat = [t for ids in token_lists for t in ids]
    n = (len(flat) // block_size) * block_size
    return [flat[i:i + block_size] for i in range(0, n, block_size)]


def tokenize_pt(texts: list[str], tokenizer, block_size: int = 512):
    """PT blocks as a ``datasets.Dataset`` (``input_ids``, ``labels`` = ``input_ids``) + :class:`TokenStats`."""
    from datasets import Dataset

    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    total = sum(len(x) for x in ids)
    blocks = group_texts(ids, block_size)
    if not blocks:
        raise CourseError(f"only {total} tokens of text: fewer than one --block_size {block_size} block; "
                          "lower --block_size or add data")
    stats = TokenStats(records=len(texts), kept=len(blocks), tokens=len(blocks) * block_size,
                       target_tokens=len(blocks) * block_size, max_seq_length=block_size,
                       extra={"dropped_tail_tokens": total - len(blocks) * block_size})
    return Dataset.from_dict({"input_ids": blocks, "labels": [list(b) for b in blocks]}), stats


def cache_key(*parts) -> str:
    """A short SHA256 over files (by content) and values, to name a cached tokenized dataset."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path) and p.is_file():
            h.update(p.read_bytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A short SHA256 of the tokenizer's whole definition (pieces, merges, normalizer, BOS/EOS ids), for cache keys:
    a retrained tokenizer of the same size must not reuse data tokenized with the old one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return cache_key(spec, tokenizer.bos_token_id, tokenizer.eos_token_id)


def cached(data_cache_dir: str | Path | None, key: str, build):
    """``build()`` -> (Dataset, TokenStats), saved to / loaded from ``data_cache_dir/key`` when a cache dir is given."""
    from datasets import load_from_disk

    if not data_cache_dir:
        return build()
    target = Path(data_cache_dir) / key
    stats_file = target / "token_stats.json"
    if stats_file.is_file():
        return load_from_disk(str(target / "dataset")), TokenStats(**read_json(stats_file))
    ds, stats = build()
    with atomic_dir(target, overwrite=True) as tmp:
        ds.save_to_disk(str(tmp / "dataset"))
        write_json(tmp / "token_stats.json", stats.as_dict())
    return ds, stats


# --------------------------------------------------------------------------- batching
def make_collator(tokenizer, packing: str = "flatten", max_seq_length: int | None = None,
                  pad_to_multiple_of: int | None = None):
    """Returns the batch collator for ``packing`` in ``flatten`` | ``longest`` | ``pad_to_max``.

    ``longest`` / ``pad_to_max`` are ``transformers.DataCollatorForSeq2Seq``: rows padded on the right (to the
    longest row, or to ``max_seq_length``; then up to a multiple of ``pad_to_multiple_of``), labels with -100,
    the pad token (unk when the tokenizer has none, as LLaMA's). It pads on the tokenizer's side, so it gets a
    copy padded on the right: the course tokenizers pad on the left for generation.
    """
    if packing == "flatten":
        from transformers import DataCollatorWithFlattening

        # labels of each example's first token become -100, so no example learns from the one before it
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    if packing not in PACKING_MODES:
        raise CourseError(f"--packing {packing!r}: choose one of {PACKING_MODES}")
    if packing == "pad_to_max" and not max_seq_length:
        raise CourseError("--packing pad_to_max needs --max_seq_length")
    from transformers import DataCollatorForSeq2Seq

    right = copy.deepcopy(tokenizer)
    right.padding_side = "right"
    if right.pad_token is None:
        right.pad_token = right.unk_token  # LLaMA has no pad token; unk is never a target (labels are -100)
    return DataCollatorForSeq2Seq(right, padding="max_length" if packing == "pad_to_max" else "longest",
                                  max_length=max_seq_length if packing == "pad_to_max" else None,
                                  pad_to_multiple_of=pad_to_multiple_of, label_pad_token_id=IGNORE_INDEX,
                                  return_tensors="pt")


def non_pad_share(batch: dict) -> float:
    """Share of real tokens in a collated batch (1.0 for a flattened batch)."""
    if "attention_mask" in batch:
        return float(batch["attention_mask"].float().mean())
    return 1.0
