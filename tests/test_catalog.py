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


# --------------------------------------------------------------------------- single vs ordered multi-LoRA merges
# hand-written from seed 002 (第3步 方式1/方式2, 7.1.1, 8.1.1) and the Chinese-LLaMA-Alpaca-2 model cards
MERGES = {"Chinese-LLaMA": (1, 49953), "Chinese-LLaMA-Plus": (1, 49953), "Chinese-Alpaca": (1, 49954),
          "Chinese-Alpaca-Plus": (2, 49954), "chinese-llama-2-7b": (1, 55296), "chinese-alpaca-2-7b": (1, 55296)}


def test_merge_recipes_single_vs_ordered():
    got = {r.model: (len(r.loras), r.vocab) for r in catalog.MERGE_RECIPES}
    assert got == MERGES
    plus = catalog.merge_recipe("chinese-alpaca-plus")
    assert plus.merge == "ordered multi-LoRA" and "llama_plus" in plus.loras[0] and "alpaca_plus" in plus.loras[1]
    for r in catalog.MERGE_RECIPES:
        if r.generation == "v2":
            assert r.base == "meta-llama/Llama-2-7b-hf" and r.merge == "single"
    with pytest.raises(CourseError, match="Chinese-Alpaca-Plus"):
        catalog.merge_recipe("Chinese-Vicuna")
    table = catalog.merge_table()
    assert table.loc["Chinese-Alpaca-Plus", "merge"] == "ordered multi-LoRA" and len(table) == len(MERGES)


def test_merge_recipes_match_the_seed_text():
    import re
    from pathlib import Path

    seed = next(iter(sorted(Path("/work/shared/seeds").glob("002_*.txt"))), None)
    if seed is None:
        pytest.skip("seed 002 (/work/shared/seeds) is not on this machine")
    text = seed.read_text(encoding="utf-8")
    single = re.search(r"单LoRA权重合并（适用于\s*([^）]+)）", text).group(1)
    multi = re.search(r"多LoRA权重合并（适用于\s*([^）]+)）", text).group(1)
    names = lambda s: {n.strip() for n in s.split(",") if n.strip()}  # noqa: E731
    v1 = {r.model: r.merge for r in catalog.MERGE_RECIPES if r.generation == "v1"}
    assert {m for m, k in v1.items() if k == "single"} == names(single)
    assert {m for m, k in v1.items() if k != "single"} == names(multi)


def test_needs_agree_with_what_the_notebooks_run():
    """02 converts without streaming (the 1.3B rehearsal measured 5.45 GiB RSS for 2.4 GiB of weights); 07's real run
    trains LoRA r=64 without embed_tokens/lm_head (the vocabulary is already Chinese)."""
    needs = {n.step: n for n in catalog.step_needs("alpaca")}
    assert needs["02_convert_llama"].ram_gib >= 5.45
    w = catalog.weights_gib("alpaca")
    lora_only = (4 * 64 * (4 * 4096 * 2 + 3 * (4096 + 11008))) * 16 / 2**30  # 4 layers, r=64, 7 projections
    assert needs["07_pretrain_and_sft_lora"].gpu_gib == pytest.approx(w + lora_only + 2, abs=0.1)
    assert "min" in needs["03_extend_vocab"].time and "30 min" not in needs["03_extend_vocab"].time


def test_64k_models_are_yarn_x16_as_published():
    """Typed from the published config.json of hfl/chinese-llama-2-7b-64k (the Alpaca 64K has the same rope
    facts; README: 长上下文版（YaRN）：64K)."""
    published = {"max_position_embeddings": 65536, "rope_theta": 10000.0, "vocab_size": 55296,
                 "rope_scaling": {"factor": 16.0, "finetuned": True, "original_max_position_embeddings": 4096,
                                  "type": "yarn"}}
    for repo in ("hfl/chinese-llama-2-7b-64k", "hfl/chinese-alpaca-2-7b-64k"):
        m = catalog.get(repo)
        assert {k: m.config[k] for k in published} == published
        assert m.context == 65536 and m.config["num_hidden_layers"] == 32
    assert catalog.get("alpaca_64k").family == "chinese-alpaca-2"
