import json
import os
import subprocess
import sys

import pytest
import torch

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


def test_meta_checkpoint_layout_and_safe_loading(tiny_paths):
    root = tiny_paths["meta_tiny_tp2"]
    assert (root / "tokenizer.model").is_file()
    size_dir = root / "tiny-tp2"
    params = json.loads((size_dir / "params.json").read_text(encoding="utf-8"))
    assert set(params) >= {"dim", "n_layers", "n_heads", "multiple_of", "norm_eps", "vocab_size"}
    assert params["vocab_size"] == -1
    shards = [torch.load(p, map_location="cpu", weights_only=True) for p in sorted(size_dir.glob("consolidated.*.pth"))]
    assert len(shards) == 2
    dim = params["dim"]
    # column-parallel weights split rows, row-parallel weights split columns, norms replicated
    assert shards[0]["layers.0.attention.wq.weight"].shape == (dim // 2, dim)
    assert shards[0]["layers.0.attention.wo.weight"].shape == (dim, dim // 2)
    assert shards[0]["tok_embeddings.weight"].shape[1] == dim // 2
    assert torch.equal(shards[0]["norm.weight"], shards[1]["norm.weight"])
    gqa = json.loads((tiny_paths["meta_tiny_gqa_tp2"] / "tiny-gqa-tp2" / "params.json").read_text(encoding="utf-8"))
    assert gqa["n_kv_heads"] == 2 and gqa["n_heads"] == 4


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
