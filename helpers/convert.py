"""Course step 02: Meta ``consolidated.*.pth`` <-> Hugging Face ``LlamaForCausalLM``.

transformers 5 wheels no longer ship ``convert_llama_weights_to_hf.py``, so the course has its own
converter. Meta's checkpoints keep q/k rows in the *interleaved* rotary layout (pairs (0,1), (2,3), ...)
and are split for tensor parallelism; Hugging Face uses the *half-split* layout (pairs (i, i+d/2)).

    python -m helpers.convert --input_dir llama --model_size 7B --output_dir llama-7b-hf [--llama_version 2]
    python -m helpers.convert --to meta --input_dir llama-7b-hf --output_dir 7B [--model_size 7B | --num_shards N]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .core import CourseError, cli_main
from .device import check_ram
from .io import read_json
from .weights import (  # noqa: F401  (permute_* and load_hf_state_dict stay convert's public names)
    hf_to_meta_tensor, load_hf_state_dict, load_torch_file, meta_to_hf_tensor, name_pairs, permute_hf_to_meta,
    permute_meta_to_hf, rope_parameters)

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

def ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """LLaMA's feed-forward width rule (``params.json`` does not store it)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def meta_params_from_config(config, multiple_of: int = 4, ffn_dim_multiplier: float | None = None) -> dict:
    """``params.json`` (Meta's keys) for an HF ``LlamaConfig``; vocab_size -1 as in Meta's release.

    Raises :class:`ConvertError` when ``intermediate_size`` does not follow LLaMA's rule for these values."""
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
    expected = ffn_dim(config.hidden_size, multiple_of, ffn_dim_multiplier)
    if expected != config.intermediate_size:
        raise ConvertError(
            f"intermediate_size {config.intermediate_size} does not follow LLaMA's rule for dim={config.hidden_size}, "
            f"multiple_of={multiple_of}, ffn_dim_multiplier={ffn_dim_multiplier} (expected {expected}); "
            "use meta_params(config), which finds the matching values"
        )
    rope = rope_parameters(config)
    if rope.scaling is not None:
        raise ConvertError(f"rope scaling {rope.scaling!r} x{rope.factor} (a long-context model) has no place in "
                           "Meta's params.json; keep this model in Hugging Face format")
    if rope.theta != 10000.0:
        params["rope_theta"] = rope.theta
    if ffn_dim_multiplier is not None:
        params["ffn_dim_multiplier"] = ffn_dim_multiplier
    return params


def _n_layers(sd: dict, prefix: str) -> int:
    return len({int(k.split(".")[prefix.count(".")]) for k in sd if k.startswith(prefix)})


