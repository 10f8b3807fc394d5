"""helpers.weights: the one reader/writer of weight folders, HF <-> Meta names and q/k rows, rope parameters, token
types -- each checked against another library or the format's specification, never against itself."""
import gc
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import meta_reference
from helpers import weights as W
from helpers.core import CourseError


def _tiny_llama(tmp_path: Path, **save) -> tuple[Path, dict]:
    """A transformers LlamaForCausalLM (GQA) saved by transformers itself; returns (folder, its state dict)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path, **save)
    return tmp_path, {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- token types
def test_token_types_are_sentencepiece_and_gguf_ids():
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    assert {t.name: t.value for t in W.TokenType} == {t.name: t.value for t in gguf.TokenType}
    assert {t.name: t.value for t in W.TokenType} == dict(sp_pb2.ModelProto.SentencePiece.Type.items())
    assert (W.TokenType.NORMAL, W.TokenType.CONTROL, W.TokenType.BYTE) == (1, 3, 6)  # sentencepiece_model.proto


# --------------------------------------------------------------------------- names and q/k rows
def test_names_follow_meta_and_transformers():
    """Every weight of a transformers LlamaForCausalLM has Meta's llama/model.py name, and back."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2)
    hf_names = set(LlamaForCausalLM(cfg).state_dict())
    want = {f"{h}.weight": f"{m}.weight" for m, h in meta_reference.GLOBAL_NAMES.items()}
    want.update({f"model.layers.{i}.{h}.weight": f"layers.{i}.{m}.weight"
                 for i in range(2) for m, h in meta_reference.LAYER_NAMES.items()})
    assert hf_names == set(want)
    assert {h: W.meta_key(h) for h in hf_names} == want
    assert {W.hf_key(m): m for m in want.values()} == {h: m for h, m in want.items()}
    assert dict(W.name_pairs(2)) == {m: h for h, m in want.items()}
    for bad in ("model.layers.0.self_attn.rotary_emb.inv_freq", "lm_head.bias"):
        with pytest.raises(CourseError, match="no Meta"):
            W.meta_key(bad)
    with pytest.raises(CourseError, match="not a weight"):
        W.hf_key("layers.0.attention.wz.weight")


def test_permutation_matches_the_rotary_layouts():
    """Rotating Meta's rows as pairs (Meta's complex form) == rotating the permuted rows with transformers'
    rotate_half: the permutation is exactly what the two rope implementations need."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    n_heads, d, dim, seq = 3, 8, 12, 5
    torch.manual_seed(1)
    wq_meta, x = torch.randn(n_heads * d, dim), torch.randn(seq, dim)
    wq_hf = W.permute_meta_to_hf(wq_meta, n_heads)
    assert torch.equal(wq_hf, meta_reference_half_split(wq_meta, n_heads))
    assert torch.equal(W.permute_hf_to_meta(wq_hf, n_heads), wq_meta)
    assert torch.equal(meta_reference.interleave_rows(wq_hf, n_heads), wq_meta)
    freqs = 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d)
    angles = torch.outer(torch.arange(seq).float(), freqs)  # (seq, d/2)
    q_meta = (x @ wq_meta.T).view(seq, n_heads, d // 2, 2)
    rotated = torch.view_as_real(torch.view_as_complex(q_meta.contiguous()) * torch.polar(torch.ones_like(angles),
                                                                                          angles)[:, None])
    meta_out = rotated.reshape(seq, n_heads, d)
    emb = torch.cat([angles, angles], -1)
    q_hf = (x @ wq_hf.T).view(1, seq, n_heads, d).transpose(1, 2)
    hf_out, _ = apply_rotary_pos_emb(q_hf, q_hf, emb.cos()[None], emb.sin()[None])
    # the same vectors, the HF one in half-split order
    torch.testing.assert_close(hf_out[0].transpose(0, 1), meta_reference_half_split_vec(meta_out), atol=1e-5, rtol=1e-5)


def meta_reference_half_split(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta (pairs) rows -> HF rows by the specification: per head, even rows then odd rows."""
    d = w.shape[0] // n_heads
    return torch.cat([torch.cat([w[h * d:(h + 1) * d:2], w[h * d + 1:(h + 1) * d:2]]) for h in range(n_heads)])


