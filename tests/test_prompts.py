"""Prompt templates: the training templates, every chat family of seed 003, their HF Jinja chat templates."""
import jinja2
import pytest

from helpers import prompts as P
from helpers.core import CourseError

CONV = [{"role": "user", "content": "你好，介绍一下北京"},
        {"role": "assistant", "content": "北京是中国的首都。"},
        {"role": "user", "content": "那上海呢？"}]


@pytest.fixture(scope="module")
def tok():
    from helpers import tiny
    from helpers.tokenizer import load_tokenizer

    return load_tokenizer(tiny.merged_tokenizers()["alpaca_hf"])


def test_build_prompt_templates_unchanged():
    assert P.build_prompt("写诗", "关于春天") == P.ALPACA_TEMPLATE.format(instruction="写诗\n关于春天")
    assert P.build_prompt("写诗", template="alpaca2").startswith("[INST] <<SYS>>\nYou are a helpful assistant.")
    with pytest.raises(CourseError, match=r"'nope'.*choose one of \['alpaca', 'alpaca2'\]"):
        P.build_prompt("x", template="nope")


def test_registry_has_every_seed_family():
    want = {"internlm", "internlm2", "xverse", "vicuna", "billa", "llama-2-chat", "chinese-alpaca-2", "yulan",
            "yi", "wizardcoder", "deepseek-coder", "alpaca"}
    assert want <= set(P.TEMPLATES_BY_FAMILY)


@pytest.mark.parametrize("name,expected", [
    ("xverse", {"pre_prompt": "", "user_role": "Human: ", "bot_role": "\n\nAssistant: ",
                "history_sep": "<FLM_FIX_TOKEN_3>"}),
    ("internlm", {"pre_prompt": "<s><s>", "user_role": "<|User|>:", "bot_role": "<eoh>\n<|Bot|>:",
                  "history_sep": "<eoa>\n<s>"}),
    ("chinese-alpaca-2-fastllm", {"pre_prompt": "<FLM_FIX_TOKEN_1>[INST] <<SYS>>\nYou are a helpful assistant. "
                                  "你是一个乐于助人的助手。\n<</SYS>>\n\n", "user_role": " ", "bot_role": " [/INST]",
                                  "history_sep": " <FLM_FIX_TOKEN_2><FLM_FIX_TOKEN_1>"}),
])
def test_fastllm_config_is_seed_verbatim(name, expected):
    assert P.fastllm_config(name) == expected


def test_single_turn_equals_training_templates():
    q = [{"role": "user", "content": "把这句话翻译成英文"}]
    assert P.render("alpaca", q) == P.build_prompt("把这句话翻译成英文")
    assert P.render("chinese-alpaca-2", q) == "<s>" + P.build_prompt("把这句话翻译成英文", template="alpaca2")
    sys_q = [{"role": "system", "content": "你是诗人。"}] + q
    assert P.render("chinese-alpaca-2", sys_q) == "<s>" + P.build_prompt(
        "把这句话翻译成英文", template="alpaca2", system_prompt="你是诗人。")


def test_multi_turn_follows_fastllm_formula():
    fam = P.get_family("yulan")
    expected = (fam.pre_prompt + fam.user_role + CONV[0]["content"] + fam.bot_role + CONV[1]["content"]
                + fam.history_sep + fam.user_role + CONV[2]["content"] + fam.bot_role)
    assert P.render("yulan", CONV) == expected
    assert P.render("llama-2-chat", CONV) == (
        "<s>[INST] 你好，介绍一下北京 [/INST]北京是中国的首都。 </s><s>[INST] 那上海呢？ [/INST]")
    # without a generation prompt the last user turn has no bot_role
    assert P.render("yi", CONV, add_generation_prompt=False).endswith("<|im_start|>user\n那上海呢？")


def test_roles_must_alternate():
    with pytest.raises(CourseError, match="alternate"):
        P.render("vicuna", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.mark.parametrize("name", P.family_names())
def test_jinja_chat_template_renders_the_same_prompt(name):
    template = P.chat_template(name)
    env = jinja2.Environment()

    def raise_exception(msg):
        raise jinja2.TemplateError(msg)

    for msgs in (CONV[:1], CONV, [{"role": "system", "content": "你是一个助手。"}] + CONV):
        got = env.from_string(template).render(messages=msgs, add_generation_prompt=True,
                                               raise_exception=raise_exception)
        assert got == P.render(name, msgs)
    assert "FLM_FIX_TOKEN" not in P.render(name, CONV)


@pytest.mark.parametrize("name", P.family_names())
def test_hf_apply_chat_template_matches(tok, name):
    tok.chat_template = P.chat_template(name)
    got = tok.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    assert got == P.render(name, CONV)
    with pytest.raises(Exception, match="alternate"):
        tok.apply_chat_template([CONV[0], CONV[0]], tokenize=False)


def test_fix_tokens_resolve_with_tokenizer(tok):
    text = P.render("llama-2-chat", CONV, tokenizer=tok)
    assert text.startswith(tok.convert_ids_to_tokens(1)) and tok.convert_ids_to_tokens(2) in text
    ids = P.encode("llama-2-chat", CONV, tok)
    assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1
    # a token id the tokenizer does not have is a clear error
    with pytest.raises(CourseError, match="32013"):
        P.render("deepseek-coder", CONV, tokenizer=tok)


@pytest.mark.parametrize("query,family", [
    ("hfl/chinese-alpaca-2-1.3b", "chinese-alpaca-2"), ("/models/chinese-alpaca-2-7b-16k", "chinese-alpaca-2"),
    ("Yi-6B-Chat", "yi"), ("internlm/internlm2-chat-7b", "internlm2"), ("alpaca2", "chinese-alpaca-2"),
    ("chinese-alpaca-lora", "alpaca"), ("hfl/chinese-llama-2-1.3b", "llama"), ("XVERSE-13B-Chat", "xverse"),
])
def test_get_family_by_name_alias_or_model(query, family):
    assert P.get_family(query).name == family


def test_unknown_family_names_choices():
    with pytest.raises(CourseError, match="choose one of"):
        P.get_family("gpt-9")


def test_history_to_messages_accepts_pairs_and_messages():
    pairs = P.history_to_messages([("q1", "a1")], "q2", system="s")
    assert [m["role"] for m in pairs] == ["system", "user", "assistant", "user"]
    msgs = P.history_to_messages([{"role": "user", "content": [{"type": "text", "text": "q1"}]},
                                  {"role": "assistant", "content": "a1"}], "q2")
    assert msgs[0]["content"] == "q1" and msgs[-1] == {"role": "user", "content": "q2"}
