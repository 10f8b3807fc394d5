"""Step 01: crawl instruction data from a chat model (seed 002 第1步 ``crawl_prompt.py``), course version.

The original asked gpt-3.5-turbo (pre-1.0 ``openai`` API, key in the code) for 20 JSON records per call,
built from random topic and task-type lists with length limits, and saved the raw text. Here:

* any OpenAI-compatible endpoint (``--base_url``, ``--model``; key from ``OPENAI_API_KEY``, never a flag):
  OpenAI, DeepSeek, Qwen/DashScope, a vLLM server, the course's own ``python -m helpers.api``;
* a Chinese system prompt from ``data/crawl_topics.json`` (topics, task types, length limits);
* robust parsing of answers (plain JSON, ```json fences, JSON lines, truncated arrays) into Alpaca records,
  validation, de-duplication (normalized text + difflib similarity, 3-gram index to find candidates);
* ``OUTPUT`` is an append-only JSONL file with ONE line per finished round (prompt, raw answer, accepted
  records, rejected items with reasons, duplicates): a crash loses at most the round in flight, a torn last
  line is repaired, and a re-run resumes at the next round with the de-dup index rebuilt -> nothing lost,
  nothing duplicated;
* retries with exponential backoff (``Retry-After`` honoured) on 429, 5xx, timeouts and connection errors;
* ``export_alpaca`` writes the accepted records as the Alpaca JSON list the SFT step reads.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

from .core import DATA_DIR, CourseError, cli_main
from .io import read_json, write_json
from .vocab import CJK  # one definition of a Chinese character (CJK ideographs, Ext. A, compatibility)

TOPICS_FILE = DATA_DIR / "crawl_topics.json"
ANSWERS_DIR = DATA_DIR / "crawl_answers"
KEY_ALIASES = {
    "instruction": ("instruction", "指令", "问题", "prompt", "question"),
    "input": ("input", "输入", "context"),
    "output": ("output", "输出", "回答", "answer", "response"),
}
PLACEHOLDER_INPUTS = {"", "无", "无输入", "<input>", "<无输入>", "none", "null", "n/a", "空"}


class CrawlError(CourseError):
    """The crawl cannot go on (bad key, endpoint down after every retry, bad topics file)."""


# --------------------------------------------------------------------------- prompt
def load_topics(path: str | Path | None = None) -> dict:
    """The topic/task-type lists and length limits (``data/crawl_topics.json`` by default)."""
    cfg = read_json(path or TOPICS_FILE)
    if not isinstance(cfg, dict):
        raise CrawlError(f"{path or TOPICS_FILE}: must be a JSON object with 'topics' and 'task_types' lists "
                         "(see data/crawl_topics.json)")
    for key in ("topics", "task_types"):
        value = cfg.get(key)
        if not isinstance(value, list) or len(value) < 2 or not all(isinstance(x, str) and x for x in value):
            raise CrawlError(f"{path or TOPICS_FILE}: field '{key}' must be a list of at least 2 non-empty strings")
    return cfg


def build_messages(rng: random.Random, cfg: dict, n_records: int | None = None) -> list[dict]:
    """Chat messages asking for ``n_records`` Alpaca records: Chinese system prompt + user request."""
    n = n_records or cfg.get("records_per_round", 20)
    topics = rng.sample(cfg["topics"], min(cfg.get("topics_per_round", 8), len(cfg["topics"])))
    tasks = rng.sample(cfg["task_types"], min(cfg.get("tasks_per_round", 8), len(cfg["task_types"])))
    in_max = rng.randint(*cfg.get("input_max_chars", [60, 120]))
    out_max = rng.randint(*cfg.get("output_max_chars", [120, 400]))
    system = (
        "你是一名指令数据标注专家，需要尽可能给出多样化的任务指令和对应的回答，用于训练中文指令模型。要求：\n"
        f"1. 主题多样化，涵盖各个领域，例如：{'、'.join(topics)}等。\n"
        f"2. 表述多样化，结合真实问题；指令类型多样化，例如：{'、'.join(tasks)}等。\n"
        "3. 如果遇到只靠文本无法完成的指令，给出无法处理的说明。\n"
        "4. 除非特别要求，请使用中文；指令可以是命令句、疑问句或其他合适的形式。\n"
        f"5. 需要时为指令提供真实、具体的 input（不要只写占位符），不超过{in_max}字；不需要时 input 为空字符串。\n"
        f"6. output 是对指令恰当、真实的回答，不能只答应或拒绝；少于{out_max}字。\n"
        '7. 只输出一个 JSON 数组，每个元素形如 {"instruction": "...", "input": "...", "output": "..."}，不要输出其他文字。'
    )
    user = f"请给出满足条件的{n}条 JSON 格式数据。"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------- parsing
@dataclass
class Parsed:
    """What one raw answer yielded: candidate dicts, their status, and why not everything parsed."""

    items: list[dict]
    status: str  # ok | truncated | garbage
    reason: str = ""


FENCE = re.compile(r"```(?:json|JSON|jsonl)?\s*\n?(.*?)(?:```|\Z)", re.S)


def _unwrap(obj) -> list | None:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        for key in ("data", "records", "items", "instructions", "results"):
            if isinstance(obj.get(key), list):
                return obj[key]
        return [obj]
    return None


def _scan_objects(text: str) -> tuple[list[dict], int]:
    """Every complete top-level ``{...}`` JSON object in ``text`` and where the last one ends.

    Written by hand because ``json`` has no salvage mode for a cut-off array.
    """
    dec, out, i, last = json.JSONDecoder(), [], 0, 0
    while (i := text.find("{", i)) >= 0:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        if isinstance(obj, dict):
            out.append(obj)
            last = end
        i = end
    return out, last


def parse_answer(text: str) -> Parsed:
    """Parse a model answer into candidate record dicts (plain JSON, fenced, JSON lines, truncated)."""
    if not isinstance(text, str) or not text.strip():
        return Parsed([], "garbage", "empty answer")
    fenced = [m.group(1) for m in FENCE.finditer(text)]
    bodies = ["\n".join(fenced)] if fenced else []
    bodies.append(text)
    for body in bodies:
        body = body.strip()
        try:
            items = _unwrap(json.loads(body))
        except json.JSONDecodeError:
            items = None
        if items is not None:
            return Parsed([x for x in items if isinstance(x, dict)], "ok" if items else "garbage",
                          "" if items else "empty JSON")
        start, brace = body.find("["), body.find("{")
        if start >= 0 and (brace < 0 or start < brace):
            try:  # an array followed by chatter
                items, _ = json.JSONDecoder().raw_decode(body, start)
                if isinstance(items, list) and items:
                    return Parsed([x for x in items if isinstance(x, dict)], "ok")
            except json.JSONDecodeError:
                pass
    objects, last = _scan_objects(bodies[0])
    if objects:
        rest = bodies[0][last:]
        if "{" in rest:  # a record was started after the last complete one: the answer was cut off
            return Parsed(objects, "truncated", f"answer cut off: kept the {len(objects)} complete records before the cut")
        return Parsed(objects, "ok")
    if "{" in text:
        return Parsed([], "garbage", "JSON-like text but no complete record (truncated or malformed)")
    return Parsed([], "garbage", "no JSON in the answer")


# --------------------------------------------------------------------------- validation & de-dup
def normalize_record(item: dict) -> dict | None:
    """Map key aliases (``指令``/``输入``/``输出``, ...) to an Alpaca record; ``None`` when a key is missing."""
    out = {}
    lower = {str(k).strip().lower(): v for k, v in item.items()}
    for key, aliases in KEY_ALIASES.items():
        value = next((lower[a] for a in aliases if a in lower), None)
        if value is None and key == "input":
            value = ""
        if value is None:
            return None
        out[key] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    out = {k: v.strip() for k, v in out.items()}
    if out["input"].lower() in PLACEHOLDER_INPUTS:
        out["input"] = ""
    return out


def validate(rec: dict | None, limits: dict | None = None) -> str | None:
    """Why ``rec`` is not a usable Chinese Alpaca record, or ``None`` when it is."""
    limits = limits or {}
    if rec is None:
        return "missing field (instruction/output)"
    if not rec["instruction"]:
        return "empty instruction"
    if not rec["output"]:
        return "empty output"
    if not CJK.search(rec["instruction"] + rec["output"]):
        return "not Chinese"
    if len(rec["instruction"]) > limits.get("instruction_max_chars", 300):
        return "instruction too long"
    if len(rec["input"]) > limits.get("input_hard_max_chars", 600):
        return "input too long"
    if len(rec["output"]) > limits.get("output_hard_max_chars", 1500):
        return "output too long"
    if len(rec["output"]) < limits.get("output_min_chars", 2):
        return "output too short"
    return None


_DROP = {"P", "S", "Z", "C"}  # punctuation, symbols, separators, control characters


def norm_text(text: str) -> str:
    """NFKC, lower case, without punctuation/whitespace: the exact-duplicate key."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in _DROP)


