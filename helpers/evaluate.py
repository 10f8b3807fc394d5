"""Step 12: measuring a model — perplexity and bits per character, C-Eval-style multiple choice, side-by-side answers.

    python -m helpers.evaluate ppl --model DIR [--lora_model L] --data_file TXT --output_file OUT.json \\
        [--max_length 1024 --stride 512 --batch_size 8]
    python -m helpers.evaluate choice --model DIR [--lora_model L] --data_file test.jsonl --shots K \\
        [--dev_file dev.jsonl] [--template none|alpaca|alpaca2] [--method letter|loglik] --output_file OUT.json

* Perplexity per token depends on the tokenizer (LLaMA's byte tokens vs the extended Chinese vocabulary), so
  :func:`perplexity` also reports bits per character and per UTF-8 byte (total NLL / ln 2 / chars), which compare
  across tokenizers. Texts longer than the window are scored with a sliding window: every token is predicted
  once, with up to ``max_length - stride`` tokens of context carried over from the previous window.
* :func:`choice_eval` scores C-Eval / CMMLU-style questions (``id, question, A, B, C, D, answer``) by the next-token
  logits of the option letters (``method="letter"``, C-Eval's own script) or by the log-likelihood of each full
  answer text (``method="loglik"``, cloze style); zero- or few-shot (shots from a dev split, never the asked
  question), with or without a chat template; accuracy with a Wilson interval.
* :func:`side_by_side` generates answers of several models to the same instructions; :func:`judge` asks any
  OpenAI-compatible endpoint (the course's own ``python -m helpers.api``) to grade them.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .core import CourseError, cli_main
from .prompts import TEMPLATES, build_prompt

LETTERS = ("A", "B", "C", "D")
FIELDS = ("id", "question", *LETTERS, "answer")
TEMPLATE_NAMES = ("none", *TEMPLATES)
METHODS = ("letter", "loglik")
SUBJECTS_ZH = {"geography": "地理", "history": "历史", "science": "科学常识", "math": "数学", "chinese": "语文",
               "computer": "计算机"}
# the real profile: C-Eval (config = subject, splits dev/val/test; test answers are not public) and CMMLU
CEVAL_REPO, CMMLU_REPO = "ceval/ceval-exam", "haonan-li/cmmlu"


# --------------------------------------------------------------------------- shared checks
def check_vocab(model, tokenizer, where: str = "--model") -> int:
    """Raise :class:`CourseError` when ``tokenizer`` can produce ids the model has no embedding row for, or the
    model has more rows than the tokenizer beyond padding to a multiple of 64. Returns the row count."""
    rows = model.get_input_embeddings().weight.shape[0]
    n = len(tokenizer)
    padded = rows % 64 == 0 and 0 <= rows - n < 128
    if n > rows or (n < rows and not padded):
        raise CourseError(
            f"{where}: the model has {rows} embedding rows but the tokenizer has {n} tokens: they do not belong "
            "together (e.g. LLaMA's 32000 vs Chinese-LLaMA's 49953). Pass the tokenizer saved with this model "
            "(--tokenizer_path), or the LoRA folder that carries it")
    return rows


def _device(model):
    return next(model.parameters()).device


def _context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


# --------------------------------------------------------------------------- perplexity
@dataclass
class PplResult:
    """Perplexity of one text: ``ppl`` per token, ``bits_per_char`` / ``bits_per_byte`` (comparable across
    tokenizers), ``nll`` = total negative log-likelihood in nats over ``tokens`` predicted tokens."""

    ppl: float
    bits_per_char: float
    bits_per_byte: float
    nll: float
    tokens: int
    chars: int
    bytes: int
    windows: int
    max_length: int
    stride: int

    def as_dict(self) -> dict:
        return asdict(self)


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``[(begin, end, first_scored)]`` covering positions ``1..n_tokens-1`` exactly once: window ``[begin, end)``
    of at most ``max_length`` tokens, scoring the targets ``first_scored..end-1`` (the ones the previous window
    did not score). Position 0 (BOS) has nothing before it and is never a target."""
    out, prev_end = [], 1
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        first = max(prev_end, begin + 1)
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return out