def meta_reference_half_split_vec(v: torch.Tensor) -> torch.Tensor:
    """The same reordering on the last dimension of per-head vectors."""
    return torch.cat([v[..., 0::2], v[..., 1::2]], -1)


def test_tensor_pair_permutes_q_with_heads_and_k_with_kv_heads():
    torch.manual_seed(2)
    q, k, v = torch.randn(16, 8), torch.randn(8, 8), torch.randn(8, 8)
    name, got = W.hf_to_meta_tensor("model.layers.1.self_attn.q_proj.weight", q, 4, 2)
    assert name == "layers.1.attention.wq.weight" and torch.equal(got, meta_reference.interleave_rows(q, 4))
    name, got = W.hf_to_meta_tensor("model.layers.1.self_attn.k_proj.weight", k, 4, 2)
    assert name == "layers.1.attention.wk.weight" and torch.equal(got, meta_reference.interleave_rows(k, 2))
    assert W.hf_to_meta_tensor("model.layers.1.self_attn.v_proj.weight", v, 4, 2)[1] is v
    back = W.meta_to_hf_tensor("layers.1.attention.wk.weight", meta_reference.interleave_rows(k, 2), 4, 2)
    assert back[0] == "model.layers.1.self_attn.k_proj.weight" and torch.equal(back[1], k)


# --------------------------------------------------------------------------- rope
@pytest.mark.parametrize("config,want", [
    ({}, W.RopeParameters(10000.0, None, 1.0, None)),
    ({"rope_theta": 500000.0}, W.RopeParameters(500000.0, None, 1.0, None)),  # Llama-3 style config.json
    ({"rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 4.0}},  # hfl 16K models' config.json
     W.RopeParameters(10000.0, "linear", 4.0, None)),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}, W.RopeParameters(1e6, None, 1.0, None)),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                          "original_max_position_embeddings": 4096}}, W.RopeParameters(10000.0, "yarn", 4.0, 4096)),
])
def test_rope_parameters_of_config_json(config, want):
    assert W.rope_parameters(config) == want


def test_rope_parameters_of_transformers_configs_and_the_catalog():
    from transformers import LlamaConfig

    from helpers import catalog

    assert W.rope_parameters(LlamaConfig(rope_scaling={"type": "linear", "factor": 2.0})) == \
        W.RopeParameters(10000.0, "linear", 2.0, None)
    assert W.rope_parameters(LlamaConfig(rope_theta=123.0)).theta == 123.0
    assert W.rope_parameters(catalog.get("hfl/chinese-alpaca-2-7b-16k").config).factor == 4.0
    assert W.rope_parameters(catalog.get("hfl/chinese-alpaca-2-7b").config).scaling is None
    assert W.kv_heads({"num_attention_heads": 8}) == 8 and W.kv_heads(LlamaConfig(num_key_value_heads=2)) == 2


# --------------------------------------------------------------------------- reading folders
@pytest.mark.parametrize("save", [dict(), dict(max_shard_size="20KB")])
def test_reader_reads_what_transformers_saved(tmp_path, save):
    folder, want = _tiny_llama(tmp_path, **save)
    if save:
        assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("model-*"))) > 2
    with W.WeightReader(folder) as r:
        assert set(r.keys) == set(want)
        assert all(r.shape(k) == tuple(want[k].shape) and r.dtype(k) == want[k].dtype for k in want)
        got = dict(r.items())
    assert all(torch.equal(got[k], want[k]) for k in want)
    # file order: every file's tensors together, in the order of their data in the file
    for f in {r.info[k].file for k in r.keys}:
        with safe_open(str(f), "pt") as h:
            assert [k for k in r.keys if r.info[k].file == f] == list(h.offset_keys())


