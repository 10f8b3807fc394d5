"""Course step 04: streaming LoRA merge, checks that teach, SHA256 verify, adapter distribution."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import merge, tiny
from helpers.core import CourseError
from helpers.merge import MergeError


@pytest.fixture(scope="module")
def base():
    return tiny.hf_model()


@pytest.fixture(scope="module")
def loras():
    return tiny.lora_adapters()


@pytest.fixture(scope="module")
def merged2(base, loras, tmp_path_factory):
    """LLaMA-LoRA then Alpaca-LoRA, HF output in several small shards."""
    out = tmp_path_factory.mktemp("m") / "hf2"
    return merge.merge_lora_into(base, [loras["llama"], loras["alpaca"]], out, max_shard_size="300KB", progress=False)


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _ids(vocab):
    return list(range(1, vocab, max(1, vocab // 40)))


def _state_dict(folder):
    from helpers.convert import load_hf_state_dict

    return load_hf_state_dict(folder)


def test_single_lora_equals_peft_wrapped(base, loras, tmp_path):
    res = merge.merge_lora_into(base, str(loras["llama"]), tmp_path / "hf1", progress=False)
    vocab = merge.load_adapter(loras["llama"]).vocab_size
    assert res.vocab_size == vocab > 1000 and res.plan.vocab_steps == [1000, vocab]
    assert (tmp_path / "hf1" / "model.safetensors").is_file()
    ref = merge.peft_reference(base, [loras["llama"]])          # PeftModel, not merged
    assert type(ref).__name__.startswith("Peft")
    a, b = merge.logits_of(_hf(res.output_dir), _ids(vocab)), merge.logits_of(ref, _ids(vocab))
    assert a.shape == b.shape == (1, len(_ids(vocab)), vocab)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the LoRA really changed the model: the plain (resized) base differs
    plain = _hf(base)
    plain.resize_token_embeddings(vocab, mean_resizing=False)
    assert (merge.logits_of(plain, _ids(1000)) - merge.logits_of(ref, _ids(1000))).abs().max() > 1e-2


def test_two_loras_equal_peft_chain_and_shards(base, loras, merged2):
    out = merged2.output_dir
    alpaca_vocab = merge.load_adapter(loras["alpaca"]).vocab_size
    assert merged2.plan.vocab_steps[-1] == alpaca_vocab == merge.load_adapter(loras["llama"]).vocab_size + 1
    index = json.loads((out / "model.safetensors.index.json").read_text(encoding="utf-8"))
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 3 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["vocab_size"] == alpaca_vocab
    from helpers.tokenizer import load_tokenizer

    assert len(load_tokenizer(out)) == alpaca_vocab  # the last LoRA's tokenizer
    ref = merge.peft_reference(base, [loras["llama"], loras["alpaca"]])  # resize, LoRA1, merge, resize, LoRA2
    torch.testing.assert_close(merge.logits_of(_hf(out), _ids(alpaca_vocab)),
                               merge.logits_of(ref, _ids(alpaca_vocab)), atol=1e-4, rtol=1e-4)
    assert merge.verify(out) == {"mismatch": [], "missing": [], "extra": []}
    assert "chinese-llama-lora" in (out / "README.md").read_text(encoding="utf-8")


def test_pth_output_is_meta_layout_of_hf_merge(base, loras, merged2, tmp_path):
    """The pth output == the HF merge (as transformers loads it) laid out by Meta's specification (meta_reference)."""
    import meta_reference

    hf_sd = _hf(merged2.output_dir).state_dict()
    for n in (None, 2):
        out = tmp_path / f"pth{n}"
        merge.merge_lora_into(base, [loras["llama"], loras["alpaca"]], out, output_type="pth", num_shards=n,
                              progress=False)
        want = meta_reference.shards(meta_reference.meta_state_dict(hf_sd, 4, 4, 2), n or 1)
        got = sorted(out.glob("consolidated.*.pth"))
        assert [p.name for p in got] == [f"consolidated.{i:02d}.pth" for i in range(n or 1)]
        for p, w in zip(got, want):
            sd = torch.load(p, map_location="cpu", weights_only=True)
            assert sd.keys() == w.keys()
            assert all(torch.equal(sd[k], w[k]) for k in sd)
        params = json.loads((out / "params.json").read_text(encoding="utf-8"))
        assert params["dim"] == 64 and params["n_layers"] == 2 and params["vocab_size"] == -1
        assert (out / "tokenizer.model").is_file() and not (out / ".staging").exists()
        assert merge.verify(out)["mismatch"] == []


