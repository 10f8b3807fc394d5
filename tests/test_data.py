"""helpers.data: input formats -> one record shape, bad records, SFT masking/truncation, PT blocks, packing."""
import json

import pytest

from helpers import data
from helpers.core import DATA_DIR, CourseError
from helpers.prompts import build_prompt


@pytest.fixture(scope="module")
def tok():
    from helpers import tiny
    from helpers.tokenizer import load_tokenizer

    t = load_tokenizer(tiny.merged_tokenizers()["alpaca_hf"])
    t.padding_side = "right"
    return t


def _write(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


ALPACA = [{"instruction": "翻译成英文。", "input": "你好", "output": "Hello"},
          {"instruction": "写一句问候。", "input": "", "output": "早上好！"}]


def test_formats_normalize_to_one_shape(tmp_path):
    alpaca = data.load_sft_records(_write(tmp_path / "a.json", ALPACA))
    assert alpaca[0] == {"system": "", "turns": [{"user": "翻译成英文。\n你好", "assistant": "Hello"}]}
    assert alpaca[1]["turns"][0]["user"] == "写一句问候。"  # empty input: no newline
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ALPACA) + "\n", encoding="utf-8")
    assert data.load_sft_records(jsonl) == alpaca
    openai = [{"messages": [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "翻译成英文。\n你好"},
                            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "再来一次"},
                            {"role": "assistant", "content": "Hello again"}]}]
    sharegpt = [{"conversations": [{"from": "system", "value": "你是助手。"}, {"from": "human", "value": "翻译成英文。\n你好"},
                                   {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "再来一次"},
                                   {"from": "gpt", "value": "Hello again"}]}]
    a = data.load_sft_records(_write(tmp_path / "o.json", openai))
    b = data.load_sft_records(_write(tmp_path / "s.json", sharegpt))
    assert a == b
    assert a[0]["system"] == "你是助手。" and len(a[0]["turns"]) == 2
    assert a[0]["turns"][0] == alpaca[0]["turns"][0]


@pytest.mark.parametrize("records, where, what", [
    (ALPACA + [{"instruction": "缺少输出"}], "record 2", "'output'"),
    (ALPACA + [["not", "an", "object"]], "record 2", "expected an object"),
    ([{"instruction": "x", "output": 3}], "record 0", "must be a string"),
    ([{"messages": [{"role": "assistant", "content": "先说话"}]}], "record 0", "unexpected role"),
    ([{"conversations": [{"from": "human", "value": "只有问题"}]}], "record 0", "end with an assistant"),
    ([{"prompt": "x", "completion": "y"}], "record 0", "unknown record format"),
])
def test_bad_record_names_file_and_index(tmp_path, records, where, what):
    path = _write(tmp_path / "bad.json", records)
    with pytest.raises(CourseError) as e:
        data.load_sft_records(path)
    assert str(path) in str(e.value) and where in str(e.value) and what in str(e.value)


