import json
import os
import subprocess
import sys

import pytest
import torch

import meta_reference
from helpers import tiny
from helpers.io import sha256_tree

BUILD = """
from helpers import tiny
tiny.base_sp_model(); tiny.hf_model(); tiny.hf_model(gqa=True); tiny.meta_checkpoint(2)
tiny.meta_checkpoint(2, gqa=True); tiny.merged_tokenizers(); tiny.lora_adapters()
"""


def test_factory_is_byte_identical_across_runs(tiny_paths, tmp_path):
    """A second build in a fresh workspace gives SHA256-equal files for every artifact."""
    env = {**os.environ, "COURSE_WORKSPACE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = tiny_paths["hf_llama"].parent
    for name in ["llama_sp", "hf_llama", "hf_llama_gqa", "meta_tiny-tp2", "meta_tiny-gqa-tp2", "merged_tokenizers",
                 "lora_adapters"]:
        a, b = sha256_tree(first / name), sha256_tree(tmp_path / "tiny" / name)
        assert a and a == b, name


@pytest.mark.parametrize("key,size,n,gqa", [("meta_tiny", "tiny", 1, False), ("meta_tiny_tp2", "tiny-tp2", 2, False),
                                           ("meta_tiny_gqa_tp2", "tiny-gqa-tp2", 2, True)])
def test_meta_checkpoint_follows_metas_parallel_layout(tiny_paths, key, size, n, gqa):
    """Every tensor of the tiny Meta shards equals the shards built in meta_reference from Meta's specification
    (names, interleaved q/k rows, ColumnParallel/RowParallel/ParallelEmbedding splits) out of the HF weights."""
    from safetensors.torch import load_file

    root = tiny_paths[key]
    assert (root / "tokenizer.model").is_file()
    params = json.loads((root / size / "params.json").read_text(encoding="utf-8"))
    assert set(params) >= {"dim", "n_layers", "n_heads", "multiple_of", "norm_eps", "vocab_size"}
    assert params["vocab_size"] == -1 and params.get("n_kv_heads", params["n_heads"]) == (2 if gqa else 4)
    hf_dir = tiny_paths["hf_llama_gqa" if gqa else "hf_llama"]
    hf = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    ref = meta_reference.meta_state_dict(load_file(str(hf_dir / "model.safetensors")), hf["num_attention_heads"],
                                         hf["num_key_value_heads"], hf["num_hidden_layers"])
    want = meta_reference.shards(ref, n)
    got = [torch.load(p, map_location="cpu", weights_only=True) for p in sorted((root / size).glob("consolidated.*.pth"))]
    assert len(got) == n
    names = {meta_reference.short_name(k) for k in ref}
    assert names == set(meta_reference.META_PARALLEL) | set(meta_reference.REPLICATED)  # the nine + three norms
    for rank, (g, w) in enumerate(zip(got, want)):
        assert list(g) == list(w), rank
        for k in w:
            assert g[k].shape == w[k].shape and torch.equal(g[k], w[k]), (rank, k)
    if n == 2:  # the nine split dimensions, spelled out: half of the split dimension, the other one whole
        for k, full in ref.items():
            name = meta_reference.short_name(k)
            if name in meta_reference.META_PARALLEL:
                dim = meta_reference.META_PARALLEL[name]
                assert got[0][k].shape[dim] == full.shape[dim] // 2 and got[0][k].shape[1 - dim] == full.shape[1 - dim], k


def test_merged_model_kinds():
    from helpers.core import CourseError

    with pytest.raises(CourseError, match="kind 'pth': choose llama or alpaca"):
        tiny.merged_model("pth")


def test_hf_models_load_and_generate(tiny_paths):
    from helpers.generation import generate
    from helpers.modeling import load_model

    for key, kv in (("hf_llama", 4), ("hf_llama_gqa", 2)):
        model, tok = load_model(tiny_paths[key])
        assert model.config.num_key_value_heads == kv and model.config.vocab_size == len(tok)
        out = generate(model, tok, ["Hello", "The weather today"], temperature=0, max_new_tokens=5)
        assert len(out) == 2 and all(isinstance(x, str) for x in out)


def test_adapters_mirror_the_real_release(tiny_paths):
    from helpers.tokenizer import load_tokenizer

    base = load_tokenizer(tiny_paths["hf_llama"])
    llama_tok = load_tokenizer(tiny_paths["lora_llama"])
    alpaca_tok = load_tokenizer(tiny_paths["lora_alpaca"])
    assert len(llama_tok) > len(base) + 500  # Chinese pieces were added
    assert len(alpaca_tok) == len(llama_tok) + 1 and alpaca_tok.pad_token == "[PAD]"  # 49953 -> 49954
    for key, tok in (("lora_llama", llama_tok), ("lora_alpaca", alpaca_tok)):
        cfg = json.loads((tiny_paths[key] / "adapter_config.json").read_text(encoding="utf-8"))
        assert set(cfg["modules_to_save"]) == {"embed_tokens", "lm_head"}
        assert cfg["r"] == 8 and cfg["lora_alpha"] == 32
        from safetensors.torch import load_file

        w = load_file(str(tiny_paths[key] / "adapter_model.safetensors"))
        emb = [v for k, v in w.items() if "embed_tokens" in k and "lora" not in k]
        assert emb and emb[0].shape[0] == len(tok)
        assert all(v.abs().sum() > 0 for k, v in w.items() if "lora_B" in k)  # a merge visibly changes the model
    # base ids are kept: every base piece encodes to the same id in the extended tokenizer
    for piece_id in range(3, len(base)):
        piece = base.convert_ids_to_tokens(piece_id)
        assert llama_tok.convert_tokens_to_ids(piece) == piece_id


# ---------------------------------------------------------------- trained tiny model (issue 17)
def test_trained_model_training_is_deterministic(tmp_path):
    """Two short trainings from the same data give byte-identical weights, and different stages differ."""
    from helpers.io import sha256_file

    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        out.mkdir()
        tiny.train_tiny_stages(out, pt_steps=2, sft_steps=2)
    for stage in tiny.TRAINED_STAGES:
        assert sha256_file(a / stage / "model.safetensors") == sha256_file(b / stage / "model.safetensors"), stage
    assert sha256_file(a / "base" / "model.safetensors") != sha256_file(a / "pt" / "model.safetensors")


def test_trained_sft_model_answers_its_training_instructions():
    """After SFT the tiny model follows the alpaca template and reproduces answers it was trained on (the
    expected text is the data file's, not the model's); the PT model does not."""
    from helpers.generation import generate
    from helpers.modeling import load_model
    from helpers.prompts import build_prompt

    recs = tiny.trained_sft_records()
    prompts = [build_prompt(r["instruction"], r["input"]) for r in recs]
    raw = json.loads((tiny.DATA_DIR / "alpaca_zh_sample.json").read_text(encoding="utf-8"))
    wanted = {r["instruction"] + r["input"]: r["output"] for r in raw}
    for stage, at_least in (("sft", 6), ("pt", 0)):
        model, tok = load_model(tiny.trained_model(stage), device="cpu")
        answers = generate(model, tok, prompts, batch_size=8, do_sample=False, max_new_tokens=40)
        hits = sum(a.strip() == wanted[r["instruction"] + r["input"]] for a, r in zip(answers, recs))
        assert hits >= at_least if stage == "sft" else hits == 0, (stage, answers)