def ngrams(text: str, n: int = 3) -> set[str]:
    return {text[i:i + n] for i in range(max(1, len(text) - n + 1))} if text else set()


class Deduper:
    """Exact (normalized text) and near duplicates of instruction+input.

    Near: ``difflib`` similarity ratio ≥ ``threshold``. Comparing with every earlier record would be quadratic,
    so an inverted index of character 3-grams first picks the candidates sharing at least ``prefilter`` of
    their 3-grams (Jaccard), and only those are compared with difflib.
    """

    def __init__(self, threshold: float = 0.8, n: int = 3, prefilter: float = 0.25):
        self.threshold, self.n, self.prefilter = threshold, n, prefilter
        self.exact: dict[str, int] = {}
        self.keys: list[str] = []
        self.grams: list[set[str]] = []
        self.index: dict[str, list[int]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def key(rec: dict) -> str:
        return norm_text(rec["instruction"] + "|" + rec["input"])

    def check(self, rec: dict) -> tuple[int, float] | None:
        """``(id of the earlier record, similarity)`` when ``rec`` duplicates one, else ``None``."""
        key = self.key(rec)
        if key in self.exact:
            return self.exact[key], 1.0
        grams = ngrams(key, self.n)
        shared = Counter(j for g in grams for j in self.index.get(g, ()))
        best = None
        for j, common in shared.items():
            if common / (len(grams) + len(self.grams[j]) - common) < self.prefilter:
                continue
            sim = SequenceMatcher(None, key, self.keys[j], autojunk=False).ratio()
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (j, sim)
        return best

    def add(self, rec: dict) -> int:
        key = self.key(rec)
        rid = len(self.keys)
        grams = ngrams(key, self.n)
        self.exact.setdefault(key, rid)
        self.keys.append(key)
        self.grams.append(grams)
        for g in grams:
            self.index[g].append(rid)
        return rid


@dataclass
class RoundOutcome:
    """The accounting of one answer: accepted records, rejected items (with reasons), duplicates."""

    status: str
    reason: str
    accepted: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)

    def counts(self) -> dict:
        return {"status": self.status, "parsed": len(self.accepted) + len(self.rejected) + len(self.duplicates),
                "accepted": len(self.accepted), "rejected": len(self.rejected), "duplicates": len(self.duplicates)}


