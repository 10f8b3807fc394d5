"""helpers.evaluate: perplexity against hand-written references, rigged models for the choice scorer, few-shot
hygiene, bad input, the CLI, and the trained tiny model's PT effect."""
import json
import math
import types

import pytest
import torch

from helpers import evaluate as ev
from helpers import tiny
from helpers.core import DATA_DIR, CourseError
from helpers.modeling import load_model


@pytest.fixture(scope="module")
def pt_model():
    return load_model(tiny.trained_model("pt"), device="cpu")


@pytest.fixture(scope="module")
def questions():
    return ev.load_questions(DATA_DIR / "choice_zh" / "test.jsonl"), ev.load_questions(DATA_DIR / "choice_zh" / "dev.jsonl")


def _hf_doc_nll(model, ids, max_length, stride):
    """The loop of the transformers docs' 'Perplexity of fixed-length models' page, one window at a time with the
    model's own loss: returns (total nll in nats, scored tokens)."""
    seq = torch.tensor([ids])
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, seq.size(1), stride):
        end = min(begin + max_length, seq.size(1))
        trg_len = end - prev_end
        inp = seq[:, begin:end]
        labels = inp.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids=inp, labels=labels).loss
        n_valid = int((labels[:, 1:] != -100).sum())
        total += float(loss) * n_valid
        count += n_valid
        prev_end = end
        if end == seq.size(1):
            break
    return total, count


def test_perplexity_single_window_matches_hand_loop(pt_model):
    model, tok = pt_model
    text = "长江是中国最长的河流，全长约六千三百公里。黄河是中华民族的母亲河。"
    ids = tok(text)["input_ids"]
    res = ev.perplexity(model, tok, text, max_length=len(ids))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    nll = 0.0
    for t in range(1, len(ids)):  # hand loop: -log softmax of the true next token
        row = logits[t - 1].double()
        nll -= float(row[ids[t]] - torch.logsumexp(row, 0))
    assert res.tokens == len(ids) - 1
    assert res.nll == pytest.approx(nll, rel=1e-5)
    assert res.ppl == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)
    assert res.bits_per_char == pytest.approx(nll / math.log(2) / len(text), rel=1e-5)
    assert res.bits_per_byte == pytest.approx(nll / math.log(2) / len(text.encode("utf-8")), rel=1e-5)


@pytest.mark.parametrize("max_length,stride,batch", [(64, 32, 3), (64, 64, 8), (100, 17, 1)])
def test_sliding_window_matches_transformers_docs_loop(pt_model, max_length, stride, batch):
    model, tok = pt_model
    text = ev.read_text(DATA_DIR / "zh_heldout.txt")[:300]
    ids = tok(text)["input_ids"]
    total, count = _hf_doc_nll(model, ids, max_length, stride)
    res = ev.perplexity(model, tok, text, max_length=max_length, stride=stride, batch_size=batch)
    assert res.tokens == count
    # overlapping windows predict every token after BOS; non-overlapping ones lose each window's first token
    assert count == len(ids) - 1 - (0 if stride < max_length else res.windows - 1)
    assert res.nll == pytest.approx(total, rel=1e-4)


class Rigged(torch.nn.Module):
    """A language model that always puts +bonus logits on ``prefer`` (token ids): its choices are known."""

    def __init__(self, vocab: int, prefer: list[int], bonus: float = 5.0):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 4)
        self.bias = torch.zeros(vocab)
        self.bias[prefer] = bonus
        self.config = types.SimpleNamespace(max_position_embeddings=4096)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask=None, **kw):
        return types.SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1).clone())


@pytest.fixture(scope="module")
def alpaca_tok():
    from helpers.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny.merged_tokenizers()["alpaca_hf"])
    tok.pad_token = tok.pad_token or tok.unk_token
    return tok


@pytest.mark.parametrize("letter", ["A", "C"])
@pytest.mark.parametrize("template", ["none", "alpaca"])
def test_letter_scorer_follows_a_rigged_model(alpaca_tok, questions, letter, template):
    test, dev = questions
    # the token the tokenizer uses for the letter right after the prompt's "答案：" / "Response: "
    prompt = ev.build_choice_prompt(test[0], dev, 1, template)
    _, cont = ev.continuation_ids(alpaca_tok, prompt, letter)
    model = Rigged(len(alpaca_tok), [cont[0]])
    res = ev.choice_eval(model, alpaca_tok, test, dev, shots=1, template=template, batch_size=5)
    expected = sum(1 for line in (DATA_DIR / "choice_zh" / "test.jsonl").read_text(encoding="utf-8").splitlines()
                   if json.loads(line)["answer"] == letter)
    assert {p["pred"] for p in res.predictions} == {letter}
    assert res.correct == expected and res.n == 66


