"""Chinese vocabulary extension: jieba-weighted training, the merge, HF == sentencepiece on every data/ line for the
MERGED tokenizers, efficiency on held-out text, embedding resize, CLI and errors."""
import sys

import pytest
import sentencepiece as spm
import torch

from helpers import tiny, vocab
from helpers.core import DATA_DIR, CourseError
from helpers.tokenizer import build_hf_tokenizer, load_sp_proto, load_tokenizer, sp_mismatches

POEM = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"
EDGE = [" lead", "  两个空格", "trail ", "中文 mixed English", "\t制表", "", " ", "x = 12345", "emoji 🙂 表情",
        "「引号」《书名》", "ＡＢＣ全角", "a  b   c"]


@pytest.fixture(scope="module")
def toks():
    return tiny.merged_tokenizers()


@pytest.fixture(scope="module")
def heldout():
    return [x for x in (DATA_DIR / "zh_heldout.txt").read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.mark.parametrize("kind", ["llama", "alpaca"])
def test_merged_hf_tokenizer_encodes_like_sentencepiece_on_every_data_line(toks, data_lines, kind):
    tok = load_tokenizer(toks[f"{kind}_hf"])
    assert len(data_lines) > 1000 and sum(vocab.chinese_chars(x) for x in data_lines) > 10000
    assert sp_mismatches(tok, toks[f"{kind}_sp"], data_lines + EDGE) == []
    for text in ["你好，世界！", POEM, "LLaMA 模型 2023 年"]:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_original_zero_scores_are_the_cause_of_the_mismatch(tmp_path, data_lines):
    """merge_tokenizers.py's constant score 0 makes sentencepiece break ties by position; ranked BPE cannot."""
    zero = tmp_path / "zero.model"
    vocab.merge_sp_models(tiny.base_sp_model(), tiny.chinese_sp_model(), zero, zero_scores=True)
    assert len(sp_mismatches(build_hf_tokenizer(zero), zero, data_lines)) > 0
    fixed = tmp_path / "fixed.model"
    vocab.merge_sp_models(tiny.base_sp_model(), tiny.chinese_sp_model(), fixed)
    assert sp_mismatches(build_hf_tokenizer(fixed), fixed, data_lines) == []
    a, b = load_sp_proto(zero), load_sp_proto(fixed)
    assert [p.piece for p in a.pieces] == [p.piece for p in b.pieces]  # same vocabulary, same ids
    new = [p.score for p in b.pieces[1000:]]
    assert new == sorted(new, reverse=True) and len(set(new)) == len(new) and min(new) > 0


def test_base_ids_kept_and_pad_appended(toks):
    base = load_sp_proto(tiny.base_sp_model())
    llama, alpaca = load_sp_proto(toks["llama_sp"]), load_sp_proto(toks["alpaca_sp"])
    assert [(p.piece, p.score, p.type) for p in llama.pieces[: len(base.pieces)]] == \
        [(p.piece, p.score, p.type) for p in base.pieces]
    assert len(alpaca.pieces) == len(llama.pieces) + 1 and alpaca.pieces[-1].piece == "[PAD]"
    zh = spm.SentencePieceProcessor(model_file=str(tiny.chinese_sp_model()))
    zh_normal = {zh.id_to_piece(i) for i in range(zh.get_piece_size()) if not (zh.is_control(i) or zh.is_unknown(i))}
    assert zh_normal <= {p.piece for p in llama.pieces}  # every Chinese piece is in the merged vocabulary
    assert len({p.piece for p in llama.pieces}) == len(llama.pieces)  # no duplicates
    al = load_tokenizer(toks["alpaca_hf"])
    assert al.pad_token == "[PAD]" and al.pad_token_id == len(llama.pieces) == len(al) - 1
    assert len(load_tokenizer(toks["llama_hf"])) == len(llama.pieces)


def test_chinese_model_learns_from_jieba_word_counts(tmp_path):
    corpus = (DATA_DIR / "zh_corpus.txt").read_text(encoding="utf-8")
    zh = spm.SentencePieceProcessor(model_file=str(tiny.chinese_sp_model()))
    pieces = {zh.id_to_piece(i) for i in range(zh.get_piece_size())}
    top = [w for w, _ in vocab.jieba_words(top=1000) if len(w) > 1 and w not in corpus]
    learned = [w for w in top if w in pieces]
    assert len(top) >= 10 and len(learned) >= 0.8 * len(top), (learned, top)  # words the corpus never shows
    assert not any(p.startswith("▁") and vocab.CJK.match(p[1:2] or "a") for p in pieces)  # no dummy prefix
    info = vocab.write_weighted_tsv(tmp_path / "in.tsv", [DATA_DIR / "zh_corpus.txt"], [("中国", 100), ("你好", 50)])
    rows = (tmp_path / "in.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[:2] == ["中国\t100", "你好\t50"] and all(r.count("\t") == 1 for r in rows)
    assert info["corpus_lines"] == len(rows) - 2 and rows[2].endswith(f"\t{info['corpus_weight']}")


def test_tokens_per_chinese_char_goal_on_heldout(toks, heldout):
    corpus = set((DATA_DIR / "zh_corpus.txt").read_text(encoding="utf-8").splitlines())
    assert heldout and not corpus & set(heldout)  # held out: never trained on
    df = vocab.efficiency_table({"base": tiny.base_sp_model(), "chinese_llama": toks["llama_sp"]}, heldout)
    base, ext = df.tokens_per_char
    assert base > 2.0  # English-only base with byte fallback: ~3 tokens per Chinese character
    assert ext / base <= 0.6 and df.vs_base.iloc[1] == pytest.approx(ext / base, abs=1e-3)
    b = spm.SentencePieceProcessor(model_file=str(tiny.base_sp_model()))
    m = spm.SentencePieceProcessor(model_file=str(toks["llama_sp"]))
    assert len(m.encode(POEM)) < len(b.encode(POEM)) / 2


def test_resize_embeddings_new_rows_are_the_mean(toks):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny.hf_model(), dtype=torch.float32).eval()
    old_in = model.get_input_embeddings().weight.detach().clone()
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        before = model(ids).logits
    n = len(load_tokenizer(toks["llama_hf"]))
    vocab.resize_embeddings(model, n)
    w_in, w_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert w_in.shape[0] == w_out.shape[0] == model.config.vocab_size == n
    torch.testing.assert_close(w_in[:1000], old_in)
    torch.testing.assert_close(w_in[1000:], old_in.mean(0, keepdim=True).expand(n - 1000, -1))
    torch.testing.assert_close(w_out[-1], w_out[:1000].mean(0))
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after[..., :1000], before)