def process_answer(text: str, deduper: Deduper, limits: dict | None = None) -> RoundOutcome:
    """Parse, validate and de-duplicate one raw answer; accepted records are added to ``deduper``."""
    parsed = parse_answer(text)
    out = RoundOutcome(parsed.status, parsed.reason)
    kept: list[dict] = []
    for item in parsed.items:
        rec = normalize_record(item)
        why = validate(rec, limits)
        if why:
            out.rejected.append({"item": item, "reason": why})
            continue
        dup = deduper.check(rec)
        if dup:
            out.duplicates.append({"record": rec, "of": dup[0], "similarity": round(dup[1], 3)})
            continue
        deduper.add(rec)
        kept.append(rec)
    out.accepted = kept
    if parsed.items and not kept and parsed.status == "ok":
        out.status, out.reason = "rejected", "no usable record in the answer"
    return out


def process_folder(folder: str | Path = ANSWERS_DIR, threshold: float = 0.8):
    """Run parser + validation + de-dup over recorded answers (``*.txt``, in name order).

    Returns ``(table, outcomes)``: a pandas DataFrame with one row per file and a total row, and the
    :class:`RoundOutcome` objects (to look at rejected items and duplicates).
    """
    import pandas as pd

    files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise CrawlError(f"{folder}: no recorded answers (*.txt)")
    dedup, rows, outcomes = Deduper(threshold), [], {}
    for f in files:
        oc = process_answer(f.read_text(encoding="utf-8"), dedup)
        outcomes[f.name] = oc
        rows.append({"answer": f.name, **oc.counts(), "reason": oc.reason})
    table = pd.DataFrame(rows)
    total = {"answer": "TOTAL", "status": "", "reason": ""}
    total.update({k: int(table[k].sum()) for k in ("parsed", "accepted", "rejected", "duplicates")})
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True), outcomes