def hf_to_meta_state_dict(sd: dict[str, torch.Tensor], n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    """One unsplit Meta state dict from an HF ``LlamaForCausalLM`` state dict (tied embeddings give ``output``)."""
    sd = {"lm_head.weight": sd["model.embed_tokens.weight"], **sd}
    return dict(hf_to_meta_tensor(hf, sd[hf], n_heads, n_kv_heads) for _, hf in name_pairs(_n_layers(sd, "model.layers.")))


def split_dim(key: str) -> int | None:
    """The dimension along which Meta splits weight ``key`` across tensor-parallel shards (None: replicated)."""
    name = key.rsplit(".weight", 1)[0]
    if name.startswith("layers."):
        name = name.split(".", 2)[2]
    return META_SPLIT_DIM.get(name)


def split_meta_shards(meta_sd: dict[str, torch.Tensor], num_shards: int) -> list[dict[str, torch.Tensor]]:
    """Split a Meta state dict for ``num_shards`` tensor-parallel ranks, as Meta's release does.

    An extended vocabulary may not divide evenly (Chinese-LLaMA's 49953 rows for 13B's 2 shards): ``output.weight``
    then gives the last shard the remainder (24976 + 24977), as the original ``merge_llama_with_chinese_lora.py``."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(num_shards)]
    for key, w in meta_sd.items():
        dim = split_dim(key) if w.dim() > 1 else None
        if dim is None or num_shards == 1:
            for s in shards:
                s[key] = w.clone()
            continue
        size = w.shape[dim]
        if size % num_shards == 0:
            pieces = torch.chunk(w, num_shards, dim=dim)
        elif key == "output.weight" and size >= num_shards:
            pieces = torch.split(w, [size // num_shards] * (num_shards - 1) + [size // num_shards + size % num_shards],
                                 dim=dim)
        else:
            raise ConvertError(f"{key}: dimension {dim} of shape {tuple(w.shape)} does not split into {num_shards} "
                               "shards; pass a --num_shards that divides it (1 always works)")
        for s, piece in zip(shards, pieces):
            s[key] = piece.clone().contiguous()
    return shards


# =========================================================================== full conversions (CLI)
# The usual tensor-parallel shard count of each original release (Meta's download layout).
NUM_SHARDS = {"7B": 1, "13B": 2, "30B": 4, "33B": 4, "34B": 4, "65B": 8, "70B": 8}
MAX_POSITIONS = {1: 2048, 2: 4096}


class ConvertError(CourseError):
    """A checkpoint the converter cannot use; the message names the file and says what to do."""


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    """A Meta shard through :func:`helpers.weights.load_torch_file` (errors name the file and the checksum list)."""
    return load_torch_file(path, hint="download it again and compare its checksum with checklist.chk")


def read_params(ckpt_dir: str | Path) -> dict:
    """``params.json`` of a Meta checkpoint folder, with a clear error when it is missing or incomplete."""
    path = Path(ckpt_dir) / "params.json"
    if not path.is_file():
        raise ConvertError(f"{path}: params.json not found; it ships with every Meta model folder "
                           "(--input_dir/<model_size>/params.json)")
    params = read_json(path)
    missing = [k for k in ("dim", "n_heads", "n_layers", "norm_eps") if k not in params]
    if missing:
        raise ConvertError(f"{path}: missing field(s) {missing}")
    return params


def shard_files(ckpt_dir: str | Path, model_size: str | None = None) -> list[Path]:
    """The ``consolidated.NN.pth`` files, checked for gaps and against the usual count for ``model_size``."""
    ckpt_dir = Path(ckpt_dir)
    files = sorted(ckpt_dir.glob("consolidated.*.pth"))
    if not files:
        raise ConvertError(f"{ckpt_dir}: no consolidated.*.pth files; put Meta's weights in --input_dir/<model_size>/")
    want = [f"consolidated.{i:02d}.pth" for i in range(len(files))]
    if [f.name for f in files] != want:
        raise ConvertError(f"{ckpt_dir}: shard files {[f.name for f in files]} are not consolidated.00 .. "
                           f"{len(files) - 1:02d} without gaps; a shard is missing")
    expected = NUM_SHARDS.get((model_size or "").upper())
    if expected is not None and expected != len(files):
        raise ConvertError(f"{ckpt_dir}: found {len(files)} consolidated.*.pth shard(s) but LLaMA {model_size} "
                           f"ships {expected}; check --model_size or download the missing shards")
    return files


def merge_meta_shards(shards: list[dict[str, torch.Tensor]], files: list[Path] | None = None) -> dict[str, torch.Tensor]:
    """One Meta state dict from tensor-parallel shards: concatenate along Meta's split dimension of each weight."""
    files = files or [Path(f"shard {i}") for i in range(len(shards))]
    keys = [k for k in shards[0] if not k.endswith("rope.freqs")]
    for f, s in zip(files[1:], shards[1:]):
        if set(k for k in s if not k.endswith("rope.freqs")) != set(keys):
            raise ConvertError(f"{f}: holds different weights from {files[0].name}; the shards do not belong together")
    out = {}
    for key in keys:
        parts = [s[key] for s in shards]
        dim = split_dim(key) if parts[0].dim() > 1 else None
        for f, p in zip(files[1:], parts[1:]):
            if key == "output.weight" and p.dim() == 2 and p.shape[1] == parts[0].shape[1]:
                continue  # vocabulary rows: the last shard may hold more (see split_meta_shards)
            if p.shape != parts[0].shape:
                raise ConvertError(f"{f}: {key} has shape {tuple(p.shape)} but {tuple(parts[0].shape)} in "
                                   f"{files[0].name}; the shards do not belong together")
        out[key] = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
    return out


def _expect(cond: bool, where, key: str, got, want) -> None:
    if not cond:
        raise ConvertError(f"{where}: {key} has shape {tuple(got)} but params.json implies {want}; "
                           "the weights and params.json do not match (wrong --model_size folder?)")


def check_meta_shapes(sd: dict[str, torch.Tensor], params: dict, where) -> dict:
    """Check a merged Meta state dict against ``params.json``; returns ``{vocab_size, intermediate_size, n_kv_heads}``."""
    dim, n_heads, n_layers = params["dim"], params["n_heads"], params["n_layers"]
    n_kv = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    for key in ("tok_embeddings.weight", "norm.weight", "output.weight"):
        if key not in sd:
            raise ConvertError(f"{where}: weight {key} missing; not a LLaMA checkpoint")
    vocab = sd["tok_embeddings.weight"].shape[0]
    for key, shape in (("tok_embeddings.weight", (vocab, dim)), ("output.weight", (vocab, dim)), ("norm.weight", (dim,))):
        _expect(tuple(sd[key].shape) == shape, where, key, sd[key].shape, shape)
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("layers.")}
    if layers != set(range(n_layers)):
        raise ConvertError(f"{where}: holds {len(layers)} layers but params.json says n_layers={n_layers}")
    if "layers.0.feed_forward.w1.weight" not in sd:
        raise ConvertError(f"{where}: weight layers.0.feed_forward.w1.weight missing")
    inter = sd["layers.0.feed_forward.w1.weight"].shape[0]
    want = {"attention.wq": (n_heads * head_dim, dim), "attention.wk": (n_kv * head_dim, dim),
            "attention.wv": (n_kv * head_dim, dim), "attention.wo": (dim, n_heads * head_dim),
            "feed_forward.w1": (inter, dim), "feed_forward.w2": (dim, inter), "feed_forward.w3": (inter, dim),
            "attention_norm": (dim,), "ffn_norm": (dim,)}
    for i in range(n_layers):
        for name, shape in want.items():
            key = f"layers.{i}.{name}.weight"
            if key not in sd:
                raise ConvertError(f"{where}: weight {key} missing")
            _expect(tuple(sd[key].shape) == shape, where, key, sd[key].shape, shape)
    return {"vocab_size": vocab, "intermediate_size": inter, "n_kv_heads": n_kv}


