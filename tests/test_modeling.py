import argparse

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import tiny
from helpers.core import CourseError
from helpers.modeling import add_model_arguments, apply_model_arguments, load_model


def test_larger_tokenizer_grows_embeddings_before_a_lora():
    model, tok = load_model(tiny.hf_model(), lora_model=tiny.lora_adapters()["llama"])
    assert model.get_input_embeddings().weight.shape[0] == len(tok) > 1000
    assert tok.padding_side == "left" and tok.pad_token is not None


def test_tokenizer_of_another_model_is_refused(tmp_path):
    merged = AutoModelForCausalLM.from_pretrained(tiny.hf_model())
    merged.resize_token_embeddings(3000, mean_resizing=False)
    merged.save_pretrained(tmp_path / "m")
    with pytest.raises(CourseError, match="--tokenizer_path"):
        load_model(tmp_path / "m", tokenizer_path=tiny.hf_model())


def test_vocab_padded_to_a_multiple_of_64_is_accepted(tmp_path):
    padded = AutoModelForCausalLM.from_pretrained(tiny.hf_model())
    padded.resize_token_embeddings(1024, mean_resizing=False)  # 1000 tokens, rows padded to 1024
    padded.save_pretrained(tmp_path / "p")
    model, tok = load_model(tmp_path / "p", tokenizer_path=tiny.hf_model())
    assert model.get_input_embeddings().weight.shape[0] == 1024 and len(tok) == 1000


def test_shared_flags(monkeypatch):
    p = argparse.ArgumentParser()
    add_model_arguments(p)
    args = p.parse_args(["--base_model", "m", "--only_cpu", "--seed", "3"])
    assert apply_model_arguments(args) == {"device": "cpu", "load_in_8bit": False}
    torch.manual_seed(3)
    b = torch.rand(2)
    apply_model_arguments(args)
    assert torch.equal(b, torch.rand(2))
    bad = p.parse_args(["--base_model", "m", "--only_cpu", "--load_in_8bit"])
    with pytest.raises(CourseError, match="--load_in_8bit"):
        apply_model_arguments(bad)
