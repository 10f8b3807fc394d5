"""Prompt templates of the Chinese-LLaMA-Alpaca family and of LLaMA-like chat models.

Shared by training, inference, the web UI, the API server and export (GGUF / Ollama / fastllm).

Two layers:

* ``ALPACA_TEMPLATE`` / ``ALPACA2_TEMPLATE`` / ``build_prompt``: the single-turn instruction templates the
  training code uses (seed 001/004).
* The chat-family registry (seed 003, fastllm's ``pre_prompt / user_role / bot_role / history_sep``)::

      fam = get_family("chinese-alpaca-2")          # or a model name: "hfl/chinese-alpaca-2-1.3b"
      text = render(fam, [{"role": "user", "content": "你好"}], tokenizer=tok)
      jinja = chat_template(fam, tokenizer=tok)     # HF ``tokenizer.chat_template`` rendering the same text
      cfg = fastllm_config(fam)                     # the four strings for fastllm's config.json

  A prompt is ``pre_prompt + Σ(user_role + q_i + bot_role + a_i + history_sep) + user_role + q + bot_role``
  (fastllm's ``MakeHistory`` / ``MakeInput``). ``<FLM_FIX_TOKEN_n>`` stands for the token with id ``n``;
  :func:`resolve_fix_tokens` replaces it with that token's text using a tokenizer, :func:`encode` inserts
  the id itself. A ``{system}`` placeholder in ``pre_prompt`` is filled with a ``system`` message or the
  family's default system prompt.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .core import CourseError

# Chinese-Alpaca (1st generation): the training template (seed 001/004); inference uses the same text.
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response: "
)

# Chinese-Alpaca-2 (Llama-2-chat style).
ALPACA2_SYSTEM = "You are a helpful assistant. 你是一个乐于助人的助手。"
ALPACA2_TEMPLATE = "[INST] <<SYS>>\n{system_prompt}\n<</SYS>>\n\n{instruction} [/INST]"

TEMPLATES = {"alpaca": ALPACA_TEMPLATE, "alpaca2": ALPACA2_TEMPLATE}


def join_instruction(instruction: str, input_text: str | None = None) -> str:
    """Seed 001: a non-empty ``input`` is appended to the instruction after a newline."""
    instruction = instruction.strip()
    if input_text and input_text.strip():
        return f"{instruction}\n{input_text.strip()}"
    return instruction


def build_prompt(instruction: str, input_text: str | None = None, template: str = "alpaca",
                 system_prompt: str | None = None) -> str:
    """The single-turn prompt for ``instruction`` (+ optional ``input``) with a named template."""
    if template not in TEMPLATES:
        raise CourseError(f"prompt template {template!r} is unknown: choose one of {sorted(TEMPLATES)} "
                          "(chat families such as chinese-alpaca-2 go through render())")
    text = join_instruction(instruction, input_text)
    if template == "alpaca2":
        return ALPACA2_TEMPLATE.format(system_prompt=system_prompt or ALPACA2_SYSTEM, instruction=text)
    return ALPACA_TEMPLATE.format(instruction=text)


# --------------------------------------------------------------------------------------------------
# Chat families (seed 003)
# --------------------------------------------------------------------------------------------------

FIX_TOKEN_RE = re.compile(r"<FLM_FIX_TOKEN_(\d+)>")

LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, "
    "or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
_ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                    "Write a response that appropriately completes the request.\n\n")
# LLaMA / Llama-2 ids: 1 = <s>, 2 = </s>.
_LLAMA_IDS = {1: "<s>", 2: "</s>"}


@dataclass(frozen=True)
class ChatFamily:
    """One chat format: fastllm's four strings plus where they come from.

    ``fix_tokens`` maps the ``<FLM_FIX_TOKEN_n>`` ids used here to the token text in the family's real
    tokenizer (used when no tokenizer is given). ``stop`` are strings that end an answer.
    """

    name: str
    pre_prompt: str
    user_role: str
    bot_role: str
    history_sep: str
    system: str = ""
    models: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    fix_tokens: dict = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    source: str = "seed 003"
    notes: str = ""

    @property
    def has_system(self) -> bool:
        return "{system}" in self.pre_prompt


def _fam(*args, **kw) -> ChatFamily:
    return ChatFamily(*args, **kw)


FAMILIES: list[ChatFamily] = [
    _fam("alpaca", _ALPACA_PREAMBLE, "### Instruction:\n", "\n\n### Response: ", "\n\n",
         models=("hfl/chinese-alpaca-7b", "hfl/chinese-alpaca-plus-7b", "chinese-alpaca-lora"),
         aliases=("chinese-alpaca", "chinese-alpaca-1"), stop=("### Instruction:",),
         source="course (seed 001 training template)",
         notes="single turn == ALPACA_TEMPLATE; the 1st-generation model was trained single-turn"),
    _fam("chinese-alpaca-2", "<FLM_FIX_TOKEN_1>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n", "", " [/INST]",
         " <FLM_FIX_TOKEN_2><FLM_FIX_TOKEN_1>[INST] ", system=ALPACA2_SYSTEM,
         models=("hfl/chinese-alpaca-2-1.3b", "hfl/chinese-alpaca-2-7b", "hfl/chinese-alpaca-2-13b",
                 "ziqingyang/chinese-alpaca-2-7b", "chinese-alpaca-2-lora"),
         aliases=("alpaca2", "chinese-alpaca2"), fix_tokens=_LLAMA_IDS, stop=("[INST]",),
         source="course: seed 003's Chinese-Alpaca-2 strings moved so the first turn == '<s>' + ALPACA2_TEMPLATE "
                "and later turns start with '[INST] '",
         notes="use for multi-turn chat; chinese-alpaca-2-fastllm is the seed's exact single-turn form"),
    _fam("chinese-alpaca-2-fastllm", "<FLM_FIX_TOKEN_1>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n", " ", " [/INST]",
         " <FLM_FIX_TOKEN_2><FLM_FIX_TOKEN_1>", system=ALPACA2_SYSTEM, fix_tokens=_LLAMA_IDS, stop=("[INST]",),
         notes="seed 003 verbatim; one space more before the question than ALPACA2_TEMPLATE and later turns "
               "lack '[INST]' (the seed calls the system-prompt form single-turn only)"),
    _fam("llama-2-chat", "<FLM_FIX_TOKEN_1>", "[INST] ", " [/INST]", " <FLM_FIX_TOKEN_2><FLM_FIX_TOKEN_1>",
         models=("meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-13b-chat-hf",
                 "codellama/CodeLlama-7b-Instruct-hf", "codellama/CodeLlama-13b-Instruct-hf"),
         aliases=("llama2-chat", "codellama-instruct"), fix_tokens=_LLAMA_IDS, stop=("[INST]",),
         notes="seed 003: the official example without a system prompt; multi-turn"),
    _fam("llama-2-chat-sys", "<FLM_FIX_TOKEN_1>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n", " ", " [/INST]",
         " <FLM_FIX_TOKEN_2><FLM_FIX_TOKEN_1>", system=LLAMA2_SYSTEM, aliases=("llama2-chat-sys",),
         fix_tokens=_LLAMA_IDS, stop=("[INST]",), notes="seed 003: with the Llama-2 system prompt, single turn"),
    _fam("internlm", "<s><s>", "<|User|>:", "<eoh>\n<|Bot|>:", "<eoa>\n<s>",
         models=("internlm/internlm-chat-7b", "internlm/internlm-chat-7b-v1_1", "internlm/internlm-chat-20b"),
         aliases=("internlm-chat",), stop=("<eoa>",)),
    _fam("internlm2", "<s><|im_start|>system\n{system}\n<|im_end|>", "<|im_start|>user\n",
         "<|im_end|><|im_start|>assistant\n", "<|im_end|>\n",
         system="You are an AI assistant whose name is InternLM (书生·浦语).",
         models=("internlm/internlm2-chat-1_8b", "internlm/internlm2-chat-7b", "internlm/internlm2-chat-20b"),
         aliases=("internlm2-chat",), stop=("<|im_end|>",),
         source="fastllm tools/llamalike2flm.py (seed 003 names the models and the script)"),
    _fam("xverse", "", "Human: ", "\n\nAssistant: ", "<FLM_FIX_TOKEN_3>",
         models=("xverse/XVERSE-7B-Chat", "xverse/XVERSE-13B-Chat", "xverse/XVERSE-13B-256K"),
         aliases=("xverse-chat",), fix_tokens={3: "<|endoftext|>"}, stop=("Human:",),
         notes="tokenizer_add_dummy_prefix=False; XVERSE-13B-256K also needs rope_theta 500000, dynamic x2"),
    _fam("vicuna",
         "A chat between a curious user and an artificial intelligence assistant. "
         "The assistant gives helpful, detailed, and polite answers to the user's questions. ",
         "USER: ", " ASSISTANT:", "<s>", models=("lmsys/vicuna-7b-v1.3", "lmsys/vicuna-13b-v1.3"),
         aliases=("vicuna-v1.1", "vicuna-v1.3"), stop=("USER:",)),
    _fam("billa", "\n", "Human: ", "\nAssistant: ", "\n", models=("Neutralzz/BiLLa-7B-SFT",),
         stop=("Human:",)),
    _fam("yulan",
         "The following is a conversation between a human and an AI assistant namely YuLan, developed by GSAI, "
         "Renmin University of China. The AI assistant gives helpful, detailed, and polite answers to the "
         "user's questions.\n",
         "[|Human|]:", "\n[|AI|]:", "\n", models=("yulan-team/YuLan-Chat-2-13b-fp16",),
         aliases=("yulan-chat",), stop=("[|Human|]",)),
    _fam("yi", "", "<|im_start|>user\n", "<|im_end|><|im_start|>assistant\n", "<|im_end|>\n",
         models=("01-ai/Yi-6B-Chat", "01-ai/Yi-34B-Chat", "SUSTech/SUS-Chat-34B"), aliases=("yi-chat",),
         stop=("<|im_end|>",)),
    _fam("wizardcoder", _ALPACA_PREAMBLE, "### Instruction:\n", "\n\n### Response:", "\n",
         models=("WizardLM/WizardCoder-Python-7B-V1.0", "WizardLM/WizardCoder-Python-13B-V1.0"),
         stop=("### Instruction:",)),
    _fam("deepseek-coder",
         "<FLM_FIX_TOKEN_32013>\tYou are an AI programming assistant, utilizing the Deepseek Coder model, "
         "developed by Deepseek Company, and you only answer questions related to computer science. For "
         "politically sensitive questions, security and privacy issues, and other non-computer science "
         "questions, you will refuse to answer.\n",
         "### Instruction:\n", "\n### Response:\n", "\n<|EOT|>\n",
         models=("deepseek-ai/deepseek-coder-1.3b-instruct", "deepseek-ai/deepseek-coder-6.7b-instruct",
                 "deepseek-ai/deepseek-coder-7b-instruct-v1.5"),
         aliases=("deepseek-coder-instruct",), fix_tokens={32013: "<｜begin▁of▁sentence｜>"},
         stop=("<|EOT|>",), notes="the tab after the BOS token is in seed 003 as written"),
    _fam("llama", "<FLM_FIX_TOKEN_1>", "", "", "", models=("hfl/chinese-llama-2-1.3b", "hfl/chinese-llama-2-7b"),
         aliases=("base", "chinese-llama", "chinese-llama-2"), fix_tokens=_LLAMA_IDS,
         notes="seed 003 'Base Model': only the BOS token; plain continuation"),
]

TEMPLATES_BY_FAMILY: dict[str, ChatFamily] = {f.name: f for f in FAMILIES}
_ALIASES = {a: f.name for f in FAMILIES for a in (f.name, *f.aliases)}


def family_names() -> list[str]:
    """Names of every registered family, registry order."""
    return [f.name for f in FAMILIES]


def get_family(name: str | ChatFamily) -> ChatFamily:
    """The family for a family name, an alias or a model name/path (``hfl/chinese-alpaca-2-7b``).

    Raises ``CourseError`` naming the known families when nothing matches.
    """
    if isinstance(name, ChatFamily):
        return name
    key = str(name).strip().lower()
    if key in _ALIASES:
        return TEMPLATES_BY_FAMILY[_ALIASES[key]]
    base = key.rstrip("/").rsplit("/", 1)[-1]
    for fam in FAMILIES:  # exact model id, or its folder name
        if any(key == m.lower() or base == m.lower().rsplit("/", 1)[-1] for m in fam.models):
            return fam
    # longest alias contained in the folder name: "chinese-alpaca-2-7b-16k" -> chinese-alpaca-2
    hits = sorted(((a, n) for a, n in _ALIASES.items() if len(a) >= 5 and a in base), key=lambda x: -len(x[0]))
    if hits:
        return TEMPLATES_BY_FAMILY[hits[0][1]]
    raise CourseError(f"template/family {name!r} is unknown: choose one of {family_names()} "
                      "(or add a ChatFamily to helpers.prompts.FAMILIES)")


def resolve_fix_tokens(text: str, tokenizer=None, fix_tokens: dict | None = None) -> str:
    """``<FLM_FIX_TOKEN_n>`` -> the text of token ``n`` (from ``tokenizer``, else from ``fix_tokens``)."""
    def sub(m: re.Match) -> str:
        n = int(m.group(1))
        if tokenizer is not None:
            tok = tokenizer.convert_ids_to_tokens(n)
            if tok is None:
                raise CourseError(f"<FLM_FIX_TOKEN_{n}>: token id {n} is outside this tokenizer "
                                  f"({len(tokenizer)} tokens); use the family's own tokenizer")
            return tok
        if fix_tokens and n in fix_tokens:
            return fix_tokens[n]
        return m.group(0)
    return FIX_TOKEN_RE.sub(sub, text)


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    if messages and messages[0].get("role") == "system":
        return messages[0].get("content", ""), list(messages[1:])
    return None, list(messages)


def render(family: str | ChatFamily, messages: list[dict], tokenizer=None, add_generation_prompt: bool = True,
           resolve: bool = True) -> str:
    """The prompt text for an OpenAI-style ``messages`` list (optional leading ``system`` message).

    Turns must alternate user/assistant. With ``add_generation_prompt`` and a final user turn, ends with
    ``bot_role`` (the model continues with its answer). ``resolve`` turns ``<FLM_FIX_TOKEN_n>`` into token
    text (the tokenizer's, else the family's ``fix_tokens``); returns the string.
    """
    fam = get_family(family)
    system, turns = _split_system(messages)
    out = fam.pre_prompt.replace("{system}", fam.system if system is None else system)
    for i, m in enumerate(turns):
        role, content = m.get("role"), m.get("content", "")
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise CourseError(f"messages[{i}].role is {role!r}, expected {want!r}: turns must alternate "
                              "user/assistant after an optional first system message")
        out += fam.user_role + content if role == "user" else fam.bot_role + content + fam.history_sep
    if add_generation_prompt and turns and turns[-1]["role"] == "user":
        out += fam.bot_role
    return resolve_fix_tokens(out, tokenizer, fam.fix_tokens) if resolve else out


def history_to_messages(history: list, query: str | None = None, system: str | None = None) -> list[dict]:
    """``[(q1, a1), ...]`` or ``[{"role":..., "content":...}, ...]`` (+ a new ``query``) -> messages."""
    msgs: list[dict] = [{"role": "system", "content": system}] if system else []
    for item in history:
        if isinstance(item, dict):
            if item.get("role") in ("user", "assistant"):
                msgs.append({"role": item["role"], "content": _text(item.get("content", ""))})
        else:
            q, a = item
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a or ""}]
    if query is not None:
        msgs.append({"role": "user", "content": query})
    return msgs


def _text(content) -> str:
    """Gradio 6 message content may be a list of parts: keep the text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def encode(family: str | ChatFamily, messages: list[dict], tokenizer, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the prompt the way fastllm builds them: ``<FLM_FIX_TOKEN_n>`` becomes id ``n`` and
    the text pieces between are encoded without extra BOS/EOS. Returns the id list."""
    text = render(family, messages, add_generation_prompt=add_generation_prompt, resolve=False)
    ids: list[int] = []
    pos = 0
    for m in FIX_TOKEN_RE.finditer(text):
        if m.start() > pos:
            ids += tokenizer(text[pos:m.start()], add_special_tokens=False)["input_ids"]
        ids.append(int(m.group(1)))
        pos = m.end()
    if pos < len(text):
        ids += tokenizer(text[pos:], add_special_tokens=False)["input_ids"]
    return ids


def _lit(s: str) -> str:
    """A Jinja string literal (JSON escapes are valid Jinja escapes)."""
    return json.dumps(s, ensure_ascii=True)


def chat_template(family: str | ChatFamily, tokenizer=None) -> str:
    """An HF Jinja ``chat_template`` that renders exactly :func:`render` (``<FLM_FIX_TOKEN_n>`` resolved with
    ``tokenizer`` or the family's ``fix_tokens``). Returns the template source."""
    fam = get_family(family)
    res = lambda s: resolve_fix_tokens(s, tokenizer, fam.fix_tokens)  # noqa: E731
    before, _, after = fam.pre_prompt.partition("{system}")
    if fam.has_system:
        head = (f"{{%- if messages and messages[0]['role'] == 'system' -%}}{{%- set system = messages[0]['content'] -%}}"
                f"{{%- set loop_messages = messages[1:] -%}}{{%- else -%}}{{%- set system = {_lit(fam.system)} -%}}"
                f"{{%- set loop_messages = messages -%}}{{%- endif -%}}"
                f"{{{{- {_lit(res(before))} + system + {_lit(res(after))} -}}}}")
    else:
        head = ("{%- if messages and messages[0]['role'] == 'system' -%}{%- set loop_messages = messages[1:] -%}"
                "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
                f"{{{{- {_lit(res(fam.pre_prompt))} -}}}}")
    body = ("{%- for message in loop_messages -%}"
            "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
            "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
            "{%- endif -%}"
            f"{{%- if message['role'] == 'user' -%}}{{{{- {_lit(res(fam.user_role))} + message['content'] -}}}}"
            f"{{%- else -%}}{{{{- {_lit(res(fam.bot_role))} + message['content'] + {_lit(res(fam.history_sep))} -}}}}"
            "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt and loop_messages and loop_messages[-1]['role'] == 'user' -%}"
            f"{{{{- {_lit(res(fam.bot_role))} -}}}}{{%- endif -%}}")
    return head + body


def fastllm_config(family: str | ChatFamily, system: str | None = None) -> dict[str, str]:
    """The four fastllm keys (``pre_prompt``, ``user_role``, ``bot_role``, ``history_sep``) as seed 003 writes
    them (``<FLM_FIX_TOKEN_n>`` kept, ``{system}`` filled). Returns a dict for config.json."""
    fam = get_family(family)
    return {"pre_prompt": fam.pre_prompt.replace("{system}", fam.system if system is None else system),
            "user_role": fam.user_role, "bot_role": fam.bot_role, "history_sep": fam.history_sep}


def stop_strings(family: str | ChatFamily) -> list[str]:
    """Strings after which an answer of this family is over (besides the EOS token)."""
    fam = get_family(family)
    return list(fam.stop)
