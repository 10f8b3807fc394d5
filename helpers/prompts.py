"""Prompt templates of the Chinese-LLaMA-Alpaca family (shared by training, inference, web UI, API, export).

Step 05/06 extend this registry with the LLaMA-like families of seed 003 and their chat templates.
"""
from __future__ import annotations

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
        raise ValueError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    text = join_instruction(instruction, input_text)
    if template == "alpaca2":
        return ALPACA2_TEMPLATE.format(system_prompt=system_prompt or ALPACA2_SYSTEM, instruction=text)
    return ALPACA_TEMPLATE.format(instruction=text)