def test_reader_reads_sharded_bin_and_adapters(tmp_path):
    folder, want = _tiny_llama(tmp_path / "st")
    binf = tmp_path / "bin"
    binf.mkdir()
    keys = sorted(want)
    parts = {"pytorch_model-00001-of-00002.bin": keys[:9], "pytorch_model-00002-of-00002.bin": keys[9:]}
    for name, ks in parts.items():
        torch.save({k: want[k] for k in ks}, binf / name)
    (binf / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {k: n for n, ks in parts.items() for k in ks}}), encoding="utf-8")
    sd = W.load_hf_state_dict(binf)
    assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in want)
    ad = tmp_path / "adapter"
    ad.mkdir()
    save_file({"base_model.model.lm_head.modules_to_save.weight": torch.ones(7, 3)}, ad / "adapter_model.safetensors")
    with W.WeightReader(ad, "--lora_model", adapter=True) as r:
        assert r.keys == ["base_model.model.lm_head.modules_to_save.weight"] and r.shape(r.keys[0]) == (7, 3)
    with pytest.raises(CourseError, match="--peft_path .*: no adapter_model.safetensors or adapter_model.bin"):
        W.WeightReader(tmp_path, "--peft_path", adapter=True)
    with pytest.raises(CourseError, match="--base_model .*: no model.safetensors"):
        W.WeightReader(ad)


def test_reader_errors_name_the_file(tmp_path):
    folder, _ = _tiny_llama(tmp_path / "m")
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size - 100])
    with pytest.raises(CourseError, match=r"model.safetensors: cannot read it .*truncated or corrupt"):
        W.WeightReader(folder)
    pkl = tmp_path / "p" / "pytorch_model.bin"
    pkl.parent.mkdir()
    torch.save({"x": math.sqrt}, pkl)  # a function reference: refused by the safe unpickler
    with pytest.raises(CourseError, match=r"pytorch_model.bin: cannot be read as a PyTorch checkpoint"):
        W.WeightReader(pkl.parent)
    (tmp_path / "i").mkdir()
    (tmp_path / "i" / "model.safetensors.index.json").write_text('{"weight_map": {"a": "gone.safetensors"}}')
    with pytest.raises(CourseError, match=r"lists \['gone.safetensors'\] but they are missing"):
        W.WeightReader(tmp_path / "i")


def _mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


def test_reader_keeps_no_file_open_and_only_the_tensor_in_hand_mapped(tmp_path):
    folder, want = _tiny_llama(tmp_path)
    f = folder / "model.safetensors"
    fds = lambda: sorted(p.resolve() for p in Path("/proc/self/fd").iterdir() if p.exists())  # noqa: E731
    with W.WeightReader(folder) as r:
        t = r.get("lm_head.weight")
        assert torch.equal(t, want["lm_head.weight"])
        assert f not in fds()            # the handle is closed after each tensor ...
        assert _mapped(f)                # ... the tensor in hand is a view of the mapped file ...
        del t
        gc.collect()
        assert not _mapped(f)            # ... and nothing stays mapped once it is gone
    # no descriptor left on the folder's files (other descriptors of this process come and go with other tests)
    assert not [p for p in fds() if folder.resolve() in p.parents]


# --------------------------------------------------------------------------- writing
def test_streaming_writer_is_read_by_safetensors(tmp_path):
    tensors = {"b": torch.randn(3, 4, dtype=torch.bfloat16), "a": torch.arange(6, dtype=torch.int64).view(2, 3),
               "empty": torch.zeros(0, 5), "h": torch.randn(7, dtype=torch.float16)}
    path = tmp_path / "x.safetensors"
    with W.StreamingSafetensorsWriter(path, [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()],
                                      {"format": "pt"}) as w:
        for k, v in tensors.items():
            w.write(k, v)
    got = load_file(str(path))
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in tensors)
    with safe_open(str(path), "pt") as h:
        assert h.metadata() == {"format": "pt"}
    assert all(torch.equal(v, tensors[k]) for k, v in W.mapped_tensors(path, list(tensors)).items())
    with pytest.raises(RuntimeError, match="only 1 of 2 tensors written"):
        with W.StreamingSafetensorsWriter(tmp_path / "y.safetensors", [("a", (1,), torch.float32),
                                                                       ("b", (1,), torch.float32)]) as w:
            w.write("a", torch.zeros(1))
    with pytest.raises(RuntimeError, match="expected a"):
        with W.StreamingSafetensorsWriter(tmp_path / "z.safetensors", [("a", (1,), torch.float32)]) as w:
            w.write("b", torch.zeros(1))
    with pytest.raises(CourseError, match="cannot be written to safetensors"):
        W.safetensors_dtype(torch.complex64)
    assert W.nbytes((3, 4), torch.bfloat16) == 24 and W.torch_dtype("BF16") == torch.bfloat16
