"""The one table of real models, checked against the model cards and against transformers / PEFT themselves."""
import pytest
import torch

from helpers import catalog
from helpers.core import CourseError


# typed from the model cards / config.json of the released repositories (independent of helpers.catalog)
CARDS = {
    "hfl/chinese-alpaca-2-1.3b": dict(vocab_size=55296, num_hidden_layers=4, hidden_size=4096, intermediate_size=11008,
                                      num_attention_heads=32, max_position_embeddings=4096),
    "hfl/chinese-alpaca-2-7b": dict(vocab_size=55296, num_hidden_layers=32, hidden_size=4096, intermediate_size=11008),
    "meta-llama/Llama-2-7b-hf": dict(vocab_size=32000, num_hidden_layers=32, hidden_size=4096, rms_norm_eps=1e-05),
    "hfl/chinese-alpaca-2-13b": dict(vocab_size=55296, num_hidden_layers=40, hidden_size=5120, intermediate_size=13824),
}


@pytest.mark.parametrize("repo", sorted(CARDS))
def test_config_facts_match_the_model_cards(repo):
    cfg = catalog.get(repo).config
    assert {k: cfg[k] for k in CARDS[repo]} == CARDS[repo]


def test_16k_models_are_position_interpolation_x4():
    m = catalog.get("hfl/chinese-alpaca-2-7b-16k")
    assert m.config["rope_scaling"] == {"type": "linear", "factor": 4.0} and m.context == 16384
    assert catalog.get("alpaca").context == 4096


@pytest.mark.parametrize("repo", ["hfl/chinese-alpaca-2-1.3b", "meta-llama/Llama-2-7b-hf", "hfl/chinese-alpaca-2-13b"])
def test_param_count_equals_transformers(repo):
    """transformers builds the model on the meta device (no memory): its parameter count is the reference."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {k: v for k, v in catalog.get(repo).config.items() if k not in ("architectures", "torch_dtype")}
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**cfg))
    assert catalog.param_count(catalog.get(repo).config) == sum(p.numel() for p in model.parameters())
    if repo == "meta-llama/Llama-2-7b-hf":
        assert catalog.param_count(catalog.get(repo).config) == 6_738_415_616  # Llama-2-7b, Meta's model card


def test_lora_param_count_equals_peft():
    """The released 7B LoRA shape (r=64, 7 projections, embed_tokens/lm_head saved) counted by PEFT itself."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    small = dict(catalog.get("alpaca_lora").config, num_hidden_layers=2)
    cfg = {k: v for k, v in small.items() if k not in ("architectures", "torch_dtype")}
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**cfg))
    lora = catalog.get("alpaca_lora").lora
    peft_model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"],
                                                  target_modules=lora["target_modules"],
                                                  modules_to_save=lora["modules_to_save"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert catalog.lora_param_count(small, 64) == trainable


def test_templates_come_from_the_table_not_from_guesses():
    assert catalog.template_for("hfl/chinese-alpaca-2-1.3b") == "chinese-alpaca-2"
    assert catalog.template_for("hfl/chinese-llama-2-7b") == "llama"  # a base model: plain continuation
    # a hub cache path names its repo: the snapshot folder itself is only a commit hash
    snap = "/root/.cache/huggingface/hub/models--hfl--chinese-alpaca-2-7b-16k/snapshots/0123abcd"
    assert catalog.repo_of(snap) == "hfl/chinese-alpaca-2-7b-16k"
    assert catalog.template_for(snap) == "chinese-alpaca-2"
    assert catalog.template_for("/data/models/chinese-alpaca-2-13b") == "chinese-alpaca-2"
    assert catalog.template_or_default("/tmp/some-tiny-model") == "alpaca"
    with pytest.raises(CourseError, match="unknown"):
        catalog.template_for("/tmp/some-tiny-model")


def test_unknown_model_names_the_choices():
    with pytest.raises(CourseError, match="hfl/chinese-alpaca-2-1.3b"):
        catalog.get("hfl/chinese-alpaca-3-1.3b")


def test_needs_table_scales_with_the_model():
    needs = {(n.step, n.model): n for r in ("alpaca", "alpaca_7b") for n in catalog.step_needs(r)}
    small, big = needs[("05_inference", "chinese-alpaca-2-1.3b")], needs[("05_inference", "chinese-alpaca-2-7b")]
    # fp16 weights: 1.26 B x 2 bytes = 2.35 GiB and 6.93 B x 2 bytes = 12.9 GiB, plus 20 % for the KV cache
    assert small.gpu_gib == pytest.approx(2.35 * 1.2, abs=0.1) and big.gpu_gib == pytest.approx(12.9 * 1.2, abs=0.1)
    assert set(catalog.needs_table().index.get_level_values(0)) >= {"04_merge_lora", "07_pretrain_and_sft_lora"}
