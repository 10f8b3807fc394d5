"""Course step 02: Meta ``consolidated.*.pth`` <-> Hugging Face ``LlamaForCausalLM``.

transformers 5 wheels no longer ship ``convert_llama_weights_to_hf.py``, so the course has its own
converter. Meta's checkpoints keep q/k rows in the *interleaved* rotary layout (pairs (0,1), (2,3), ...)
and are split for tensor parallelism; Hugging Face uses the *half-split* layout (pairs (i, i+d/2)).
"""
from __future__ import annotations

import math

import torch

# Meta tensor-parallel split dimension per weight (None = replicated in every shard).
META_SPLIT_DIM = {
    "tok_embeddings": 1,
    "output": 0,
    "norm": None,
    "attention.wq": 0,
    "attention.wk": 0,
    "attention.wv": 0,
    "attention.wo": 1,
    "feed_forward.w1": 0,
    "feed_forward.w2": 1,
    "feed_forward.w3": 0,
    "attention_norm": None,
    "ffn_norm": None,
}

HF_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def permute_meta_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved rotary rows (Meta) -> half-split rows (HF), per head."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_hf_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Half-split rows (HF) -> interleaved rotary rows (Meta): the inverse of :func:`permute_meta_to_hf`."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """LLaMA's feed-forward width rule (``params.json`` does not store it)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def meta_params_from_config(config, multiple_of: int = 4) -> dict:
    """``params.json`` (Meta's keys) for an HF ``LlamaConfig``; vocab_size -1 as in Meta's release."""
    params = {
        "dim": config.hidden_size,
        "multiple_of": multiple_of,
        "n_heads": config.num_attention_heads,
        "n_layers": config.num_hidden_layers,
        "norm_eps": config.rms_norm_eps,
        "vocab_size": -1,
    }
    if config.num_key_value_heads != config.num_attention_heads:
        params["n_kv_heads"] = config.num_key_value_heads
    if ffn_dim(config.hidden_size, multiple_of) != config.intermediate_size:
        raise ValueError(
            f"intermediate_size {config.intermediate_size} does not follow LLaMA's rule for dim={config.hidden_size}, "
            f"multiple_of={multiple_of} (expected {ffn_dim(config.hidden_size, multiple_of)})"
        )
    theta = _rope_theta(config)
    if theta != 10000.0:
        params["rope_theta"] = theta
    return params


def _rope_theta(config) -> float:
    rp = getattr(config, "rope_parameters", None) or {}
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def hf_to_meta_state_dict(sd: dict[str, torch.Tensor], n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    """One unsplit Meta state dict from an HF ``LlamaForCausalLM`` state dict."""
    out = {
        "tok_embeddings.weight": sd["model.embed_tokens.weight"],
        "norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"] if "lm_head.weight" in sd else sd["model.embed_tokens.weight"],
    }
    layer_ids = sorted({int(k.split(".")[2]) for k in sd if k.startswith("model.layers.")})
    for i in layer_ids:
        for meta, hf in HF_NAMES.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if meta == "attention.wq":
                w = permute_hf_to_meta(w, n_heads)
            elif meta == "attention.wk":
                w = permute_hf_to_meta(w, n_kv_heads)
            out[f"layers.{i}.{meta}.weight"] = w
    return out


def _split_key(key: str):
    name = key.rsplit(".weight", 1)[0]
    if name.startswith("layers."):
        name = name.split(".", 2)[2]
    return META_SPLIT_DIM.get(name, None)


def split_meta_shards(meta_sd: dict[str, torch.Tensor], num_shards: int) -> list[dict[str, torch.Tensor]]:
    """Split a Meta state dict for ``num_shards`` tensor-parallel ranks, as Meta's release does."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(num_shards)]
    for key, w in meta_sd.items():
        dim = _split_key(key) if w.dim() > 1 else None
        if dim is None or num_shards == 1:
            for s in shards:
                s[key] = w.clone()
            continue
        if w.shape[dim] % num_shards:
            raise ValueError(f"{key}: dimension {dim} of shape {tuple(w.shape)} does not split into {num_shards} shards")
        for s, piece in zip(shards, torch.chunk(w, num_shards, dim=dim)):
            s[key] = piece.clone().contiguous()
    return shards