def meta_to_hf_state_dict(sd: dict[str, torch.Tensor], n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    """An HF ``LlamaForCausalLM`` state dict from one (merged) Meta state dict: the inverse of
    :func:`hf_to_meta_state_dict` (q/k rows permuted from interleaved to half-split rotary)."""
    pairs = (meta_to_hf_tensor(m, sd[m], n_heads, n_kv_heads) for m, _ in name_pairs(_n_layers(sd, "layers.")))
    return {name: w.contiguous() for name, w in pairs}


def guess_llama_version(params: dict) -> int:
    """2 for LLaMA-2 params (norm_eps 1e-5 or grouped-query attention), else 1."""
    return 2 if params.get("n_kv_heads") or float(params["norm_eps"]) >= 1e-5 else 1


def hf_config_from_params(params: dict, vocab_size: int, intermediate_size: int, llama_version: int | None = None,
                          dtype: torch.dtype = torch.float16):
    """The ``LlamaConfig`` for Meta ``params.json`` (plus the sizes read from the weights)."""
    from transformers import LlamaConfig

    version = llama_version or guess_llama_version(params)
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=params["dim"], intermediate_size=intermediate_size,
        num_hidden_layers=params["n_layers"], num_attention_heads=params["n_heads"],
        num_key_value_heads=params.get("n_kv_heads") or params["n_heads"], rms_norm_eps=params["norm_eps"],
        max_position_embeddings=MAX_POSITIONS.get(version, 4096),
        rope_parameters={"rope_type": "default", "rope_theta": float(params.get("rope_theta", 10000.0))},
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, dtype=str(dtype).removeprefix("torch."),
    )