def test_loglik_scorer_picks_the_option_made_of_preferred_tokens(alpaca_tok):
    ids = alpaca_tok("北", add_special_tokens=False)["input_ids"]
    q = [{"id": "x1", "subject": "geography", "question": "哪个方向？", "A": "南南", "B": "东东", "C": "北北",
          "D": "西西", "answer": "C"},
         {"id": "x2", "subject": "geography", "question": "再问一次？", "A": "北北", "B": "南南", "C": "东东",
          "D": "西西", "answer": "B"}]
    q = [ev.validate_question(r, "case") for r in q]
    model = Rigged(len(alpaca_tok), ids)
    res = ev.choice_eval(model, alpaca_tok, q, method="loglik")
    assert [p["pred"] for p in res.predictions] == ["C", "A"]
    assert res.correct == 1 and res.accuracy == 0.5


def test_few_shot_never_includes_the_asked_question(questions):
    test, dev = questions
    pool = dev + test  # the asked question is in the pool: it must still be left out
    for q in test + dev:
        prompt = ev.build_choice_prompt(q, pool, 5)
        assert prompt.count(q["question"]) == 1, q["id"]
        assert prompt.endswith(ev.format_question(q))
        assert prompt.count("答案：") == 6
    same = ev.pick_shots(test[0], dev, 3)
    assert all(d["subject"] == test[0]["subject"] for d in same)


def test_wilson_interval_hand_worked():
    # p = 0.8, n = 10, z = 1.96: centre 0.99208 / 1.38416, half-width 1.96 * sqrt(0.025604) / 1.38416
    lo, hi = ev.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = ev.wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)  # 3.8416 / 23.8416


def test_bad_question_records_name_the_record(tmp_path):
    f = tmp_path / "q.jsonl"
    good = {"id": 1, "question": "问？", "A": "一", "B": "二", "C": "三", "D": "四", "answer": "A"}
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": 2, "C": ""}) + "\n", encoding="utf-8")
    with pytest.raises(CourseError, match=r"record 2.*missing field.*'C'"):
        ev.load_questions(f)
    f.write_text(json.dumps({**good, "id": 7, "answer": "E"}) + "\n", encoding="utf-8")
    with pytest.raises(CourseError, match=r"record 1 \(id 7\).*'E'.*A, B, C, D"):
        ev.load_questions(f)


def test_bad_template_short_text_and_vocab_mismatch(pt_model, alpaca_tok, questions):
    model, tok = pt_model
    with pytest.raises(CourseError, match=r"'chatml'.*\['none', 'alpaca', 'alpaca2'\]"):
        ev.build_choice_prompt(questions[0][0], template="chatml")
    with pytest.raises(CourseError, match="shorter than one window"):
        ev.perplexity(model, tok, "很短的文本。", max_length=64)
    with pytest.raises(CourseError, match="embedding rows"):
        ev.choice_eval(Rigged(500, [1]), alpaca_tok, questions[0][:2])
    with pytest.raises(CourseError, match="--shots 2 needs a dev split"):
        ev.choice_eval(model, tok, questions[0][:2], shots=2)


def test_cli_ppl_and_choice(tmp_path):
    model = tiny.trained_model("pt")
    out = tmp_path / "ppl.json"
    assert ev.main(["ppl", "--model", str(model), "--data_file", str(DATA_DIR / "zh_heldout.txt"), "--max_length",
                    "256", "--output_file", str(out), "--only_cpu"]) == 0
    r = json.loads(out.read_text(encoding="utf-8"))
    assert {"ppl", "bits_per_char", "tokens", "chars"} <= set(r) and r["chars"] == len(ev.read_text(DATA_DIR / "zh_heldout.txt"))
    small = tmp_path / "test.jsonl"
    small.write_text("".join((DATA_DIR / "choice_zh" / "test.jsonl").read_text(encoding="utf-8").splitlines(True)[:6]),
                     encoding="utf-8")
    out2 = tmp_path / "choice.json"
    assert ev.main(["choice", "--model", str(model), "--data_file", str(small), "--shots", "2", "--dev_file",
                    str(DATA_DIR / "choice_zh" / "dev.jsonl"), "--template", "alpaca", "--output_file", str(out2),
                    "--only_cpu"]) == 0
    c = json.loads(out2.read_text(encoding="utf-8"))
    assert c["n"] == 6 and len(c["predictions"]) == 6 and 0 <= c["accuracy"] <= 1