def test_pth_with_odd_vocabulary_converts_back(base, loras, tmp_path):
    """The LLaMA-LoRA's odd vocabulary (like Chinese-LLaMA's 49953) in 2 pth shards: the last shard takes the extra
    output row, and helpers.convert reads the shards back to the HF merge's weights."""
    from helpers.convert import hf_to_meta_state_dict, load_meta_checkpoint

    hf = merge.merge_lora_into(base, [loras["llama"]], tmp_path / "hf", progress=False)
    assert hf.vocab_size % 2 == 1
    out = merge.merge_lora_into(base, [loras["llama"]], tmp_path / "pth", output_type="pth", num_shards=2,
                                progress=False).output_dir
    rows = [torch.load(out / f"consolidated.0{r}.pth", weights_only=True)["output.weight"].shape[0] for r in (0, 1)]
    assert rows == [hf.vocab_size // 2, hf.vocab_size // 2 + 1]
    sd, _ = load_meta_checkpoint(out)
    want = hf_to_meta_state_dict(_state_dict(hf.output_dir), 4, 4)
    assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in sd)


def test_sharded_bin_base_gives_same_weights(base, loras, merged2, tmp_path):
    # the old HF layout: pytorch_model-0000N-of-0000M.bin + pytorch_model.bin.index.json
    sd = _state_dict(base)
    keys = list(sd)
    binbase = tmp_path / "bin_base"
    binbase.mkdir()
    parts = [keys[:7], keys[7:14], keys[14:]]
    weight_map = {}
    for i, part in enumerate(parts):
        name = f"pytorch_model-{i + 1:05d}-of-00003.bin"
        torch.save({k: sd[k] for k in part}, binbase / name)
        weight_map.update({k: name for k in part})
    (binbase / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}), encoding="utf-8")
    for f in ("config.json", "tokenizer.model"):
        shutil.copyfile(base / f, binbase / f)
    res = merge.merge_lora_into(binbase, [loras["llama"], loras["alpaca"]], tmp_path / "o", progress=False)
    a, b = _state_dict(res.output_dir), _state_dict(merged2.output_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_safetensors_base_gives_same_weights(base, loras, merged2, tmp_path):
    resharded = tmp_path / "st_base"
    _hf(base).save_pretrained(resharded, max_shard_size="100KB")
    shutil.copyfile(base / "tokenizer.model", resharded / "tokenizer.model")
    assert len(list(resharded.glob("model-*.safetensors"))) > 2
    res = merge.merge_lora_into(resharded, [loras["llama"], loras["alpaca"]], tmp_path / "o", progress=False)
    a, b = _state_dict(res.output_dir), _state_dict(merged2.output_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_merge_existing_folder_and_verify(base, loras, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--base_model", str(base), "--lora_model", f"{loras['llama']},{loras['alpaca']}",
            "--output_type", "huggingface", "--output_dir", str(out), "--quiet"]
    assert merge.main(args) == 0 and (out / "SHA256SUMS").is_file()
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert merge.main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "model.safetensors").stat().st_mtime_ns == before  # untouched
    assert merge.main(args + ["--overwrite"]) == 0
    assert merge.main(["verify", str(out)]) == 0
    # corrupt one byte of the weights, delete the tokenizer: verify names both
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    (out / "tokenizer.model").unlink()
    capsys.readouterr()
    assert merge.main(["verify", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: differs" in err and "tokenizer.model: is missing" in err
    # an external manifest (as published with a download) works too
    ext = tmp_path / "SUMS"
    shutil.copyfile(out / "SHA256SUMS", ext)
    with pytest.raises(MergeError, match="model.safetensors"):
        merge.verify(out, ext)


def _embed_rows(adapter) -> int:
    """Rows of the embedding an adapter trains (modules_to_save), read with the safetensors library."""
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        key = next(k for k in f.keys() if "embed_tokens.modules_to_save" in k)
        return f.get_slice(key).get_shape()[0]


def test_wrong_order_explains(base, loras, tmp_path):
    llama, alpaca = _embed_rows(loras["llama"]), _embed_rows(loras["alpaca"])
    assert alpaca == llama + 1  # like Chinese-LLaMA 49953 -> Chinese-Alpaca 49954 ([PAD])
    with pytest.raises(MergeError) as e:
        merge.merge_lora_into(base, [loras["alpaca"], loras["llama"]], tmp_path / "x", progress=False)
    msg = str(e.value)
    assert f"chinese-llama-lora (vocabulary {llama}) comes after chinese-alpaca-lora (vocabulary {alpaca})" in msg
    assert f"would shrink from {alpaca} to {llama}" in msg
    assert msg.rstrip().endswith(f"{loras['llama']},{loras['alpaca']}")  # the fix, spelled out
    assert not (tmp_path / "x").exists()


def test_tokenizer_adapter_vocab_mismatch(base, loras, tmp_path):
    bad = tmp_path / "alpaca-with-llama-tokenizer"
    shutil.copytree(loras["alpaca"], bad)
    for f in loras["llama"].iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copyfile(f, bad / f.name)
    from helpers.tokenizer import load_tokenizer

    tokens, rows = len(load_tokenizer(loras["llama"])), _embed_rows(loras["alpaca"])
    assert tokens != rows
    with pytest.raises(MergeError) as e:
        merge.merge_lora_into(base, [loras["llama"], bad], tmp_path / "x", progress=False)
    assert f"its tokenizer has {tokens} tokens but its embed_tokens has {rows} rows" in str(e.value)
    assert "tokenizer it was trained with" in str(e.value)


def test_adapter_for_another_base_names_tensor_and_shapes(loras, tmp_path):
    gqa = tiny.hf_model(gqa=True)  # LLaMA-2 style: 2 kv heads, k_proj/v_proj are (32, 64)
    with pytest.raises(MergeError) as e:
        merge.merge_lora_into(gqa, [loras["llama"]], tmp_path / "x", progress=False)
    msg = str(e.value)
    assert "self_attn.k_proj.weight" in msg and "(64, 64)" in msg and "(32, 64)" in msg and "another base" in msg


def test_alpaca_without_llama_is_caught_by_stored_base(base, loras, tmp_path):
    with pytest.raises(MergeError, match="trained on"):
        merge.merge_lora_into(base, [loras["alpaca"]], tmp_path / "x", progress=False)
    res = merge.merge_lora_into(base, [loras["alpaca"]], tmp_path / "y", check_base=False, progress=False)
    assert res.vocab_size == merge.load_adapter(loras["alpaca"]).vocab_size


def test_truncated_files(base, loras, tmp_path):
    bad_base = tmp_path / "base"
    shutil.copytree(base, bad_base)
    w = bad_base / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CourseError, match="model.safetensors.*truncated or corrupt"):
        merge.merge_lora_into(bad_base, [loras["llama"]], tmp_path / "x", progress=False)
    bad_lora = tmp_path / "lora"
    shutil.copytree(loras["llama"], bad_lora)
    a = bad_lora / "adapter_model.safetensors"
    a.write_bytes(a.read_bytes()[:1000])
    with pytest.raises(CourseError, match="adapter_model.safetensors.*truncated or corrupt"):
        merge.merge_lora_into(base, [bad_lora], tmp_path / "x", progress=False)
    assert merge.main(["--base_model", str(bad_base), "--lora_model", str(loras["llama"]),
                       "--output_dir", str(tmp_path / "x"), "--quiet"]) == 2


def test_atomic_output_on_failure(base, loras, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = merge.merged_tensor

    def flaky(plan, key, w):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full (simulated)")
        return real(plan, key, w)

    monkeypatch.setattr(merge, "merged_tensor", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        merge.merge_lora_into(base, [loras["llama"]], tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary folder is left


def test_scaling_rslora_patterns_equal_peft(base, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    cfg = LoraConfig(r=8, lora_alpha=16, use_rslora=True, rank_pattern={"q_proj": 4}, alpha_pattern={"v_proj": 3},
                     target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    pm = get_peft_model(_hf(base), cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    pm.save_pretrained(tmp_path / "rs")
    ad = merge.load_adapter(tmp_path / "rs")
    assert ad.scaling("model.layers.0.self_attn.q_proj.weight") == pytest.approx(16 / 2)
    assert ad.scaling("model.layers.0.self_attn.v_proj.weight") == pytest.approx(3 / 8 ** 0.5)
    res = merge.merge_lora_into(base, [tmp_path / "rs"], tmp_path / "out", progress=False)
    ref = PeftModel.from_pretrained(_hf(base), str(tmp_path / "rs")).eval()
    torch.testing.assert_close(merge.logits_of(_hf(res.output_dir), _ids(1000)), merge.logits_of(ref, _ids(1000)),
                               atol=1e-4, rtol=1e-4)
    ad.config["fan_in_fan_out"] = True  # GPT-2 Conv1D layout: the delta is transposed
    key = "model.layers.0.mlp.down_proj.weight"
    a, b = ad.lora[key]
    acc = torch.zeros(a.shape[1], b.shape[0])  # the transposed layout's shape
    ad.add_delta_(acc, key)                    # what merged_tensor does
    torch.testing.assert_close(acc, (b.float() @ a.float()).T * ad.scaling(key))


def test_adapter_package_vs_merged(base, loras, merged2, tmp_path):
    pkg = merge.package_adapter(loras["alpaca"], tmp_path / "pkg", base_name="tiny-llama")
    names = {p.name for p in pkg.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.model", "README.md", "SHA256SUMS"} <= names
    card = (pkg / "README.md").read_text(encoding="utf-8")
    assert "base_model: tiny-llama" in card and "PeftModel.from_pretrained" in card and "resize_token_embeddings" in card
    assert merge.verify(pkg)["mismatch"] == []
    assert merge.folder_size(pkg) > 0 and merge.folder_size(merged2.output_dir) > 0


def test_several_adapters_on_one_base(base, tmp_path):
    from peft import PeftModel

    task = merge.make_task_adapters(base, tmp_path / "ad")
    model = PeftModel.from_pretrained(_hf(base), str(task["poem"]), adapter_name="poem")
    model.load_adapter(str(task["qa"]), adapter_name="qa")
    model.eval()
    ids = _ids(1000)
    out = {}
    for name in ("poem", "qa"):
        model.set_adapter(name)
        out[name] = merge.logits_of(model, ids)
        res = merge.merge_lora_into(base, [task[name]], tmp_path / f"m_{name}", progress=False)
        torch.testing.assert_close(out[name], merge.logits_of(_hf(res.output_dir), ids), atol=1e-4, rtol=1e-4)
    assert (out["poem"] - out["qa"]).abs().max() > 1e-2
    # weighted combination: "cat" with weights 1,1 stacks both deltas == merging poem then qa
    model.add_weighted_adapter(["poem", "qa"], [1.0, 1.0], "both", combination_type="cat")
    model.set_adapter("both")
    both = merge.merge_lora_into(base, [task["poem"], task["qa"]], tmp_path / "m_both", progress=False)
    torch.testing.assert_close(merge.logits_of(model, ids), merge.logits_of(_hf(both.output_dir), ids),
                               atol=1e-4, rtol=1e-4)
    model.add_weighted_adapter(["poem", "qa"], [0.5, 0.5], "mix", combination_type="cat")
    model.set_adapter("mix")
    half = merge.logits_of(model, ids)
    assert all((half - out[n]).abs().max() > 1e-3 for n in ("poem", "qa"))


def test_tokenizer_length_matches_transformers(loras, base):
    from helpers.tokenizer import load_tokenizer

    for folder in (loras["llama"], loras["alpaca"], base):
        assert merge.tokenizer_length(folder) == len(load_tokenizer(folder))


def test_parse_size():
    assert merge.parse_size("2GB") == 2 * 10**9 and merge.parse_size("1GiB") == 2**30
    assert merge.parse_size("500MB") == 5 * 10**8 and merge.parse_size(123) == 123
    with pytest.raises(MergeError, match="--max_shard_size"):
        merge.parse_size("two gigs")


def test_library_signatures_used_by_merge():
    """Drift guard: the PEFT/transformers arguments this step (and its notebook) relies on still exist."""
    import inspect

    from peft import LoraConfig, PeftModel
    from peft.tuners.lora import LoraModel
    from transformers import PreTrainedModel

    fields = LoraConfig.__dataclass_fields__
    for name in ("r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "fan_in_fan_out",
                 "modules_to_save", "use_dora", "lora_bias"):
        assert name in fields, name
    assert {"combination_type"} <= set(inspect.signature(LoraModel.add_weighted_adapter).parameters)
    assert {"adapter_name"} <= set(inspect.signature(PeftModel.load_adapter).parameters)
    assert {"adapter_name"} <= set(inspect.signature(PeftModel.from_pretrained).parameters)
    assert {"mean_resizing"} <= set(inspect.signature(PreTrainedModel.resize_token_embeddings).parameters)
    assert {"max_shard_size"} <= set(inspect.signature(PreTrainedModel.save_pretrained).parameters)


def test_no_file_left_open(base, loras, tmp_path, monkeypatch):
    """Every base shard, output file and memory map is closed: after success (huggingface, pth) and after a failure."""
    import gc
    import sys
    import warnings

    leaked = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: leaked.append(str(u.exc_value)))
    real = merge.merged_tensor

    def flaky(plan, key, w):
        if key.endswith("layers.1.mlp.up_proj.weight"):
            raise RuntimeError("disk full (simulated)")
        return real(plan, key, w)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        merge.merge_lora_into(base, [loras["llama"]], tmp_path / "hf", max_shard_size="300KB", progress=False)
        merge.merge_lora_into(base, [loras["llama"]], tmp_path / "pth", output_type="pth", num_shards=2,
                              progress=False)
        monkeypatch.setattr(merge, "merged_tensor", flaky)
        for kind in ("huggingface", "pth"):
            with pytest.raises(RuntimeError, match="simulated"):
                merge.merge_lora_into(base, [loras["llama"]], tmp_path / f"bad-{kind}", output_type=kind,
                                      progress=False)
        gc.collect()
    assert leaked == []


def test_bad_shard_flags_are_course_errors(base, loras, tmp_path):
    for n in (0, 3):  # tiny: 4 attention heads
        with pytest.raises(MergeError, match=f"--num_shards {n}: the shard count must divide"):
            merge.merge_lora_into(base, [loras["llama"]], tmp_path / "x", output_type="pth", num_shards=n,
                                  progress=False)
    for bad in ("1.5.3GB", "GB", "-1MB"):
        with pytest.raises(MergeError, match="--max_shard_size"):
            merge.parse_size(bad)
    assert merge.parse_size("1.5KB") == 1500 and merge.parse_size(".5 MiB") == 2**19
    assert not (tmp_path / "x").exists()


def test_pth_params_for_70b_style_config():
    """A merged Llama-2-70B-shaped config gets Meta's params.json (multiple_of 4096, ffn_dim_multiplier 1.3)."""
    cfg = {"hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8,
           "num_hidden_layers": 80, "rms_norm_eps": 1e-5}
    params = merge.meta_params(cfg)
    assert (params["multiple_of"], params["ffn_dim_multiplier"], params["n_kv_heads"]) == (4096, 1.3, 8)
    with pytest.raises(MergeError, match="--output_type huggingface"):
        merge.meta_params(dict(cfg, intermediate_size=12345))


def test_any_modules_to_save_tensor_replaces_the_base(base, tmp_path):
    """modules_to_save beyond embed_tokens/lm_head (here every *norm, as PEFT matches by suffix): the merged model
    equals PEFT's own model (the streaming merge used to crash on them, and before that kept the base norm)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    model = get_peft_model(_hf(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 modules_to_save=["norm"]))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "norm-lora")
    res = merge.merge_lora_into(base, tmp_path / "norm-lora", tmp_path / "merged", progress=False)
    assert "model.norm.weight" in res.plan.adapters[0].replace
    ref = merge.peft_reference(base, [tmp_path / "norm-lora"])
    torch.testing.assert_close(merge.logits_of(_hf(res.output_dir), _ids(1000)), merge.logits_of(ref, _ids(1000)),
                               atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- published SHA256 manifests
SEEDS = Path("/work/shared/seeds")
HASH_A, HASH_B = "a" * 64, "0123456789abcdef" * 4


def test_manifest_parser_on_hand_written_files(tmp_path):
    text = (f"# Chinese-LLaMA-Plus-7B, merged pth (comment lines are skipped, as GNU sha256sum does)\n\n"
            f"{HASH_A.upper()}  consolidated.00.pth\n{HASH_B} *sub dir/params.json\n")
    (tmp_path / "sums").write_text(text, encoding="utf-8")
    assert merge.read_manifest_file(tmp_path / "sums") == {"consolidated.00.pth": HASH_A, "sub dir/params.json": HASH_B}
    (tmp_path / "bad").write_text(f"{HASH_A}  ok.bin\n{HASH_A[:-1]}  short.bin\n", encoding="utf-8")
    with pytest.raises(MergeError, match=r"bad: line 2 "):
        merge.read_manifest_file(tmp_path / "bad")
    table = {"source": "hand-written", "entries": [
        {"id": "merged/X-7B", "model": "X-7B", "files": {"consolidated.00.pth": HASH_A}},
        {"id": "lora/X-7B", "model": "X-7B LoRA", "files": {"adapter_model.bin": HASH_B}}]}
    (tmp_path / "t.json").write_text(json.dumps(table), encoding="utf-8")
    assert merge.read_manifest_file(tmp_path / "t.json", "lora/X-7B") == {"adapter_model.bin": HASH_B}
    assert merge.read_manifest_file(tmp_path / "t.json", "X-7B") == {"consolidated.00.pth": HASH_A}
    with pytest.raises(MergeError, match="--model.*merged/X-7B, lora/X-7B"):
        merge.read_manifest_file(tmp_path / "t.json")  # two entries: the flag is needed, the choices are listed
    table["entries"][1]["files"]["adapter_model.bin"] = "not-a-hash"
    (tmp_path / "t.json").write_text(json.dumps(table), encoding="utf-8")
    with pytest.raises(MergeError, match=r"entries\[1\] \(lora/X-7B\) file adapter_model.bin"):
        merge.read_manifest_file(tmp_path / "t.json", "X-7B")


def test_verify_against_an_external_manifest(tmp_path, capsys):
    import hashlib

    folder = tmp_path / "model"
    folder.mkdir()
    files = {"consolidated.00.pth": b"weights" * 1000, "params.json": b'{"dim": 64}', "tokenizer.model": b"sp"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    sums = tmp_path / "published.sha256"  # only two files published: the third is "extra", not an error
    sums.write_text("# hand-written\n" + "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n"
                                                 for n in ("consolidated.00.pth", "params.json")), encoding="utf-8")
    assert merge.verify(folder, sums) == {"mismatch": [], "missing": [], "extra": ["tokenizer.model"]}
    assert merge.main(["verify", "--manifest", str(sums), str(folder)]) == 0
    (folder / "consolidated.00.pth").write_bytes(b"weightz" + files["consolidated.00.pth"][7:])
    (folder / "params.json").unlink()
    capsys.readouterr()
    assert merge.main(["verify", str(folder), "--manifest", str(sums)]) == 2
    err = capsys.readouterr().err
    assert "consolidated.00.pth: differs" in err and "params.json: is missing" in err and "Traceback" not in err
    assert "same bytes" in err  # a published list: the message says what such a hash can and cannot tell


def test_published_table_parses_and_holds_the_seed_values():
    entries = merge.published_entries()
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids)) and len(entries) >= 30
    for e in entries:  # Meta's layout: consolidated.00 .. NN without gaps
        names = sorted(e["files"])
        if e["format"] == "pth":
            assert names == [f"consolidated.{i:02d}.pth" for i in range(len(names))], e["id"]
    # hand-copied from seed 002 (第7步 合并后检查) and from SHA256.md of ymcui/Chinese-LLaMA-Alpaca@090475f
    assert merge.read_manifest_file(merge.PUBLISHED_V1, "merged/Chinese-LLaMA-Plus-7B") == {
        "consolidated.00.pth": "f8d380d63f77a08b7f447f5ec63f0bb1cde9ddeae2207e9f86e6b5f0f95a7955"}
    assert len(merge.read_manifest_file(merge.PUBLISHED_V1, "merged/Chinese-Alpaca-Plus-13B")) == 2
    assert merge.read_manifest_file(merge.PUBLISHED_V1, "lora/Chinese-Alpaca-Plus-7B")["adapter_model.bin"] \
        .startswith("4ee0bf805c31")


def test_published_table_rows_equal_the_seed():
    import re

    seed_text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(SEEDS.glob("*.txt"))) if SEEDS.is_dir() else ""
    if not seed_text:
        pytest.skip("the seed documents (/work/shared/seeds) are not on this machine")
    # seed 002 writes "<model> 的 SHA256 :" then the hash on a later line
    found = re.findall(r"(Chinese-[A-Za-z-]+-\d+B) 的 SHA256[^`]*`([0-9a-f]{64})`", seed_text)
    assert found, "the seed no longer lists a SHA256 value"
    by_model = {e["model"]: e for e in merge.published_entries() if e["kind"] == "merged"}
    for model, digest in found:
        assert by_model[model]["files"]["consolidated.00.pth"] == digest
        assert by_model[model].get("seed")


# --------------------------------------------------------------------------- RAM check and the vocabulary warning
def _lora_bytes(adapter) -> int:
    """Bytes of the lora_A/lora_B matrices of an adapter file, read with the safetensors library."""
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        return sum(f.get_tensor(k).numel() * 4 for k in f.keys() if ".lora_A." in k or ".lora_B." in k)


def test_ram_needed_hand_worked_on_the_tiny_merge(base, loras):
    """The tiny model (float32, hidden 64, intermediate 172): both LoRAs replace embed_tokens/lm_head, the last one
    with 3978 rows. Peak = the LoRA matrices + either the two embeddings the base check compares (2 x 3978 x 64 x 4)
    or, without the check, the larger of one replaced embedding held once (3978 x 64 x 4) and the largest LoRA
    target in base + float32 accumulator + result (172 x 64 x 12)."""
    plan = merge.plan_merge(base, [loras["llama"], loras["alpaca"]])
    lora = _lora_bytes(loras["llama"]) + _lora_bytes(loras["alpaca"])
    assert plan.vocab_steps[-1] == 3978
    assert merge.ram_needed(plan) == lora + 2 * 3978 * 64 * 4
    assert merge.ram_needed(plan, check_base=False) == lora + max(3978 * 64 * 4, 172 * 64 * 12)


def fake_ram(monkeypatch, available, swap=0):
    import psutil
    from types import SimpleNamespace

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))
    monkeypatch.setattr(psutil, "swap_memory", lambda: SimpleNamespace(free=swap))
    monkeypatch.delenv("COURSE_SKIP_RAM_CHECK", raising=False)


def test_merge_refuses_to_start_without_the_ram_it_needs(base, loras, tmp_path, monkeypatch, capsys):
    lora = _lora_bytes(loras["llama"]) + _lora_bytes(loras["alpaca"])
    need = lora + 2 * 3978 * 64 * 4
    fake_ram(monkeypatch, need - 1000, swap=500)
    with pytest.raises(CourseError, match=r"merge of .* would hold ~0\.0 GiB in RAM .*more RAM.*swap"):
        merge.merge_lora_into(base, [loras["llama"], loras["alpaca"]], tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    args = ["--base_model", str(base), "--lora_model", f"{loras['llama']},{loras['alpaca']}",
            "--output_dir", str(tmp_path / "x"), "--quiet"]
    assert merge.main(args) == 2
    assert "Killed" in capsys.readouterr().err and not (tmp_path / "x").exists()
    fake_ram(monkeypatch, need - 500, swap=500)  # RAM + swap = the need: it runs
    assert merge.merge_lora_into(base, [loras["llama"]], tmp_path / "y", progress=False).vocab_size == 3977


def test_vocabulary_growth_without_modules_to_save_says_how_to_retrain(base, loras, tmp_path):
    """An adapter whose tokenizer is larger than the base but which saves no embed_tokens/lm_head (built here by
    stripping them from the tiny LLaMA-LoRA): the warning names the flag of helpers.train that fixes it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from helpers.train import LoraArguments

    bare = tmp_path / "no-modules-to-save"
    shutil.copytree(loras["llama"], bare)
    with safe_open(str(bare / "adapter_model.safetensors"), framework="pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if ".lora_" in k}
    save_file(kept, str(bare / "adapter_model.safetensors"))
    config = json.loads((bare / "adapter_config.json").read_text(encoding="utf-8"))
    (bare / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": None}), encoding="utf-8")
    with pytest.warns(UserWarning) as record:
        plan = merge.plan_merge(base, [bare])
    msg = str(record[0].message)
    assert "grows 1000 -> 3977" in msg
    assert "--modules_to_save embed_tokens,lm_head" in msg and "python -m helpers.train" in msg
    assert "modules_to_save" in LoraArguments.__dataclass_fields__  # the flag the message names exists
    assert LoraArguments().modules_to_save == "embed_tokens,lm_head"
    # the resized embedding and lm_head: base rows + float32 copy for the mean + the grown tensor (12 bytes/value)
    assert merge.ram_needed(plan) == _lora_bytes(bare) + 3977 * 64 * 12