def meta_to_hf(input_dir: str | Path, model_size: str, output_dir: str | Path, llama_version: int | None = None,
               overwrite: bool = False, max_shard_size: str | int = "2GB", tokenizer_path: str | Path | None = None) -> Path:
    """Convert Meta's download (``input_dir/tokenizer.model`` + ``input_dir/<model_size>/consolidated.*.pth`` +
    ``params.json``) to an HF ``LlamaForCausalLM`` folder (config, generation_config, sharded safetensors,
    tokenizer files), written atomically. Returns ``output_dir``."""
    from huggingface_hub import save_torch_state_dict
    from transformers import GenerationConfig

    from .io import atomic_dir
    from .tokenizer import save_hf_tokenizer

    root = Path(input_dir)
    ckpt_dir = root / model_size
    if not ckpt_dir.is_dir():
        raise ConvertError(f"{ckpt_dir}: folder not found; Meta's layout is --input_dir/<model_size>/consolidated.*.pth")
    params = read_params(ckpt_dir)
    tok_file = Path(tokenizer_path) if tokenizer_path else root / "tokenizer.model"
    if not tok_file.is_file():
        raise ConvertError(f"{tok_file}: tokenizer.model not found; Meta's layout keeps it in --input_dir")
    files = shard_files(ckpt_dir, model_size)
    shards = [_load_pth(f) for f in tqdm(files, desc="load shards", disable=len(files) < 2)]  # memory-mapped
    check_ram(ram_needed_meta_to_hf(shards, max_shard_size), f"--input_dir {ckpt_dir}: Meta -> HF conversion",
              "a smaller --max_shard_size lowers the write buffer (e.g. 500MB), or download the HF-format weights "
              "(e.g. meta-llama/Llama-2-7b-hf) and skip this step; ")
    sd = merge_meta_shards(shards, files)
    sizes = check_meta_shapes(sd, params, ckpt_dir)
    import sentencepiece as spm

    n_tok = spm.SentencePieceProcessor(model_file=str(tok_file)).get_piece_size()
    vocab = params.get("vocab_size", -1)
    vocab = n_tok if vocab in (-1, None) else vocab  # Meta writes -1: the tokenizer decides
    if vocab != sizes["vocab_size"]:
        raise ConvertError(f"{ckpt_dir}: tok_embeddings has {sizes['vocab_size']} rows but the vocabulary has {vocab} "
                           f"({'params.json' if params.get('vocab_size', -1) != -1 else tok_file}); wrong tokenizer?")
    dtype = sd["tok_embeddings.weight"].dtype
    config = hf_config_from_params(params, vocab, sizes["intermediate_size"], llama_version, dtype)
    hf_sd = meta_to_hf_state_dict(sd, params["n_heads"], sizes["n_kv_heads"])
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        config.save_pretrained(tmp)
        GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(tmp)
        save_torch_state_dict(hf_sd, tmp, max_shard_size=max_shard_size)
        save_hf_tokenizer(tok_file, tmp)
    return Path(output_dir)


def _is_qk(name: str) -> bool:
    """True for the q/k projections, Meta's or HF's names (the tensors the rotary permutation copies)."""
    return name.endswith(("attention.wq.weight", "attention.wk.weight", "self_attn.q_proj.weight",
                          "self_attn.k_proj.weight"))


def ram_needed_meta_to_hf(shards: list[dict[str, torch.Tensor]], max_shard_size: str | int = "2GB") -> int:
    """The bytes :func:`meta_to_hf` holds at its peak besides the memory-mapped shards (estimate, no margin): the
    concatenated copy of every split weight (several shards only: one shard stays mapped), the permuted copies of
    the q/k weights, and one output shard that safetensors serializes in memory. Returns the byte count."""
    from .merge import parse_size

    def size(t):
        return t.numel() * t.element_size()

    split = sum(size(t) for s in shards for k, t in s.items() if t.dim() > 1 and split_dim(k) is not None)
    total = split + sum(size(t) for k, t in shards[0].items() if t.dim() < 2 or split_dim(k) is None)  # the output
    qk = sum(size(t) for s in shards for k, t in s.items() if _is_qk(k))
    return (split if len(shards) > 1 else 0) + qk + min(parse_size(max_shard_size), total)