# --------------------------------------------------------------------------- the append-only log
def read_log(path: str | Path, repair: bool = False) -> list[dict]:
    """The finished rounds in ``path`` (one JSON object per line); a torn last line is dropped.

    ``repair``: also truncate the file to its last complete line (so appending continues cleanly).
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")  # the last item is what follows the final newline ("" when the file ends with one)
    rounds, good_end, pos, add_newline = [], 0, 0, False
    for n, line in enumerate(lines, 1):
        end = pos + len(line) + 1  # just past this line's newline
        last = n == len(lines)  # no newline after it
        if line.strip():
            try:
                rounds.append(json.loads(line))
            except json.JSONDecodeError:
                if not last:  # a broken line in the middle: the file was edited by hand
                    raise CrawlError(f"{path}: line {n} is not JSON; fix or remove it") from None
                break  # a torn last line: the round in flight when the crawl stopped
            if last:  # complete JSON but the newline was never written
                add_newline = True
                break
        if not last:
            good_end = pos = end
    if repair and add_newline:
        with open(path, "ab") as f:
            f.write(b"\n")
    elif repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return rounds


def append_round(path: str | Path, entry: dict) -> None:
    """Append one round as ONE line with one write, flushed and fsynced."""
    line = json.dumps(entry, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def records_of(rounds: list[dict]) -> list[dict]:
    return [r for entry in rounds for r in entry.get("records", [])]


def export_alpaca(log: str | Path, out: str | Path) -> Path:
    """Write the accepted records of a crawl log as an Alpaca JSON list (instruction/input/output)."""
    recs = [{k: r[k] for k in ("instruction", "input", "output")} for r in records_of(read_log(log))]
    return write_json(out, recs)


def accounting(log: str | Path):
    """A pandas DataFrame of a crawl log: one row per round plus a TOTAL row."""
    import pandas as pd

    rows = [{"round": e["round"], "status": e["status"], "parsed": e["counts"]["parsed"],
             "accepted": e["counts"]["accepted"], "rejected": e["counts"]["rejected"],
             "duplicates": e["counts"]["duplicates"], "retries": e.get("retries", 0), "reason": e.get("reason", "")}
            for e in read_log(log)]
    table = pd.DataFrame(rows, columns=["round", "status", "parsed", "accepted", "rejected", "duplicates",
                                        "retries", "reason"])
    if rows:
        total = {"round": "TOTAL", "status": f"{sum(r['status'] in ('ok', 'truncated') for r in rows)} usable answers",
                 "reason": ""}
        total.update({k: int(table[k].sum()) for k in ("parsed", "accepted", "rejected", "duplicates", "retries")})
        table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    return table


# --------------------------------------------------------------------------- calling the endpoint
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


def backoff_delay(attempt: int, base: float, cap: float, retry_after: str | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``Retry-After`` if given, else base·2^attempt + jitter."""
    if retry_after:
        try:
            return min(cap, max(0.0, float(retry_after)))
        except ValueError:
            pass
    jitter = (rng or random).uniform(0, base)
    return min(cap, base * (2 ** attempt) + jitter)


def ask(client, model: str, messages: list[dict], max_retries: int = 5, backoff: float = 1.0,
        backoff_cap: float = 60.0, sleep=time.sleep, log=None, **params) -> tuple[str, int]:
    """One chat completion with retries; returns ``(answer text, retries used)``.

    Retries are done here (the client is built with ``max_retries=0``) so they can be counted and logged:
    429/5xx/timeouts/connection errors back off exponentially; other 4xx fail at once.
    """
    import openai

    for attempt in range(max_retries + 1):
        try:
            resp = client.chat.completions.create(model=model, messages=messages, **params)
            return resp.choices[0].message.content or "", attempt
        except openai.AuthenticationError as e:
            raise CrawlError(f"the endpoint refused the key (401): set OPENAI_API_KEY (or --api_key_env) to a valid key; "
                             f"{e.message}") from e
        except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as e:
            status = getattr(e, "status_code", None)
            if status is not None and status not in RETRYABLE_STATUS:
                raise CrawlError(f"the endpoint answered {status}: {getattr(e, 'message', e)}; check --base_url and "
                                 "--model (404: wrong address or model name) and --max_tokens/--temperature (400)") from e
            if attempt == max_retries:
                raise CrawlError(f"gave up after {max_retries + 1} attempts: {type(e).__name__} {status or ''}; "
                                 "re-run the same command later to resume") from e
            headers = getattr(getattr(e, "response", None), "headers", None) or {}
            delay = backoff_delay(attempt, backoff, backoff_cap, headers.get("retry-after"))
            if log:
                log(f"{type(e).__name__} {status or ''}: retry {attempt + 1}/{max_retries} in {delay:.1f}s")
            sleep(delay)
    raise AssertionError("unreachable")


def make_client(base_url: str | None, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0):
    """An ``openai.OpenAI`` client for any compatible endpoint; the key comes from the environment only."""
    from openai import OpenAI

    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    key = os.environ.get(api_key_env)
    if not key:
        if re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", base_url):
            key = "EMPTY"  # local servers (the course API, vLLM) need no key unless started with one
        else:
            raise CrawlError(f"{api_key_env} is not set: export {api_key_env}=... in your shell "
                             "(never write a key into a notebook or a script)")
    return OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)


