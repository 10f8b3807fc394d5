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


def test_rows_grown_for_a_larger_tokenizer_start_at_the_mean_row():
    """Training (helpers.train) and merging (helpers.merge) start new rows at the mean of the old ones; loading for
    inference must too, or an adapter without embedding rows answers differently merged and unmerged."""
    base = AutoModelForCausalLM.from_pretrained(tiny.hf_model())
    old_in = base.get_input_embeddings().weight.detach().clone()
    old_out = base.get_output_embeddings().weight.detach().clone()
    model, tok = load_model(tiny.hf_model(), tokenizer_path=tiny.merged_tokenizers()["llama_hf"])
    n = old_in.shape[0]
    grown_in, grown_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert grown_in.shape[0] == len(tok) > n
    torch.testing.assert_close(grown_in[:n], old_in)
    torch.testing.assert_close(grown_in[n:], old_in.mean(0, keepdim=True).expand(len(tok) - n, -1))
    torch.testing.assert_close(grown_out[n:], old_out.mean(0, keepdim=True).expand(len(tok) - n, -1))


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


# --------------------------------------------------------------------------- --alpha (NTK rope scaling)
SHORT_CONTEXT = 48  # the tiny model re-saved with a short trained context, so "past it" stays cheap


@pytest.fixture(scope="module")
def short_ctx_model(tmp_path_factory):
    """The tiny model with ``max_position_embeddings`` = 48 (weights unchanged): a sequence of 80 tokens is past
    its original context."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("short_ctx") / "m"
    shutil.copytree(tiny.hf_model(), out, ignore=shutil.ignore_patterns(".*"))
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    cfg["max_position_embeddings"] = SHORT_CONTEXT
    (out / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return out


def _with_theta(path, theta):
    """Reference: the same weights with a plain rotary embedding whose base was set by hand."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    return AutoModelForCausalLM.from_pretrained(path, config=cfg).eval()


def _logits(model, n):
    ids = (torch.arange(n) * 7 % 997 + 3).unsqueeze(0)
    with torch.no_grad():
        return model(ids).logits[0]


def test_float_alpha_equals_a_hand_set_ntk_base_past_the_context(short_ctx_model):
    """--alpha 4: the original patch's base = 10000 * 4 ** (d/(d-2)), d = 64/4 = 16 (written here by hand)."""
    model, _ = load_model(short_ctx_model, device="cpu", alpha=4.0)
    ref = _with_theta(short_ctx_model, 10000.0 * 4.0 ** (16 / 14))
    plain = _with_theta(short_ctx_model, 10000.0)
    n = 2 * SHORT_CONTEXT
    assert torch.allclose(_logits(model, n), _logits(ref, n), atol=1e-5)
    assert (_logits(model, n) - _logits(plain, n)).abs().max() > 1e-2  # the scaling does change the logits


def test_auto_alpha_is_the_originals_adaptive_formula(short_ctx_model):
    """--alpha auto, one forward of L tokens: the original patch uses alpha = L / (C/2) - 1 for L > C (AUTO_COEFF 1)
    and the plain base up to C tokens; both computed here from that formula, not from transformers."""
    model, _ = load_model(short_ctx_model, device="cpu", alpha="auto")
    long_n, short_n = 80, 40
    alpha = long_n / (SHORT_CONTEXT / 2) - 1
    ref = _with_theta(short_ctx_model, 10000.0 * alpha ** (16 / 14))
    assert torch.allclose(_logits(model, long_n), _logits(ref, long_n), atol=1e-5)
    plain = _with_theta(short_ctx_model, 10000.0)
    assert torch.allclose(_logits(model, short_n), _logits(plain, short_n), atol=1e-5)


def test_float_alpha_keeps_the_linear_scaling_of_a_16k_model():
    """A PI (linear x4) model with --alpha 2: positions divided by 4 AND the NTK base, as the original patch does."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(**tiny.TINY_CONFIG, vocab_size=1000, rope_parameters={"rope_type": "linear", "factor": 4.0,
                                                                             "rope_theta": 10000.0})
    out = modeling_ntk(cfg, 2.0)
    assert out["rope_type"] == "linear" and out["factor"] == 4.0
    assert out["rope_theta"] == pytest.approx(10000.0 * 2.0 ** (16 / 14))
    with pytest.raises(CourseError, match="--alpha auto.*linear"):
        modeling_ntk(cfg, "auto")


def modeling_ntk(cfg, alpha):
    from helpers.modeling import ntk_rope_parameters

    return ntk_rope_parameters(cfg, alpha)


def test_alpha_refused_on_yarn_and_bad_values():
    from transformers import LlamaConfig

    from helpers.modeling import parse_alpha

    yarn = LlamaConfig(**dict(tiny.TINY_CONFIG, max_position_embeddings=4096), vocab_size=1000,
                       rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 256,
                                        "rope_theta": 10000.0})
    with pytest.raises(CourseError, match="--alpha 2.0.*'yarn'"):
        modeling_ntk(yarn, 2.0)
    for bad in ("0", "-1", "fast", "nan", "inf"):
        with pytest.raises(CourseError, match=f"--alpha {bad}"):
            parse_alpha(bad)
    assert parse_alpha("1.0") is None and parse_alpha("AUTO") == "auto" and parse_alpha("2.5") == 2.5


def test_alpha_flag(monkeypatch):
    p = argparse.ArgumentParser()
    add_model_arguments(p)
    assert "alpha" not in apply_model_arguments(p.parse_args(["--base_model", "m"]))  # default 1.0 = off
    assert apply_model_arguments(p.parse_args(["--base_model", "m", "--alpha", "auto"]))["alpha"] == "auto"
    with pytest.raises(CourseError, match="--alpha fast"):
        apply_model_arguments(p.parse_args(["--base_model", "m", "--alpha", "fast"]))
    with pytest.raises(CourseError, match="--alpha 0"):
        load_model(tiny.hf_model(), device="cpu", alpha="0")


def test_ntk_context():
    from transformers import LlamaConfig

    from helpers.modeling import ntk_context

    cfg = LlamaConfig(**dict(tiny.TINY_CONFIG, max_position_embeddings=4096), vocab_size=1000)
    assert (ntk_context(cfg, None), ntk_context(cfg, 2.0), ntk_context(cfg, "auto")) == (4096, 8192, 16384)