def ram_needed_hf_to_meta(input_dir: str | Path, num_shards: int) -> int:
    """The bytes :func:`hf_to_meta` holds at its peak (estimate from the HF folder's headers, no margin): the whole
    state dict read into memory, the permuted copies of the q/k weights and the per-rank copies of
    :func:`split_meta_shards` (one full copy of the model, whatever the shard count). Returns the byte count."""
    from .weights import WeightReader, nbytes

    with WeightReader(input_dir) as r:
        sizes = {k: nbytes(r.shape(k), r.dtype(k)) for k in r.keys}
    total = sum(sizes.values())
    return 2 * total + sum(v for k, v in sizes.items() if _is_qk(k))


def guess_multiple_of(config) -> tuple[int, float | None]:
    """``(multiple_of, ffn_dim_multiplier)`` that reproduce ``intermediate_size`` with LLaMA's rule.

    Meta's own value 256 first (LLaMA-1/2 up to 13B use it; 13B would also fit 512), then the largest that fits
    (70B: 4096 with multiplier 1.3)."""
    for mult in (None, 1.3, 1.5, 2.0):
        for m in (256, 4096, 2048, 1024, 512, 128, 64, 32, 16, 8, 4, 2, 1):
            if ffn_dim(config.hidden_size, m, mult) == config.intermediate_size:
                return m, mult
    raise ConvertError(f"intermediate_size {config.intermediate_size} does not follow LLaMA's feed-forward rule "
                       f"for dim={config.hidden_size}; not a LLaMA architecture")


def meta_params(config) -> dict:
    """Meta's ``params.json`` for an HF ``LlamaConfig`` (``multiple_of``/``ffn_dim_multiplier`` recovered)."""
    multiple_of, mult = guess_multiple_of(config)
    return meta_params_from_config(config, multiple_of, mult)


def hf_to_meta(input_dir: str | Path, output_dir: str | Path, num_shards: int | None = None,
               model_size: str | None = None, overwrite: bool = False) -> Path:
    """Write an HF ``LlamaForCausalLM`` folder in Meta's layout: ``consolidated.NN.pth`` (tensor-parallel shards as
    Meta's release: 7B 1, 13B 2, 30B 4, 65B/70B 8, or ``num_shards``) + ``params.json`` (+ ``tokenizer.model``).
    Returns ``output_dir``."""
    from transformers import AutoConfig

    from .io import atomic_dir

    src = Path(input_dir)
    if not (src / "config.json").is_file():
        raise ConvertError(f"{src / 'config.json'}: not found; --input_dir must be an HF model folder")
    config = AutoConfig.from_pretrained(src, trust_remote_code=False)
    flag = f"--num_shards {num_shards}"
    if num_shards is None:
        num_shards = NUM_SHARDS.get((model_size or "").upper(), 1)
        flag = f"--model_size {model_size} ({num_shards} shards)"
    if num_shards < 1 or config.num_key_value_heads % num_shards or config.num_attention_heads % num_shards:
        raise ConvertError(f"{flag}: the shard count must divide the {config.num_key_value_heads} key/value heads "
                           f"of {src}; pass --num_shards")
    params = meta_params(config)
    check_ram(ram_needed_hf_to_meta(src, num_shards), f"--input_dir {src}: HF -> Meta conversion",
              "another --num_shards does not help (the ranks together are one copy of the model); ")
    sd = load_hf_state_dict(src)
    meta = hf_to_meta_state_dict(sd, config.num_attention_heads, config.num_key_value_heads)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        for rank, shard in enumerate(tqdm(split_meta_shards(meta, num_shards), desc="save shards",
                                          disable=num_shards < 2)):
            torch.save(shard, tmp / f"consolidated.{rank:02d}.pth")
        (tmp / "params.json").write_text(json.dumps(params), encoding="utf-8")
        if (src / "tokenizer.model").is_file():
            shutil.copyfile(src / "tokenizer.model", tmp / "tokenizer.model")
    return Path(output_dir)