def crawl(output: str | Path, rounds: int, client, model: str, topics: str | Path | None = None,
          records_per_round: int | None = None, seed: int = 0, threshold: float = 0.8, max_retries: int = 5,
          backoff: float = 1.0, progress: bool = True, sleep=time.sleep, **params) -> dict:
    """Run (or resume) a crawl until ``output`` holds ``rounds`` finished rounds; returns the totals.

    Round ``k`` always uses the prompt drawn with seed ``seed + k``, so a resumed run asks the same questions
    an uninterrupted one would.
    """
    from tqdm.auto import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cfg = load_topics(topics)
    done = read_log(output, repair=True)
    dedup = Deduper(threshold)
    for rec in records_of(done):
        dedup.add(rec)
    totals = Counter()
    bar = tqdm(range(len(done), rounds), desc="crawl", unit="round", disable=not progress,
               initial=len(done), total=rounds)
    for k in bar:
        messages = build_messages(random.Random(seed + k), cfg, records_per_round)
        answer, retries = ask(client, model, messages, max_retries=max_retries, backoff=backoff, sleep=sleep,
                              log=bar.write if progress else None, **params)
        oc = process_answer(answer, dedup)
        entry = {"round": k, "seed": seed + k, "model": model, "status": oc.status, "reason": oc.reason,
                 "retries": retries, "counts": oc.counts(), "records": oc.accepted, "rejected": oc.rejected,
                 "duplicates": oc.duplicates, "raw": answer, "messages": messages}
        append_round(output, entry)
        totals.update({k2: v for k2, v in oc.counts().items() if k2 != "status"})
        totals["retries"] += retries
        totals[f"answers_{oc.status}"] += 1
        bar.set_postfix(accepted=totals["accepted"], rejected=totals["rejected"], dup=totals["duplicates"])
    bar.close()
    all_rounds = read_log(output)
    return {"rounds": len(all_rounds), "new_rounds": max(0, rounds - len(done)),
            "records": len(records_of(all_rounds)), **dict(totals)}


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.crawl``."""
    p = argparse.ArgumentParser(prog="python -m helpers.crawl",
                                description="Crawl Chinese instruction data from any OpenAI-compatible endpoint")
    p.add_argument("output", help="append-only crawl log (JSONL, one line per round); re-run to resume")
    p.add_argument("--rounds", type=int, default=1, help="total rounds wanted in OUTPUT (each asks for N records)")
    p.add_argument("--base_url", default=None, help="endpoint, e.g. https://api.deepseek.com/v1 or "
                   "http://127.0.0.1:19327/v1 (default: $OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--model", default="gpt-4o-mini", help="model name at that endpoint")
    p.add_argument("--api_key_env", default="OPENAI_API_KEY", help="environment variable holding the key")
    p.add_argument("--topics", default=None, help="topics/task types JSON (default data/crawl_topics.json)")
    p.add_argument("--records_per_round", type=int, default=None, help="records asked per call (default 20)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max_tokens", type=int, default=None, help="answer length limit sent to the endpoint")
    p.add_argument("--seed", type=int, default=0, help="round k draws its topics with seed+k")
    p.add_argument("--similarity", type=float, default=0.8, help="difflib ratio above which two instructions are duplicates")
    p.add_argument("--max_retries", type=int, default=5)
    p.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles each time)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--export", default=None, help="Alpaca JSON written at the end (default OUTPUT with .alpaca.json)")
    return p


def _run(args) -> int:
    """The CLI: crawl (or resume), export the Alpaca JSON, print the totals."""
    if args.rounds < 1:
        raise CrawlError("--rounds must be at least 1")
    client = make_client(args.base_url, args.api_key_env, args.timeout)
    params = {"temperature": args.temperature}
    if args.max_tokens:
        params["max_tokens"] = args.max_tokens
    totals = crawl(args.output, args.rounds, client, args.model, topics=args.topics,
                   records_per_round=args.records_per_round, seed=args.seed, threshold=args.similarity,
                   max_retries=args.max_retries, backoff=args.backoff, **params)
    out = Path(args.export or Path(args.output).with_suffix(".alpaca.json"))
    export_alpaca(args.output, out)
    print(json.dumps(totals, ensure_ascii=False), f"Alpaca JSON: {out} ({totals['records']} records)", sep="\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Crawl, then export; prints the totals. Returns 0, or 2 with a message on bad input / endpoint failure."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
