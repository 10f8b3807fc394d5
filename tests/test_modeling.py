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
    assert apply_model_arguments(args) == {"device": "cpu", "load_in_8bit": False, "load_in_4bit": False}
    torch.manual_seed(3)
    b = torch.rand(2)
    apply_model_arguments(args)
    assert torch.equal(b, torch.rand(2))
    bad = p.parse_args(["--base_model", "m", "--only_cpu", "--load_in_8bit"])
    with pytest.raises(CourseError, match="--load_in_8bit"):
        apply_model_arguments(bad)
    assert apply_model_arguments(p.parse_args(["--base_model", "m", "--load_in_4bit"]))["load_in_4bit"] is True
    bad = p.parse_args(["--base_model", "m", "--only_cpu", "--load_in_4bit"])
    with pytest.raises(CourseError, match="--load_in_4bit needs a CUDA GPU"):
        apply_model_arguments(bad)
    both = p.parse_args(["--base_model", "m", "--load_in_8bit", "--load_in_4bit"])
    with pytest.raises(CourseError, match="--load_in_8bit and --load_in_4bit"):
        apply_model_arguments(both)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("bits,precision,bytes_per_param", [(None, "float16", 2), (4, "int4", 0.5)])
def test_load_model_checks_the_gpu_memory_first(monkeypatch, bits, precision, bytes_per_param):
    """On a (mocked) T4 the weights are checked against the free memory before anything is loaded."""
    from test_device import fake_gpu

    from helpers import device, modeling

    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    monkeypatch.setattr(device, "_has_bitsandbytes", lambda: True)
    seen = {}

    def spy(need, choice, what, precision=None):
        seen.update(need=need, device=choice.device, dtype=choice.dtype_name, what=what, precision=precision)
        raise _Stop  # never load onto the fake GPU

    monkeypatch.setattr(modeling, "check_fits", spy)
    with pytest.raises(_Stop):
        load_model(tiny.hf_model(), load_in_4bit=bits == 4)
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny.hf_model()).parameters())
    assert (seen["device"], seen["dtype"], seen["precision"]) == ("cuda", "float16", precision)
    assert str(tiny.hf_model()) in seen["what"]
    # weights at the precision, x1.2 for the KV cache and activations
    assert seen["need"] == pytest.approx(params * bytes_per_param * 1.2 / 2 ** 30, rel=1e-6)