def test_cli_exit_2_on_bad_input(tmp_path, capsys):
    model = str(tiny.trained_model("pt"))
    assert ev.main(["choice", "--model", model, "--data_file", str(DATA_DIR / "choice_zh" / "test.jsonl"),
                    "--shots", "0", "--template", "nope", "--output_file", str(tmp_path / "o.json")]) == 2
    assert "--template 'nope' is unknown" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "q", "A": "a", "B": "b", "C": "c", "answer": "A"}\n', encoding="utf-8")
    assert ev.main(["choice", "--model", model, "--data_file", str(bad), "--output_file", str(tmp_path / "o.json")]) == 2
    assert "record 1" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("短。\n", encoding="utf-8")
    assert ev.main(["ppl", "--model", model, "--data_file", str(short), "--output_file", str(tmp_path / "p.json"),
                    "--max_length", "64", "--only_cpu"]) == 2
    assert not (tmp_path / "p.json").exists()


def test_pretraining_lowers_heldout_bits_per_char():
    """The trained tiny model: PT on zh_corpus + pt_sample lowers bits/char on data/zh_heldout.txt vs random init."""
    text = ev.read_text(DATA_DIR / "zh_heldout.txt")
    bpc = {}
    for stage in ("base", "pt"):
        model, tok = load_model(tiny.trained_model(stage), device="cpu")
        bpc[stage] = ev.perplexity(model, tok, text, max_length=256, stride=256, batch_size=8).bits_per_char
    assert bpc["pt"] < bpc["base"] - 1.0, bpc


def test_continuation_scores_match_hand_loop(pt_model):
    """Batched log-likelihood of answers (padded rows) equals a one-by-one hand loop over log-softmax rows."""
    model, tok = pt_model
    pairs = [("中国的首都是哪里？\n答案：", "北京"), ("水的化学式是？\n答案：", "氢和氧组成的水分子H2O"),
             ("Below is an instruction.\n\n### Response: ", "长江")]
    got = ev.score_continuations(model, tok, pairs, batch_size=3)
    for (ctx, cont), score in zip(pairs, got):
        c_ids = tok(ctx.rstrip(" "))["input_ids"]
        full = tok(ctx.rstrip(" ") + ctx[len(ctx.rstrip(" ")):] + cont)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0].double()
        ref = sum(float(logits[t - 1, full[t]] - torch.logsumexp(logits[t - 1], 0)) for t in range(len(c_ids), len(full)))
        assert score == pytest.approx(ref, rel=1e-4)


def test_parse_score_hand_cases():
    assert [ev.parse_score(t) for t in ("4", "评分：5 分", "0 or 9", "", None, "打 3 分，满分 5")] == [4, 5, None, None,
                                                                                                  None, 3]


def test_judge_through_the_course_api_server():
    """The judge talks to a real ``python -m helpers.api`` on 127.0.0.1 (the trained tiny model): each reply is the
    server's own greedy answer to the judge prompt (asked again here with the openai client), scores are
    parse_score of the replies, one score column per answer column; a dead URL is a CourseError naming it."""
    import pandas as pd
    from openai import OpenAI

    from helpers.api import start_server

    table = pd.DataFrame({"instruction": ["中国的首都是哪里？", "写一句问候语"],
                          "base": ["北京", "你好"], "sft": ["北京是首都", "早上好"]})
    with start_server(tiny.trained_model("sft"), extra=["--model_name", "judge"], env={"OMP_NUM_THREADS": "1"}) as srv:
        got = ev.judge(table, srv.v1, model="judge", max_tokens=6)
        client = OpenAI(base_url=srv.v1, api_key="x", max_retries=0)
        want = client.chat.completions.create(model="judge", max_tokens=6, temperature=0, messages=[
            {"role": "user", "content": ev.JUDGE_PROMPT.format(instruction="写一句问候语", answer="早上好")}])
    assert list(got.columns) == ["instruction", "base", "base_reply", "sft", "sft_reply"]
    assert got.loc[1, "sft_reply"] == want.choices[0].message.content
    assert [ev.parse_score(r) for r in got["base_reply"]] == [None if pd.isna(x) else x for x in got["base"]]
    with pytest.raises(CourseError, match="127.0.0.1:9"):
        ev.judge(table, "http://127.0.0.1:9/v1", timeout=5)