# =========================================================================== Meta's forward pass (reference)
def meta_forward(sd: dict[str, torch.Tensor], params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Logits ``(batch, seq, vocab)`` of a Meta-layout state dict, written like Meta's ``model.py``.

    Independent of transformers: complex (interleaved-pair) rotary embeddings, ``repeat_kv`` for GQA, causal
    attention, SwiGLU. Used to prove that the converter's q/k permutation is right.
    """
    import torch.nn.functional as F

    dim, n_heads, eps = params["dim"], params["n_heads"], params["norm_eps"]
    n_kv = params.get("n_kv_heads") or n_heads
    hd = dim // n_heads
    bsz, seqlen = tokens.shape
    freqs = 1.0 / (params.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    freqs_cis = torch.polar(torch.ones(seqlen, hd // 2), torch.outer(torch.arange(seqlen).float(), freqs))

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rotary(x):  # (b, s, h, hd): consecutive pairs (0,1), (2,3), ... are complex numbers
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs_cis.view(1, seqlen, 1, hd // 2)).flatten(3)

    w = {k: v.float() for k, v in sd.items()}
    h = w["tok_embeddings.weight"][tokens]
    mask = torch.full((seqlen, seqlen), float("-inf")).triu(1)
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        x = norm(h, w[p + "attention_norm.weight"])
        q = rotary((x @ w[p + "attention.wq.weight"].T).view(bsz, seqlen, n_heads, hd))
        k = rotary((x @ w[p + "attention.wk.weight"].T).view(bsz, seqlen, n_kv, hd))
        v = (x @ w[p + "attention.wv.weight"].T).view(bsz, seqlen, n_kv, hd)
        k, v = (t.repeat_interleave(n_heads // n_kv, dim=2) for t in (k, v))  # Meta's repeat_kv
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        att = F.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + mask, dim=-1)
        h = h + (att @ v).transpose(1, 2).reshape(bsz, seqlen, -1) @ w[p + "attention.wo.weight"].T
        x = norm(h, w[p + "ffn_norm.weight"])
        ff = F.silu(x @ w[p + "feed_forward.w1.weight"].T) * (x @ w[p + "feed_forward.w3.weight"].T)
        h = h + ff @ w[p + "feed_forward.w2.weight"].T
    return norm(h, w["norm.weight"]) @ w["output.weight"].T


def load_meta_checkpoint(ckpt_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(merged Meta state dict, params)`` of a ``consolidated.*.pth`` folder (all shards concatenated)."""
    params = read_params(ckpt_dir)
    files = shard_files(ckpt_dir)
    sd = merge_meta_shards([_load_pth(f) for f in files], files)
    check_meta_shapes(sd, params, ckpt_dir)
    return sd, params


# =========================================================================== CLI
def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.convert`` (the flags of transformers' convert_llama_weights_to_hf)."""
    ap = argparse.ArgumentParser(prog="python -m helpers.convert",
                                 description="Meta consolidated.*.pth <-> Hugging Face LlamaForCausalLM")
    ap.add_argument("--input_dir", required=True, help="Meta: folder with tokenizer.model and <model_size>/; "
                    "--to meta: an HF model folder")
    ap.add_argument("--model_size", default=None, help="7B, 13B, 30B, 65B, 70B, ... (the sub-folder of --input_dir)")
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--to", choices=["hf", "meta"], default="hf", help="hf: Meta -> HF (default); meta: HF -> pth")
    ap.add_argument("--llama_version", type=int, choices=[1, 2], default=None,
                    help="1 or 2 (context 2048/4096); default: guessed from params.json")
    ap.add_argument("--num_shards", type=int, default=None, help="--to meta: tensor-parallel shards "
                    "(default from --model_size: 7B 1, 13B 2, 30B 4, 65B/70B 8)")
    ap.add_argument("--max_shard_size", default="2GB", help="safetensors shard size of the HF output")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    return ap


def _run(args) -> int:
    """The CLI: convert in the direction ``--to`` asks, then list the files written."""
    if args.to == "hf":
        if not args.model_size:
            raise ConvertError("--model_size is required for Meta -> HF (the sub-folder of --input_dir, e.g. 7B)")
        out = meta_to_hf(args.input_dir, args.model_size, args.output_dir, args.llama_version, args.overwrite,
                         args.max_shard_size)
    else:
        out = hf_to_meta(args.input_dir, args.output_dir, args.num_shards, args.model_size, args.overwrite)
    print(f"wrote {out}: " + ", ".join(sorted(p.name for p in Path(out).iterdir())))
    return 0


def main(argv=None) -> int:
    """``python -m helpers.convert --input_dir D --model_size 7B --output_dir O [--to hf|meta]``; returns the exit
    code (2 with a message on bad input)."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
