"""helpers.crawl: parsing, validation, de-dup, the resumable log, retries with backoff against a local test server."""
import hashlib
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import crawl
from helpers.crawl import CrawlError, Deduper, parse_answer, process_answer

REC = {"instruction": "请解释什么是光合作用。", "input": "", "output": "植物利用阳光合成有机物并释放氧气的过程。"}
REC2 = {"instruction": "把句子翻译成英文。", "input": "今天天气真好。", "output": "The weather is nice today."}
POOL = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处府"


# --------------------------------------------------------------------------- parsing
def test_parse_well_formed_fenced_jsonlines_wrapped():
    arr = json.dumps([REC, REC2], ensure_ascii=False)
    assert parse_answer(arr).items == [REC, REC2] and parse_answer(arr).status == "ok"
    fenced = f"好的，以下是数据：\n```json\n{arr}\n```\n希望有帮助！"
    assert parse_answer(fenced).items == [REC, REC2]
    assert parse_answer(f"```\n{arr}\n```").items == [REC, REC2]
    lines = "\n".join(f"{i}. {json.dumps(r, ensure_ascii=False)}" for i, r in enumerate([REC, REC2], 1))
    p = parse_answer(lines)
    assert p.items == [REC, REC2] and p.status == "ok"
    assert parse_answer(json.dumps({"data": [REC]}, ensure_ascii=False)).items == [REC]
    assert parse_answer(json.dumps(REC, ensure_ascii=False)).items == [REC]
    assert parse_answer(arr + "\n以上共两条。").items == [REC, REC2]


def test_parse_truncated_keeps_complete_records():
    arr = json.dumps([REC, REC2, REC], ensure_ascii=False)
    cut = arr[: arr.rfind("光合作用") + 2]
    p = parse_answer(cut)
    assert p.status == "truncated" and p.items == [REC, REC2] and "cut off" in p.reason
    p = parse_answer("```json\n" + cut)  # unterminated fence
    assert p.status == "truncated" and p.items == [REC, REC2]
    p = parse_answer('[{"instruction": "写一首诗", "output": "秋')
    assert p.status == "garbage" and p.items == [] and "no complete record" in p.reason


@pytest.mark.parametrize("text", ["", "   ", "抱歉，我无法完成这个请求。", "[]", "42", "```json\n```", "ok ok ok"])
def test_parse_garbage(text):
    p = parse_answer(text)
    assert p.status == "garbage" and p.items == [] and p.reason


def test_normalize_and_validate():
    rec = crawl.normalize_record({"指令": " 解释成语 ", "输入": "<无输入>", "输出": "比喻做多余的事。"})
    assert rec == {"instruction": "解释成语", "input": "", "output": "比喻做多余的事。"}
    assert crawl.validate(rec) is None
    assert crawl.normalize_record({"instruction": "x"}) is None
    assert crawl.validate(None).startswith("missing")
    assert crawl.validate({"instruction": "Name colors", "input": "", "output": "Red"}) == "not Chinese"
    assert crawl.validate({"instruction": "", "input": "", "output": "好"}) == "empty instruction"
    assert crawl.validate({"instruction": "写", "input": "", "output": "好" * 5000}) == "output too long"
    assert crawl.normalize_record({"instruction": "列出", "output": ["甲", "乙"]})["output"] == '["甲", "乙"]'


def test_dedup_exact_near_and_distinct():
    d = Deduper(0.8)
    d.add(REC)
    assert d.check({**REC, "instruction": "请解释 什么是光合作用？"}) == (0, 1.0)  # punctuation/space only
    near = d.check({**REC, "instruction": "请解释一下什么是光合作用。"})
    assert near is not None and 0.8 <= near[1] < 1
    assert d.check(REC2) is None
    assert d.check({**REC, "input": "用小学生能听懂的话回答，不超过五十个字。"}) is None  # same question, other input
    oc = process_answer(json.dumps([REC, REC, REC2, {"instruction": "Hi", "output": "Hello"}], ensure_ascii=False), d)
    assert [len(oc.accepted), len(oc.duplicates), len(oc.rejected)] == [1, 2, 1]  # REC was already known


