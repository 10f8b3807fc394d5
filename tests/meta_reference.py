"""Meta's checkpoint layout written for the tests from the specification, independent of helpers.

- Names: Meta's ``llama/model.py`` (``tok_embeddings``, ``layers.N.attention.wq``, ...) against transformers'
  ``LlamaForCausalLM`` (``model.embed_tokens``, ``model.layers.N.self_attn.q_proj``, ...).
- Rotary rows: Meta rotates consecutive pairs (0,1), (2,3), ... of each head (``torch.view_as_complex`` in
  ``apply_rotary_emb``); transformers rotates (i, i + d/2) (``rotate_half``). So per head the HF rows are Meta's
  even rows followed by Meta's odd rows.
- Tensor parallelism (``llama/model.py`` with fairscale's layers): ``ColumnParallelLinear`` (wq, wk, wv, w1, w3,
  output) splits its output features = dim 0 of the weight; ``RowParallelLinear`` (wo, w2) splits its input
  features = dim 1; ``ParallelEmbedding`` (tok_embeddings) splits the embedding dimension = dim 1; the RMSNorm
  weights (attention_norm, ffn_norm, norm) are whole in every shard.
"""
import torch

META_PARALLEL = {"tok_embeddings": 1, "output": 0, "attention.wq": 0, "attention.wk": 0, "attention.wv": 0,
                 "attention.wo": 1, "feed_forward.w1": 0, "feed_forward.w2": 1, "feed_forward.w3": 0}
REPLICATED = ("norm", "attention_norm", "ffn_norm")
LAYER_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
               "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
               "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj", "feed_forward.w3": "mlp.up_proj",
               "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
GLOBAL_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}


def short_name(meta_key: str) -> str:
    """``layers.3.feed_forward.w1.weight`` -> ``feed_forward.w1``; ``output.weight`` -> ``output``."""
    name = meta_key.removesuffix(".weight")
    return name.split(".", 2)[2] if name.startswith("layers.") else name


def interleave_rows(w_hf: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF (half-split) rows -> Meta (pairs) rows: per head, the first half goes to the even rows."""
    out = torch.empty_like(w_hf)
    d = w_hf.shape[0] // n_heads
    for h in range(n_heads):
        head = w_hf[h * d:(h + 1) * d]
        out[h * d:(h + 1) * d:2] = head[:d // 2]
        out[h * d + 1:(h + 1) * d:2] = head[d // 2:]
    return out


def meta_state_dict(hf_sd: dict, n_heads: int, n_kv_heads: int, n_layers: int) -> dict:
    """The unsplit Meta state dict of an HF LLaMA state dict."""
    out = {f"{m}.weight": hf_sd[f"{h}.weight"] for m, h in GLOBAL_NAMES.items()}
    for i in range(n_layers):
        for m, h in LAYER_NAMES.items():
            w = hf_sd[f"model.layers.{i}.{h}.weight"]
            if m == "attention.wq":
                w = interleave_rows(w, n_heads)
            elif m == "attention.wk":
                w = interleave_rows(w, n_kv_heads)
            out[f"layers.{i}.{m}.weight"] = w
    return out


def shards(meta_sd: dict, n: int) -> list[dict]:
    """``n`` tensor-parallel shards of a Meta state dict (every split even)."""
    out = [{} for _ in range(n)]
    for key, w in meta_sd.items():
        name = short_name(key)
        if name in REPLICATED:
            parts = [w] * n
        else:
            dim = META_PARALLEL[name]
            size = w.shape[dim] // n
            assert size * n == w.shape[dim], f"{key}: {tuple(w.shape)} does not split evenly in {n}"
            parts = [w.narrow(dim, r * size, size) for r in range(n)]
        for s, p in zip(out, parts):
            s[key] = p.clone()
    return out