def perplexity(model, tokenizer, text: str, max_length: int | None = None, stride: int | None = None,
               batch_size: int = 8, where: str = "text") -> PplResult:
    """Perplexity and bits per character/byte of ``text`` (``tokenizer`` adds BOS; every following token is a
    target). ``max_length`` defaults to the model's context (capped at 1024), ``stride`` to half of it; windows are
    run ``batch_size`` at a time. Returns a :class:`PplResult`.

    Raises :class:`CourseError` for an empty text, a text shorter than one window (lower ``max_length``), a
    stride outside ``1..max_length`` or a vocabulary mismatch."""
    import torch

    check_vocab(model, tokenizer)
    ctx = _context_length(model)
    max_length = max_length or min(ctx, 1024)
    if max_length > ctx:
        raise CourseError(f"--max_length {max_length} is longer than the model's context ({ctx} positions)")
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise CourseError(f"--stride {stride}: must be between 1 and --max_length {max_length}")
    if not text.strip():
        raise CourseError(f"{where}: the text is empty")
    ids = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
    if len(ids) < max_length:
        raise CourseError(f"{where}: {len(ids)} tokens, shorter than one window (--max_length {max_length}): "
                          f"lower --max_length to at most {len(ids)} or give a longer text")
    windows = sliding_windows(len(ids), max_length, stride)
    dev = _device(model)
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        width = max(e - b for b, e, _ in chunk)
        inp = torch.full((len(chunk), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        tgt = torch.full((len(chunk), width), -100, dtype=torch.long)
        for r, (b, e, first) in enumerate(chunk):  # right padding: real tokens keep positions 0..n-1
            inp[r, :e - b] = torch.tensor(ids[b:e])
            mask[r, :e - b] = 1
            tgt[r, first - b:e - b] = torch.tensor(ids[first:e])
        with torch.inference_mode():
            logits = model(input_ids=inp.to(dev), attention_mask=mask.to(dev)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        labels = tgt[:, 1:].to(dev)
        keep = labels != -100
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total -= float(picked[keep].sum())
        count += int(keep.sum())
    chars, nbytes = len(text), len(text.encode("utf-8"))
    return PplResult(ppl=math.exp(total / count), bits_per_char=total / math.log(2) / chars,
                     bits_per_byte=total / math.log(2) / nbytes, nll=total, tokens=count, chars=chars,
                     bytes=nbytes, windows=len(windows), max_length=max_length, stride=stride)


def read_text(path: str | Path, flag: str = "--data_file") -> str:
    """The text of a UTF-8 file (lines kept, joined by newlines). Raises CourseError when missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise CourseError(f"{flag} {p}: file not found")
    text = p.read_text(encoding="utf-8").strip()
    if not text:
        raise CourseError(f"{flag} {p}: the file is empty")
    return text


# --------------------------------------------------------------------------- questions
def validate_question(rec, where: str) -> dict:
    """One question record checked: the C-Eval fields present and non-empty, ``answer`` one of A-D. Returns it
    with ``id`` as a string and ``subject`` (default ``""``); CourseError names the record otherwise."""
    if not isinstance(rec, dict):
        raise CourseError(f"{where}: expected an object with the fields {list(FIELDS)}")
    missing = [k for k in FIELDS if k not in rec or rec[k] is None or str(rec[k]).strip() == ""]
    if missing:
        raise CourseError(f"{where}: missing field(s) {missing}; every question needs {list(FIELDS)}")
    answer = str(rec["answer"]).strip().upper()
    if answer not in LETTERS:
        raise CourseError(f"{where} (id {rec['id']}): answer {rec['answer']!r} is not one of A, B, C, D")
    out = {k: str(rec[k]).strip() for k in FIELDS}
    out["answer"] = answer
    out["subject"] = str(rec.get("subject") or "")
    return out


def load_questions(path: str | Path, subject: str | None = None, flag: str = "--data_file") -> list[dict]:
    """Questions from a ``.jsonl`` / ``.json`` list / ``.csv`` (C-Eval's files) in C-Eval's layout; ``subject``
    (default: the record's ``subject`` field, else the file name without ``_val``/``_dev``/``_test``). Returns
    validated records; CourseError names the file and record number of a bad one."""
    p = Path(path)
    if not p.is_file():
        raise CourseError(f"{flag} {p}: file not found")
    if p.suffix == ".csv":
        with open(p, encoding="utf-8", newline="") as f:
            raw = list(csv.DictReader(f))
    elif p.suffix == ".jsonl":
        raw = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise CourseError(f"{flag} {p} line {n}: not valid JSON ({e.msg})") from e
    elif p.suffix == ".json":
        raw = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(raw, list):
            raise CourseError(f"{flag} {p}: expected a JSON list of questions")
    else:
        raise CourseError(f"{flag} {p}: questions must be .jsonl, .json or .csv (C-Eval layout {list(FIELDS)})")
    default = subject or p.stem.removesuffix("_val").removesuffix("_dev").removesuffix("_test")
    out = []
    for i, rec in enumerate(raw):
        q = validate_question(rec, f"{flag} {p} record {i + 1}")
        q["subject"] = subject or q["subject"] or default
        out.append(q)
    if not out:
        raise CourseError(f"{flag} {p}: no questions in the file")
    return out


def load_ceval(subject: str, split: str = "val") -> list[dict]:
    """C-Eval questions of one subject (``computer_network``, ``high_school_physics``, ...) and ``split``
    (``dev`` 5 shots, ``val``, or ``test`` whose answers are not public) via ``datasets``; returns validated
    records."""
    from datasets import load_dataset

    ds = load_dataset(CEVAL_REPO, subject, split=split)
    return [dict(validate_question(r, f"{CEVAL_REPO}/{subject}/{split} record {i + 1}"), subject=subject)
            for i, r in enumerate(ds)]


def load_cmmlu(subject: str, split: str = "test") -> list[dict]:
    """CMMLU questions (``Question, A, B, C, D, Answer``; splits ``dev`` and ``test``) of one subject
    (``agronomy``, ``chinese_history``, ...) through ``datasets`` (the hub's parquet conversion: datasets 4 no
    longer runs the loading script); returns validated records in C-Eval's layout."""
    from datasets import load_dataset

    ds = load_dataset(CMMLU_REPO, subject, split=split, revision="refs/convert/parquet")
    return [validate_question({"id": i, "question": r["Question"], "A": r["A"], "B": r["B"], "C": r["C"],
                               "D": r["D"], "answer": r["Answer"], "subject": subject},
                              f"{CMMLU_REPO}/{subject}/{split} record {i + 1}") for i, r in enumerate(ds)]


def check_template(template: str) -> str:
    """``template`` if it is one of :data:`TEMPLATE_NAMES`, else CourseError listing them."""
    if template not in TEMPLATE_NAMES:
        raise CourseError(f"--template {template!r} is unknown: choose one of {list(TEMPLATE_NAMES)} "
                          "(none = the bare exam text, as C-Eval scores base models)")
    return template


def _subject_name(subject: str) -> str:
    return SUBJECTS_ZH.get(subject, subject.replace("_", " "))


def format_question(q: dict, method: str = "letter", answer: bool = False) -> str:
    """One question as text. ``letter``: C-Eval's layout (question, ``A. ..`` lines, ``答案：`` + the letter when
    ``answer``); ``loglik``: cloze (question, ``答案：`` + the answer text when ``answer``)."""
    if method == "letter":
        body = q["question"] + "\n" + "".join(f"{x}. {q[x]}\n" for x in LETTERS) + "答案："
        return body + (q["answer"] if answer else "")
    return q["question"] + "\n答案：" + (q[q["answer"]] if answer else "")


def pick_shots(q: dict, dev: list[dict], k: int) -> list[dict]:
    """``k`` dev questions for ``q``: same subject first, then others, in file order; never ``q`` itself (same id
    or same question text). Raises CourseError when the dev split has fewer than ``k`` other questions."""
    if k <= 0:
        return []
    others = [d for d in dev if d["id"] != q["id"] and d["question"] != q["question"]]
    ranked = [d for d in others if d["subject"] == q["subject"]] + [d for d in others if d["subject"] != q["subject"]]
    if len(ranked) < k:
        raise CourseError(f"--shots {k}: the dev split has only {len(ranked)} question(s) other than {q['id']}; "
                          "lower --shots or pass a larger --dev_file")
    return ranked[:k]


def build_choice_prompt(q: dict, dev: list[dict] | None = None, shots: int = 0, template: str = "none",
                        method: str = "letter") -> str:
    """The full prompt for ``q``: C-Eval's header (以下是中国关于{科目}考试的单项选择题...), ``shots`` solved dev
    questions (:func:`pick_shots`), then ``q`` ending in ``答案：``; wrapped in ``template`` unless ``none``."""
    check_template(template)
    if method not in METHODS:
        raise CourseError(f"--method {method!r}: choose one of {list(METHODS)}")
    head = f"以下是中国关于{_subject_name(q['subject'])}考试的单项选择题，请选出其中的正确答案。\n\n"
    body = "".join(format_question(d, method, answer=True) + "\n\n" for d in pick_shots(q, dev or [], shots))
    text = head + body + format_question(q, method)
    return text if template == "none" else build_prompt(text, template=template)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (95 % for z=1.96); returns ``(low, high)``.
    (Three lines of arithmetic: no statistics package for it.)"""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


@dataclass
class ChoiceResult:
    """Accuracy of a multiple-choice run, its 95 % Wilson interval, and one row per question in ``predictions``
    (``id, subject, answer, pred, correct, scores``)."""

    accuracy: float
    n: int
    correct: int
    ci_low: float
    ci_high: float
    method: str
    shots: int
    template: str
    predictions: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _split_cue(prompt: str) -> tuple[str, str]:
    """Trailing spaces move from the prompt to the continuation (SentencePiece glues them to the next word)."""
    cue = prompt.rstrip(" ")
    return cue, prompt[len(cue):]


def continuation_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context ids with BOS, continuation ids)`` such that their concatenation is how the tokenizer encodes
    ``context + continuation`` (the context's trailing spaces are moved into the continuation first)."""
    cue, space = _split_cue(context)
    ctx = tokenizer(cue, add_special_tokens=True)["input_ids"]
    full = tokenizer(cue + space + continuation, add_special_tokens=True)["input_ids"]
    if full[:len(ctx)] != ctx:  # the boundary merged into one token: score the continuation on its own
        return ctx, tokenizer(space + continuation, add_special_tokens=False)["input_ids"]
    return ctx, full[len(ctx):]


def _letter_ids(tokenizer, prompt: str) -> list[int]:
    ids = []
    for x in LETTERS:
        _, cont = continuation_ids(tokenizer, prompt, x)
        if not cont:
            raise CourseError(f"the tokenizer encodes the option letter {x!r} as nothing after this prompt")
        ids.append(cont[0])
    if len(set(ids)) != len(ids):
        raise CourseError("the option letters A-D share their first token with this tokenizer: use --method loglik")
    return ids


def _forward_rows(model, rows: list[list[int]], pad_id: int):
    """Logits (float32) of right-padded ``rows`` in one forward pass; returns ``(logits, lengths)``."""
    import torch

    width = max(len(r) for r in rows)
    inp = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        inp[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    dev = _device(model)
    with torch.inference_mode():
        logits = model(input_ids=inp.to(dev), attention_mask=mask.to(dev)).logits.float()
    return logits, [len(r) for r in rows]


def score_letters(model, tokenizer, prompts: list[str], batch_size: int = 8) -> list[list[float]]:
    """For each prompt, the next-token logits of the option letters A-D (C-Eval's scoring); returns 4 floats per
    prompt. ``batch_size`` prompts per forward pass (right padding: each row read at its own last token)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[list[float]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        rows = [continuation_ids(tokenizer, p, "A")[0] for p in chunk]
        letters = [_letter_ids(tokenizer, p) for p in chunk]
        logits, lengths = _forward_rows(model, rows, pad)
        for r, (n, ids) in enumerate(zip(lengths, letters)):
            out.append([float(logits[r, n - 1, t]) for t in ids])
    return out


def score_continuations(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 8) -> list[float]:
    """Sum of log-probabilities of each ``continuation`` after its ``context`` (``pairs``); returns one float per
    pair. ``batch_size`` pairs per forward pass."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    for i in range(0, len(pairs), batch_size):
        enc = [continuation_ids(tokenizer, c, x) for c, x in pairs[i:i + batch_size]]
        logits, _ = _forward_rows(model, [c + x for c, x in enc], pad)
        logp = torch.log_softmax(logits, dim=-1)
        for r, (ctx, cont) in enumerate(enc):
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
            out.append(float(logp[r, pos, torch.tensor(cont)].sum()))
    return out


def choice_eval(model, tokenizer, questions: list[dict], dev: list[dict] | None = None, shots: int = 0,
                template: str = "none", method: str = "letter", batch_size: int = 8) -> ChoiceResult:
    """Answer every question and score it: ``letter`` = highest next-token logit among A-D, ``loglik`` = the option
    whose text has the highest log-likelihood after the cloze prompt. ``shots`` solved questions from ``dev``
    precede each one (never the question itself). Returns a :class:`ChoiceResult`."""
    check_vocab(model, tokenizer)
    if shots and not dev:
        raise CourseError(f"--shots {shots} needs a dev split (--dev_file) to take the solved examples from")
    prompts = [build_choice_prompt(q, dev, shots, template, method) for q in questions]
    if method == "letter":
        scores = score_letters(model, tokenizer, prompts, batch_size)
    else:
        flat = score_continuations(model, tokenizer, [(p, q[x]) for p, q in zip(prompts, questions) for x in LETTERS],
                                   batch_size * 4)
        scores = [flat[i:i + 4] for i in range(0, len(flat), 4)]
    preds = []
    for q, s in zip(questions, scores):
        pred = LETTERS[max(range(4), key=lambda j: s[j])]
        preds.append({"id": q["id"], "subject": q["subject"], "answer": q["answer"], "pred": pred,
                      "correct": pred == q["answer"], "scores": [round(v, 4) for v in s]})
    k = sum(p["correct"] for p in preds)
    lo, hi = wilson_interval(k, len(preds))
    return ChoiceResult(accuracy=k / len(preds), n=len(preds), correct=k, ci_low=lo, ci_high=hi, method=method,
                        shots=shots, template=template, predictions=preds)


def subject_table(result: ChoiceResult):
    """Per-subject accuracy with a Wilson interval, plus an ``all`` row: a pandas DataFrame."""
    import pandas as pd

    rows = []
    groups: dict[str, list[dict]] = {}
    for p in result.predictions:
        groups.setdefault(p["subject"], []).append(p)
    for subject, ps in [*groups.items(), ("all", result.predictions)]:
        k = sum(p["correct"] for p in ps)
        lo, hi = wilson_interval(k, len(ps))
        rows.append({"subject": subject, "n": len(ps), "correct": k, "accuracy": round(k / len(ps), 3),
                     "ci95": f"[{lo:.2f}, {hi:.2f}]"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- side by side and judge
def side_by_side(models: dict, instructions: list[str], template: str = "alpaca", max_new_tokens: int = 48,
                 batch_size: int = 8):
    """Greedy answers of every ``{name: (model, tokenizer)}`` to the same ``instructions`` (wrapped in
    ``template``, or raw text for ``none``): a pandas DataFrame with one row per instruction, one column per
    model."""
    import pandas as pd

    from .generation import generate

    check_template(template)
    prompts = instructions if template == "none" else [build_prompt(x, template=template) for x in instructions]
    table = {"instruction": instructions}
    for name, (model, tok) in models.items():
        check_vocab(model, tok, where=name)
        table[name] = [a.strip() for a in generate(model, tok, prompts, batch_size=batch_size, do_sample=False,
                                                   max_new_tokens=max_new_tokens, repetition_penalty=1.1)]
    return pd.DataFrame(table)


JUDGE_PROMPT = ("请你作为公正的评委，评价下面这个回答对问题的帮助程度、正确性和流畅度，给出 1 到 5 的整数分数。"
                "只输出分数。\n\n问题：{instruction}\n\n回答：{answer}\n\n分数：")


def parse_score(text: str) -> int | None:
    """The first digit 1-5 in a judge's reply, else None (a weak judge may answer anything)."""
    for ch in text or "":
        if ch in "12345":
            return int(ch)
    return None


def judge(table, base_url: str, model: str = "chinese-alpaca", api_key: str = "EMPTY", columns: list[str] | None = None,
          max_tokens: int = 8, timeout: float = 120.0):
    """Grade each answer of ``table`` (from :func:`side_by_side`) with a chat model behind an OpenAI-compatible
    ``base_url`` (``http://127.0.0.1:PORT/v1`` of ``python -m helpers.api``, vLLM, a hosted API). Returns a
    DataFrame of scores (1-5, None when the reply holds no score) and the raw replies in ``<column>_reply``."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout)
    columns = columns or [c for c in table.columns if c != "instruction"]
    out = {"instruction": list(table["instruction"])}
    for col in columns:
        replies = []
        for instruction, answer in zip(table["instruction"], table[col]):
            try:
                r = client.chat.completions.create(
                    model=model, max_tokens=max_tokens, temperature=0,
                    messages=[{"role": "user", "content": JUDGE_PROMPT.format(instruction=instruction, answer=answer)}])
            except openai.APIConnectionError as e:
                raise CourseError(f"judge: no OpenAI-compatible server answers at {base_url}: start one "
                                  "(python -m helpers.api --base_model ...) or fix the URL") from e
            replies.append(r.choices[0].message.content or "")
        out[col] = [parse_score(x) for x in replies]
        out[f"{col}_reply"] = replies
    import pandas as pd

    return pd.DataFrame(out)


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.evaluate", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("ppl", "choice"):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True, help="HF model folder: a merged model, or the base with --lora_model")
        s.add_argument("--lora_model", default=None, help="PEFT LoRA folder applied on top of --model")
        s.add_argument("--tokenizer_path", default=None, help="tokenizer folder (default: LoRA, else the model)")
        s.add_argument("--data_file", required=True)
        s.add_argument("--output_file", required=True, help="JSON file for the results")
        s.add_argument("--batch_size", type=int, default=8)
        s.add_argument("--only_cpu", action="store_true", help="run on CPU even when a GPU is present")
    ppl = sub.choices["ppl"]
    ppl.add_argument("--max_length", type=int, default=None, help="window in tokens (default: context, <= 1024)")
    ppl.add_argument("--stride", type=int, default=None, help="tokens the window moves (default: max_length / 2)")
    ch = sub.choices["choice"]
    ch.add_argument("--shots", type=int, default=0, help="solved dev questions before each question (0 = zero-shot)")
    ch.add_argument("--dev_file", default=None, help="dev split for the shots (default: dev.* next to --data_file)")
    ch.add_argument("--template", default="none", help=f"prompt template: {' | '.join(TEMPLATE_NAMES)}")
    ch.add_argument("--method", default="letter", choices=METHODS, help="letter logits (C-Eval) or answer log-likelihood")
    return p


def _default_dev(data_file: Path) -> Path | None:
    for suffix in (".jsonl", ".json", ".csv"):
        cand = data_file.with_name("dev" + suffix)
        if cand.is_file() and cand.resolve() != data_file.resolve():
            return cand
    return None


def _run(args) -> int:
    from .io import write_json
    from .modeling import load_model

    if args.batch_size < 1:
        raise CourseError(f"--batch_size {args.batch_size}: must be at least 1")
    if not Path(args.model).exists():
        raise CourseError(f"--model {args.model}: folder not found")
    if args.command == "ppl":
        text = read_text(args.data_file)
    else:
        check_template(args.template)
        questions = load_questions(args.data_file)
        dev = None
        if args.shots < 0:
            raise CourseError(f"--shots {args.shots}: must be 0 or more")
        if args.shots:
            dev_file = Path(args.dev_file) if args.dev_file else _default_dev(Path(args.data_file))
            if dev_file is None:
                raise CourseError(f"--shots {args.shots} needs --dev_file (no dev.jsonl next to {args.data_file})")
            dev = load_questions(dev_file, flag="--dev_file")
    model, tok = load_model(args.model, lora_model=args.lora_model, tokenizer_path=args.tokenizer_path,
                            device="cpu" if args.only_cpu else None)
    if args.command == "ppl":
        res = perplexity(model, tok, text, args.max_length, args.stride, args.batch_size, where=args.data_file)
        out = {**res.as_dict(), "model": str(args.model), "lora_model": args.lora_model, "data_file": args.data_file}
        print(f"ppl {res.ppl:.3f}  bits/char {res.bits_per_char:.3f}  ({res.tokens} tokens, {res.chars} chars)")
    else:
        res = choice_eval(model, tok, questions, dev, args.shots, args.template, args.method, args.batch_size)
        out = {**res.as_dict(), "model": str(args.model), "lora_model": args.lora_model, "data_file": args.data_file}
        print(f"accuracy {res.accuracy:.3f} ({res.correct}/{res.n}), 95% CI [{res.ci_low:.2f}, {res.ci_high:.2f}]")
    write_json(args.output_file, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.evaluate ppl|choice ...``; exit 2 with a message on bad input."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