def test_cli_merges_and_refuses_existing_output(tmp_path, capsys, toks):
    base_dir = tmp_path / "llama"
    base_dir.mkdir()
    (base_dir / "tokenizer.model").write_bytes(tiny.base_sp_model().read_bytes())
    args = ["--llama_tokenizer_dir", str(base_dir), "--chinese_sp_model_file", str(tiny.chinese_sp_model()),
            "--output_dir", str(tmp_path / "out")]
    assert vocab.main(args) == 0
    out = tmp_path / "out"
    assert (out / "merged_tokenizer_sp" / "chinese_llama.model").read_bytes() == toks["llama_sp"].read_bytes()
    assert (out / "merged_tokenizer_hf" / "tokenizer.json").is_file() and (out / "alpaca_tokenizer_hf").is_dir()
    assert vocab.main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert vocab.main(args + ["--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_cli_trains_the_chinese_model_when_none_given(tmp_path, heldout):
    base_dir = tmp_path / "llama"
    base_dir.mkdir()
    (base_dir / "tokenizer.model").write_bytes(tiny.base_sp_model().read_bytes())
    assert vocab.main(["--llama_tokenizer_dir", str(base_dir), "--vocab_size", "2000",
                       "--output_dir", str(tmp_path / "out")]) == 0
    assert spm.SentencePieceProcessor(model_file=str(tmp_path / "out" / "chinese_sp.model")).get_piece_size() == 2000
    model = tmp_path / "out" / "merged_tokenizer_sp" / "chinese_llama.model"
    assert sp_mismatches(load_tokenizer(tmp_path / "out" / "merged_tokenizer_hf"), model, heldout + EDGE) == []


def test_non_sentencepiece_bases_are_refused(tmp_path):
    only_json = tmp_path / "json_only"
    only_json.mkdir()
    (only_json / "tokenizer.json").write_text('{"model": {"type": "BPE"}}', encoding="utf-8")
    with pytest.raises(CourseError, match="Only SentencePiece models can be merged"):
        vocab.extend_vocab(only_json, tiny.chinese_sp_model(), tmp_path / "o1")
    tiktoken = tmp_path / "llama3"
    tiktoken.mkdir()
    (tiktoken / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n", encoding="utf-8")
    with pytest.raises(CourseError, match="tiktoken .*Only SentencePiece models can be merged"):
        vocab.extend_vocab(tiktoken, tiny.chinese_sp_model(), tmp_path / "o2")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "tokenizer.model").write_bytes(b"\x00\x01not a model")
    with pytest.raises(CourseError, match="Only SentencePiece models can be merged"):
        vocab.extend_vocab(garbage, tiny.chinese_sp_model(), tmp_path / "o3")
    with pytest.raises(CourseError, match="chinese_sp_model_file not found"):
        vocab.extend_vocab(tiny.base_sp_model(), tmp_path / "missing.model", tmp_path / "o4")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_protobuf_missing_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.delattr(spm, "sentencepiece_model_pb2", raising=False)
    monkeypatch.setitem(sys.modules, "sentencepiece.sentencepiece_model_pb2", None)  # import now fails
    with pytest.raises(CourseError, match="pip install protobuf"):
        vocab.merge_sp_models(tiny.base_sp_model(), tiny.chinese_sp_model(), tmp_path / "m.model")


def test_train_sp_model_returns_the_written_file_for_a_dotted_prefix(tmp_path):
    text = tmp_path / "en.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 50, encoding="utf-8")
    model = vocab.train_sp_model(text, tmp_path / "zh-v1.5", 300)  # 256 byte pieces + a few
    assert model == tmp_path / "zh-v1.5.model" and model.is_file()


def test_efficiency_accepts_a_generator_and_names_bad_input():
    lines = [x for x in (DATA_DIR / "zh_heldout.txt").read_text(encoding="utf-8").splitlines() if x.strip()][:20]
    want = vocab.tokens_per_chinese_char(tiny.base_sp_model(), lines)
    assert vocab.tokens_per_chinese_char(tiny.base_sp_model(), (x for x in lines)) == want and want["chars"] > 0
    models = {"base": tiny.base_sp_model(), "zh": tiny.chinese_sp_model()}
    df = vocab.efficiency_table(models, (x for x in lines))
    assert list(df.chinese_chars) == [want["chars"]] * 2 and df.vs_base.iloc[0] == 1.0
    with pytest.raises(CourseError, match="base='llama' is not one of"):
        vocab.efficiency_table(models, lines, base="llama")
    with pytest.raises(CourseError, match="no Chinese characters"):
        vocab.tokens_per_chinese_char(tiny.base_sp_model(), ["only English"])


# --------------------------------------------------------------------------- character coverage (step 03, issue 18)
def _hand_sp_model(path, chars, byte_fallback=True):
    """A hand-written LLaMA-like BPE model: <unk> <s> </s>, 256 byte pieces (if byte_fallback), '▁' and ``chars``."""
    from sentencepiece import sentencepiece_model_pb2 as pb2

    proto = pb2.ModelProto()
    proto.pieces.add(piece="<unk>", score=0.0, type=pb2.ModelProto.SentencePiece.UNKNOWN)
    proto.pieces.add(piece="<s>", score=0.0, type=pb2.ModelProto.SentencePiece.CONTROL)
    proto.pieces.add(piece="</s>", score=0.0, type=pb2.ModelProto.SentencePiece.CONTROL)
    if byte_fallback:
        for b in range(256):
            proto.pieces.add(piece=f"<0x{b:02X}>", score=0.0, type=pb2.ModelProto.SentencePiece.BYTE)
    for k, piece in enumerate(["▁", *chars]):
        proto.pieces.add(piece=piece, score=-float(k))
    spec = proto.trainer_spec
    spec.model_type, spec.byte_fallback = pb2.TrainerSpec.BPE, byte_fallback
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    proto.normalizer_spec.name, proto.normalizer_spec.add_dummy_prefix = "identity", True
    proto.normalizer_spec.escape_whitespaces = True
    path.write_bytes(proto.SerializeToString())
    return path


def test_char_coverage_counts_by_hand(tmp_path):
    """Pieces: 中 and 文 only. Text: 中中文 / 国a文 / 。 -> CJK occurrences 中 中 文 国 文 (5, distinct 3: 中 文 国);
    国 is missing -> 1 fallback occurrence = 3 UTF-8 bytes = 3 tokens. Tokens (no BOS): ▁中中文 = 4 (▁ 中 中 文);
    ▁国a文 = ▁ + 3 bytes + 'a' (1 byte) + 文 = 6; ▁。 = ▁ + 3 bytes = 4 -> 14 tokens / 5 characters = 2.8."""
    model = _hand_sp_model(tmp_path / "hand.model", ["中", "文"])
    lines = ["中中文", "国a文", "。"]
    c = vocab.char_coverage(model, lines)
    assert c == {"chars": 5, "distinct": 3, "in_vocab": 4, "distinct_in_vocab": 2, "fallback": 1,
                 "fallback_tokens": 3, "in_vocab_share": 0.8, "tokens_per_char": 14 / 5}
    sp = spm.SentencePieceProcessor(model_file=str(model))  # the hand count of the bytes, checked by sentencepiece
    assert sp.encode("国", out_type=str) == ["▁", "<0xE5>", "<0x9B>", "<0xBD>"]
    no_bytes = vocab.char_coverage(_hand_sp_model(tmp_path / "nb.model", ["中", "文"], byte_fallback=False), lines)
    assert no_bytes["fallback_tokens"] == 1  # <unk>: one token, and the character is lost


def test_coverage_table_rows_and_errors(tmp_path):
    a = _hand_sp_model(tmp_path / "a.model", ["中"])
    b = _hand_sp_model(tmp_path / "b.model", ["中", "文", "国"])
    df = vocab.coverage_table({"small": a, "large": b}, ["中文国"]).set_index("tokenizer")
    assert df.loc["small", "vocab"] == 3 + 256 + 2 and df.loc["large", "vocab"] == 3 + 256 + 4
    assert df.loc["small", "in_vocab_share"] == round(1 / 3, 3) and df.loc["small", "tokens_per_fallback_char"] == 3
    assert df.loc["small", "tokens_per_char"] == round((1 + 1 + 6) / 3, 3)   # ▁ 中 + 2 x 3 bytes
    assert df.loc["large", "fallback_chars"] == 0 and df.loc["large", "tokens_per_char"] == round(4 / 3, 3)
    with pytest.raises(vocab.VocabError, match="no Chinese characters"):
        vocab.char_coverage(a, ["only English"])