def test_recorded_answers_accounting():
    table, outcomes = crawl.process_folder(crawl.ANSWERS_DIR)
    by = table.set_index("answer")
    assert by.loc["01_well_formed.txt", "accepted"] == 5 and by.loc["01_well_formed.txt", "status"] == "ok"
    assert by.loc["02_fenced.txt", "duplicates"] == 2
    assert by.loc["03_truncated.txt", "status"] == "truncated" and by.loc["03_truncated.txt", "accepted"] == 3
    assert by.loc["04_garbage.txt", "status"] == "garbage" and by.loc["06_cut_early.txt", "status"] == "garbage"
    assert by.loc["05_json_lines.txt", "rejected"] == 2
    total = by.loc["TOTAL"]
    assert total["parsed"] == total["accepted"] + total["rejected"] + total["duplicates"]
    kept = [r["instruction"] for oc in outcomes.values() for r in oc.accepted]
    assert len(kept) == total["accepted"] == len({crawl.norm_text(k) for k in kept})


def test_prompt_is_chinese_with_limits_and_deterministic():
    cfg = crawl.load_topics()
    m1 = crawl.build_messages(random.Random(3), cfg, 5)
    assert m1 == crawl.build_messages(random.Random(3), cfg, 5)
    assert m1 != crawl.build_messages(random.Random(4), cfg, 5)
    system = m1[0]["content"]
    assert "主题多样化" in system and "不超过" in system and "JSON" in system and "5条" in m1[1]["content"]
    assert sum(t in system for t in cfg["topics"]) >= cfg["topics_per_round"]


