import json
import re

import pytest

from helpers import tiny
from helpers.tokenizer import TokenizerError, build_hf_tokenizer, load_tokenizer, save_hf_tokenizer, sp_mismatches


@pytest.fixture(scope="module")
def base_sp():
    return tiny.base_sp_model()


def test_loader_matches_sentencepiece_on_every_data_line(base_sp, data_lines, tmp_path):
    save_hf_tokenizer(base_sp, tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    assert len(data_lines) > 1000
    assert sp_mismatches(tok, base_sp, data_lines) == []


def test_whitespace_edge_cases_match_sentencepiece(base_sp):
    tok = build_hf_tokenizer(base_sp)
    # transformers' own conversion loses the dummy prefix before a leading space (" lead") and after
    # runs of spaces; these are exactly the lines it gets wrong.
    cases = [" lead", "  two", "trail ", "a  b   c", "\tTab", "", " ", "x = 12345", "中文 mixed", "emoji 🙂"]
    assert sp_mismatches(tok, base_sp, cases) == []
    for text in cases[:8]:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_saved_folder_has_config_and_reloads_identically(base_sp, tmp_path):
    save_hf_tokenizer(base_sp, tmp_path / "tok")
    files = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["add_bos_token"] is True and cfg["padding_side"] == "left"
    a, b = build_hf_tokenizer(base_sp), load_tokenizer(tmp_path / "tok")
    text = "The 2 models cost 1999 yuan."
    assert a(text)["input_ids"] == b(text)["input_ids"] and b(text)["input_ids"][0] == 1
    assert b.eos_token_id == 2 and b.unk_token_id == 0


def test_folder_with_only_tokenizer_model_is_converted(base_sp, tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "tokenizer.model").write_bytes(base_sp.read_bytes())
    tok = load_tokenizer(tmp_path / "only")
    assert sp_mismatches(tok, base_sp, [" lead", "hello  world"]) == []


def test_non_sentencepiece_input_gives_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_text('{"model": {"type": "BPE"}}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="Only SentencePiece"):
        load_tokenizer(bad)
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "missing")


def test_tokenizer_errors_are_course_errors_naming_the_folder(base_sp, tmp_path):
    """Empty folder, broken tokenizer.json: a CourseError (CLIs print it and exit 2) that names the folder."""
    from helpers.core import CourseError

    (tmp_path / "empty").mkdir()
    with pytest.raises(CourseError, match=re.escape(f"{tmp_path / 'empty'}: no tokenizer.model")):
        load_tokenizer(tmp_path / "empty")
    save_hf_tokenizer(base_sp, tmp_path / "broken")
    (tmp_path / "broken" / "tokenizer.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(CourseError, match=re.escape(f"{tmp_path / 'broken'}: tokenizer.json / tokenizer_config.json cannot")):
        load_tokenizer(tmp_path / "broken")


def test_special_token_text_is_literal_only_on_request(base_sp):
    tok = build_hf_tokenizer(base_sp)
    text = "tokens such as <s> and </s>"
    assert sp_mismatches(tok, base_sp, [text]) == []  # literal, like sentencepiece
    assert tok(text)["input_ids"].count(tok.eos_token_id) == 1  # default HF behaviour: parsed as special