def test_bad_json_and_jsonl_lines(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text(json.dumps(ALPACA[0]) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(CourseError, match=r"broken.jsonl: line 2 \(record 1\)"):
        data.load_sft_records(p)
    q = tmp_path / "broken.json"
    q.write_text("[{]", encoding="utf-8")
    with pytest.raises(CourseError, match="broken.json: invalid JSON at line 1"):
        data.load_sft_records(q)
    g = tmp_path / "gbk.jsonl"
    g.write_bytes(json.dumps(ALPACA[0], ensure_ascii=False).encode("gbk"))
    with pytest.raises(CourseError, match="gbk.jsonl: not UTF-8"):
        data.load_sft_records(g)


def test_pt_texts_txt_csv_json(tmp_path):
    (tmp_path / "a.txt").write_text("第一行。\n\n第二行。\n", encoding="utf-8")
    assert data.load_pt_texts(tmp_path / "a.txt", data_cache_dir=tmp_path / "cache") == ["第一行。", "第二行。"]
    (tmp_path / "b.csv").write_text('id,text\n1,"甲，乙"\n2,丙\n', encoding="utf-8")
    assert data.load_pt_texts(tmp_path / "b.csv", data_cache_dir=tmp_path / "cache") == ["甲，乙", "丙"]
    with pytest.raises(CourseError, match="no column 'content'"):
        data.load_pt_texts(tmp_path / "b.csv", text_column="content")
    _write(tmp_path / "c.json", [{"text": "一"}, {"text": 5}])
    with pytest.raises(CourseError, match="c.json: record 1"):
        data.load_pt_texts(tmp_path / "c.json")
    assert data.dataset_files(tmp_path, (".txt", ".csv")) == [tmp_path / "a.txt", tmp_path / "b.csv"]


def test_sft_masking_prompt_and_eos(tok):
    rec = {"system": "", "turns": [{"user": "翻译成英文。\n你好", "assistant": "Hello"}]}
    out = data.tokenize_sft_record(rec, tok, 512, "alpaca")
    prompt_ids = tok(build_prompt("翻译成英文。", "你好"))["input_ids"]
    n = len(prompt_ids)
    assert out["input_ids"][:n] == prompt_ids and prompt_ids[0] == tok.bos_token_id
    assert out["labels"][:n] == [-100] * n
    assert out["labels"][n:] == out["input_ids"][n:]
    assert out["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(out["input_ids"][n:-1]) == "Hello" and not out["truncated"]


def test_alpaca2_template_and_multi_turn(tok):
    rec = {"system": "", "turns": [{"user": "你好", "assistant": "你好！"}, {"user": "再见", "assistant": "再见！"}]}
    out = data.tokenize_sft_record(rec, tok, 512, "alpaca2")
    text = tok.decode(out["input_ids"])
    assert text.startswith("<s> [INST] <<SYS>>") and "[INST] 再见 [/INST]" in text
    assert out["input_ids"].count(tok.eos_token_id) == 2
    trained = [i for i, lab in zip(out["input_ids"], out["labels"]) if lab != -100]
    assert tok.decode(trained, skip_special_tokens=True).replace(" ", "") == "你好！再见！"


def test_truncation_counted_and_reported(tok):
    recs = data.load_sft_records(DATA_DIR / "alpaca_zh_sample.json")
    full, s_full = data.tokenize_sft(recs, tok, 4096)
    assert s_full.truncated == 0 and s_full.kept == len(recs)
    longest = max(full["length"])
    cut, s_cut = data.tokenize_sft(recs, tok, longest // 2)
    expect = sum(1 for n in full["length"] if n > longest // 2)
    assert s_cut.truncated == expect > 0
    assert max(cut["length"]) <= longest // 2
    assert s_cut.kept + s_cut.dropped == len(recs)
    assert "truncated" in str(s_cut)
    with pytest.raises(CourseError, match="--max_seq_length"):
        data.tokenize_sft(recs, tok, 3)


def test_pt_blocks(tok):
    texts = data.load_pt_texts(DATA_DIR / "pt_sample.txt")
    ds, stats = data.tokenize_pt(texts, tok, block_size=64)
    total = sum(len(x) for x in tok(texts)["input_ids"])
    assert all(len(b) == 64 for b in ds["input_ids"]) and len(ds) == total // 64
    assert ds["labels"] == ds["input_ids"]
    assert stats.extra["dropped_tail_tokens"] == total % 64
    assert str(stats).startswith(f"{len(texts)} texts -> {len(ds)} blocks of 64 tokens")
    assert data.group_texts([[1, 2, 3], [4, 5]], 2) == [[1, 2], [3, 4]]
    with pytest.raises(CourseError, match="--block_size"):
        data.tokenize_pt(["短"], tok, block_size=4096)


def test_cache_roundtrip(tmp_path, tok):
    recs = data.load_sft_records(DATA_DIR / "alpaca_zh_sample.json")[:10]
    calls = []

    def build():
        calls.append(1)
        return data.tokenize_sft(recs, tok, 256)

    a, sa = data.cached(tmp_path, "k1", build)
    b, sb = data.cached(tmp_path, "k1", build)
    assert len(calls) == 1 and a["input_ids"] == b["input_ids"] and sa == sb


def test_tokenizer_fingerprint_changes_with_the_tokenizer_not_its_size(tmp_path, tok):
    """The tokenized-data cache key: same tokenizer -> same key; same size but other pieces -> a new key."""
    import shutil

    from helpers import tiny
    from helpers.tokenizer import load_tokenizer

    src = tiny.merged_tokenizers()["alpaca_hf"]
    assert data.tokenizer_fingerprint(load_tokenizer(src)) == data.tokenizer_fingerprint(tok)
    copy = shutil.copytree(src, tmp_path / "tok")
    spec = json.loads((copy / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab["ic"], vocab["ro"] = vocab["ro"], vocab["ic"]  # two pieces trade ids: a different tokenizer
    _write(copy / "tokenizer.json", spec)
    other = load_tokenizer(copy)
    assert len(other) == len(tok) and other("ic")["input_ids"] != tok("ic")["input_ids"]
    assert data.tokenizer_fingerprint(other) != data.tokenizer_fingerprint(tok)


def test_flatten_packing_has_no_cross_contamination(tok):
    """Packed logits equal the logits of each example alone: the block-diagonal mask from position_ids works."""
    import torch
    from transformers import AutoModelForCausalLM

    from helpers import tiny

    model = AutoModelForCausalLM.from_pretrained(tiny.hf_model(), dtype=torch.float32)
    model.config.use_cache = False  # as helpers.train.build_model: a KV cache disables the packed mask
    model.train()  # the training forward (LLaMA has no dropout by default)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    recs = data.load_sft_records(DATA_DIR / "alpaca_zh_sample.json")[:3]
    ds, _ = data.tokenize_sft(recs, tok, 256)
    feats = [{"input_ids": ds[i]["input_ids"], "labels": ds[i]["labels"]} for i in range(3)]
    packed = data.make_collator(tok, "flatten")(feats)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
        start = 0
        for f in feats:
            n = len(f["input_ids"])
            alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            torch.testing.assert_close(logits[start:start + n], alone, atol=1e-4, rtol=1e-4)
            assert packed["labels"][0, start] == -100  # no example learns its first token from the previous one
            start += n
    assert data.non_pad_share(packed) == 1.0
    padded = data.make_collator(tok, "pad_to_max", 256)(feats)
    assert padded["input_ids"].shape == (3, 256) and data.non_pad_share(padded) < 0.9
    longest = data.make_collator(tok, "longest")(feats)
    assert longest["input_ids"].shape[1] == max(len(f["input_ids"]) for f in feats)
    with pytest.raises(CourseError, match="--packing"):
        data.make_collator(tok, "zip")


FEATS = [{"input_ids": [1, 11, 12, 13, 14], "labels": [-100, -100, -100, 13, 14]},
         {"input_ids": [1, 21], "labels": [-100, 21]},
         {"input_ids": [1, 31, 32], "labels": [-100, -100, 32]}]


def _hand_padded(width: int, pad: int) -> dict:
    """The batch written out from the specification: every row right-padded to ``width`` with ``pad``, labels
    with -100, attention mask 1 on real tokens."""
    rows = [f["input_ids"] for f in FEATS]
    return {"input_ids": [r + [pad] * (width - len(r)) for r in rows],
            "labels": [f["labels"] + [-100] * (width - len(f["labels"])) for f in FEATS],
            "attention_mask": [[1] * len(r) + [0] * (width - len(r)) for r in rows]}


@pytest.mark.parametrize("which", ["alpaca_hf", "llama_hf"])
def test_padding_collators_match_a_hand_padded_batch(which):
    """longest / pad_to_max pad on the right whatever the tokenizer's (generation) padding side, labels with -100;
    the LLaMA tokenizer has no pad token, so its unk id pads; the tokenizer is left as it was."""
    from helpers import tiny
    from helpers.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny.merged_tokenizers()[which])
    assert tok.padding_side == "left"
    pad = tok.pad_token_id if which == "alpaca_hf" else tok.unk_token_id
    assert (tok.pad_token is None) == (which == "llama_hf")
    cases = [(data.make_collator(tok, "longest"), 5), (data.make_collator(tok, "pad_to_max", 7), 7),
             (data.make_collator(tok, "longest", pad_to_multiple_of=8), 8),  # 5 rounded up to a multiple of 8
             (data.make_collator(tok, "pad_to_max", 7, pad_to_multiple_of=4), 8)]
    for collate, width in cases:
        got = collate([dict(f) for f in FEATS])
        assert {k: got[k].tolist() for k in ("input_ids", "labels", "attention_mask")} == _hand_padded(width, pad)
    assert tok.padding_side == "left" and (tok.pad_token is None) == (which == "llama_hf")