# --------------------------------------------------------------------------- a local OpenAI-compatible test server
class FakeOpenAI:
    """Answers /v1/chat/completions with records derived from the prompt; ``script`` lists failures first."""

    def __init__(self, script=(), fail_after=None, delay_first=0.0):
        self.script, self.fail_after, self.delay_first = list(script), fail_after, delay_first
        self.hits, self.ok = 0, 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.hits += 1
                if owner.hits == 1 and owner.delay_first:
                    time.sleep(owner.delay_first)
                if owner.script:
                    status, headers = owner.script.pop(0)
                    return self._send(status, {"error": {"message": "scripted", "type": "x", "param": None,
                                                         "code": None}}, headers)
                if owner.fail_after is not None and owner.ok >= owner.fail_after:
                    return self._send(500, {"error": {"message": "down", "type": "server_error", "param": None,
                                                      "code": None}})
                owner.ok += 1
                answer = FakeOpenAI.answer(body["messages"][0]["content"])
                return self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                        "choices": [{"index": 0, "finish_reason": "stop",
                                                     "message": {"role": "assistant", "content": answer}}],
                                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status, obj, headers=None):
                data = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def answer(system: str) -> str:
        """Three random Chinese records per prompt (+ one exact repeat): deterministic per prompt."""
        rng = random.Random(hashlib.sha256(system.encode()).hexdigest())
        recs = [{"instruction": "".join(rng.choice(POOL) for _ in range(14)), "input": "",
                 "output": "".join(rng.choice(POOL) for _ in range(30))} for _ in range(3)]
        return "```json\n" + json.dumps(recs + recs[:1], ensure_ascii=False) + "\n```"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    servers = []

    def make(**kw):
        servers.append(FakeOpenAI(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _client(url, timeout=10.0):
    from openai import OpenAI

    return OpenAI(base_url=url, api_key="sk-test", max_retries=0, timeout=timeout)


def test_backoff_on_429_then_200(fake, tmp_path):
    srv = fake(script=[(429, {}), (503, {}), (429, {"Retry-After": "0.25"})])
    waits = []
    totals = crawl.crawl(tmp_path / "log.jsonl", 1, _client(srv.url), "m", backoff=1.0, sleep=waits.append,
                         progress=False)
    assert srv.hits == 4 and totals["retries"] == 3 and totals["accepted"] == 3 and totals["duplicates"] == 1
    assert 1.0 <= waits[0] < 2.0 and 2.0 <= waits[1] < 3.0  # exponential with jitter
    assert waits[2] == 0.25  # Retry-After honoured
    assert crawl.read_log(tmp_path / "log.jsonl")[0]["retries"] == 3


def test_timeout_is_retried_and_4xx_fails_fast(fake, tmp_path):
    srv = fake(delay_first=1.5)
    text, retries = crawl.ask(_client(srv.url, timeout=0.5), "m", [{"role": "user", "content": "你好"}],
                              sleep=lambda s: None)
    assert retries == 1 and parse_answer(text).status == "ok"
    bad = fake(script=[(401, {})])
    with pytest.raises(CrawlError, match="OPENAI_API_KEY"):
        crawl.ask(_client(bad.url), "m", [{"role": "user", "content": "x"}], sleep=lambda s: None)
    assert bad.hits == 1
    gone = fake(script=[(404, {})])
    with pytest.raises(CrawlError, match="404.*--base_url and --model"):
        crawl.ask(_client(gone.url), "m", [{"role": "user", "content": "x"}], sleep=lambda s: None)
    assert gone.hits == 1  # not retried
    down = fake(script=[(500, {})] * 3)
    with pytest.raises(CrawlError, match="gave up after 3 attempts"):
        crawl.ask(_client(down.url), "m", [{"role": "user", "content": "x"}], max_retries=2, sleep=lambda s: None)


def test_resume_after_interruption_loses_and_duplicates_nothing(fake, tmp_path):
    ref = tmp_path / "ref.jsonl"
    crawl.crawl(ref, 6, _client(fake().url), "m", seed=7, progress=False)
    log = tmp_path / "log.jsonl"
    flaky = fake(fail_after=3)
    with pytest.raises(CrawlError):
        crawl.crawl(log, 6, _client(flaky.url), "m", seed=7, max_retries=1, sleep=lambda s: None, progress=False)
    assert len(crawl.read_log(log)) == 3
    with open(log, "a", encoding="utf-8") as f:  # a crash in the middle of writing round 3
        f.write('{"round": 3, "records": [{"instruction": "半')
    assert len(crawl.read_log(log)) == 3
    totals = crawl.crawl(log, 6, _client(fake().url), "m", seed=7, progress=False)
    assert totals["new_rounds"] == 3 and totals["rounds"] == 6
    rounds = crawl.read_log(log)
    assert [r["round"] for r in rounds] == list(range(6))
    assert crawl.records_of(rounds) == crawl.records_of(crawl.read_log(ref))  # nothing lost, same order
    out = crawl.export_alpaca(log, tmp_path / "alpaca.json")
    data = json.loads(out.read_text(encoding="utf-8"))
    assert len(data) == 18 and len({(r["instruction"], r["input"]) for r in data}) == 18
    assert all(set(r) == {"instruction", "input", "output"} for r in data)
    assert crawl.crawl(log, 6, _client(fake().url), "m", seed=7, progress=False)["new_rounds"] == 0
    acc = crawl.accounting(log)
    assert acc.iloc[-1]["accepted"] == 18 and acc.iloc[-1]["duplicates"] == 6


def test_cli(fake, tmp_path, monkeypatch, capsys):
    srv = fake()
    out = tmp_path / "crawl" / "zh.jsonl"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert crawl.main([str(out), "--rounds", "2", "--base_url", srv.url, "--model", "m"]) == 0
    data = json.loads((tmp_path / "crawl" / "zh.alpaca.json").read_text(encoding="utf-8"))
    assert len(data) == 6 and "Alpaca JSON" in capsys.readouterr().out
    monkeypatch.delenv("OPENAI_API_KEY")
    assert crawl.main([str(out), "--rounds", "3", "--base_url", "https://api.example.com/v1"]) == 2
    assert "OPENAI_API_KEY is not set" in capsys.readouterr().err
    assert crawl.main([str(out), "--rounds", "0", "--base_url", srv.url]) == 2
    assert capsys.readouterr().err == "error: --rounds must be at least 1\n"
    (tmp_path / "topics.json").write_text("[]", encoding="utf-8")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert crawl.main([str(out), "--rounds", "3", "--base_url", srv.url, "--topics", str(tmp_path / "topics.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'topics.json'}: must be a JSON object")


def test_read_log_repairs_torn_and_unterminated_lines(tmp_path):
    log = tmp_path / "log.jsonl"
    crawl.append_round(log, {"round": 0, "records": [REC]})
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"round": 1, "records": []}')  # complete, newline missing: kept
    assert [r["round"] for r in crawl.read_log(log, repair=True)] == [0, 1]
    assert log.read_text(encoding="utf-8").endswith("}\n")
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"round": 2, "rec')  # torn: dropped and cut away
    assert len(crawl.read_log(log, repair=True)) == 2 and log.read_text(encoding="utf-8").endswith("}\n")
    log.write_text('{"round": 0}\n\nnot json\n{"round": 1}\n', encoding="utf-8")
    with pytest.raises(CrawlError, match="line 3"):  # the file's own line number (blank lines count)
        crawl.read_log(log)
    log.write_bytes(b"")  # created but nothing written yet: left untouched
    assert crawl.read_log(log, repair=True) == [] and log.read_bytes() == b""


def test_load_topics_errors_name_the_file(tmp_path):
    bad = tmp_path / "topics.json"
    for content in ('["a", "b"]', '{"topics": ["a", "b"], "task_types": ["x"]}',
                    '{"topics": ["a", 3], "task_types": ["x", "y"]}'):
        bad.write_text(content, encoding="utf-8")
        with pytest.raises(CrawlError, match="topics.json"):
            crawl.load_topics(bad)
