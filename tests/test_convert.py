"""Meta consolidated.*.pth <-> HF conversion: logits against an independent Meta-layout forward pass, round trips,
and the errors a student meets (missing params.json, shard count, shapes, truncated files, existing output)."""
import json
import shutil

import pytest
import torch

import meta_reference
from helpers import convert, tiny
from helpers.core import CourseError

CASES = [(1, False, "tiny"), (2, False, "tiny-tp2"), (2, True, "tiny-gqa-tp2")]


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each tiny Meta checkpoint (1 shard MHA, 2 shards MHA, 2 shards GQA) converted to HF once."""
    out = {}
    for shards, gqa, size in CASES:
        root = tiny.meta_checkpoint(shards, gqa)
        out[size] = (root, convert.meta_to_hf(root, size, tmp_path_factory.mktemp("hf") / size))
    return out


def _hf_weights(gqa: bool) -> tuple[dict, dict]:
    """``(state dict, config.json)`` of the tiny HF model, read with the safetensors library."""
    from safetensors.torch import load_file

    src = tiny.hf_model(gqa=gqa)
    return load_file(str(src / "model.safetensors")), json.loads((src / "config.json").read_text(encoding="utf-8"))


def _spec_checkpoint(root, gqa: bool, n: int) -> dict:
    """A Meta download (``root/tokenizer.model``, ``root/spec/consolidated.0N.pth``, ``params.json``) built in the
    test from Meta's specification (tests/meta_reference.py), not by helpers; returns the HF weights it holds."""
    sd, cfg = _hf_weights(gqa)
    ref = meta_reference.meta_state_dict(sd, cfg["num_attention_heads"], cfg["num_key_value_heads"],
                                         cfg["num_hidden_layers"])
    (root / "spec").mkdir(parents=True)
    for rank, shard in enumerate(meta_reference.shards(ref, n)):
        torch.save(shard, root / "spec" / f"consolidated.{rank:02d}.pth")
    params = {"dim": cfg["hidden_size"], "multiple_of": 4, "n_heads": cfg["num_attention_heads"],
              "n_layers": cfg["num_hidden_layers"], "norm_eps": cfg["rms_norm_eps"], "vocab_size": -1}
    if gqa:
        params["n_kv_heads"] = cfg["num_key_value_heads"]
    (root / "spec" / "params.json").write_text(json.dumps(params), encoding="utf-8")
    shutil.copyfile(tiny.hf_model(gqa=gqa) / "tokenizer.model", root / "tokenizer.model")
    return sd


def test_split_dims_are_metas_parallel_layers():
    """All nine split dimensions (and the replicated norms) against Meta's ColumnParallel/RowParallel table."""
    for name, dim in meta_reference.META_PARALLEL.items():
        key = f"{name}.weight" if name in meta_reference.GLOBAL_NAMES else f"layers.7.{name}.weight"
        assert convert.split_dim(key) == dim, key
    for name in meta_reference.REPLICATED:
        key = f"{name}.weight" if name in meta_reference.GLOBAL_NAMES else f"layers.7.{name}.weight"
        assert convert.split_dim(key) is None, key


@pytest.mark.parametrize("gqa", [False, True])
def test_meta_to_hf_reads_shards_built_from_the_specification(tmp_path, gqa):
    """2 tensor-parallel shards made in the test from Meta's table convert back to the exact HF weights."""
    from safetensors.torch import load_file

    want = _spec_checkpoint(tmp_path / "meta", gqa, 2)
    got = load_file(str(convert.meta_to_hf(tmp_path / "meta", "spec", tmp_path / "hf") / "model.safetensors"))
    assert got.keys() == want.keys()
    assert [k for k in want if not torch.equal(got[k], want[k])] == []


@pytest.mark.parametrize("gqa", [False, True])
def test_hf_to_meta_writes_metas_parallel_layout(tmp_path, gqa):
    """HF -> 2 Meta shards: every tensor of every shard equals the specification's (names, q/k rows, splits)."""
    sd, cfg = _hf_weights(gqa)
    ref = meta_reference.meta_state_dict(sd, cfg["num_attention_heads"], cfg["num_key_value_heads"],
                                         cfg["num_hidden_layers"])
    out = convert.hf_to_meta(tiny.hf_model(gqa=gqa), tmp_path / "pth", num_shards=2)
    for rank, want in enumerate(meta_reference.shards(ref, 2)):
        got = torch.load(out / f"consolidated.{rank:02d}.pth", map_location="cpu", weights_only=True)
        assert got.keys() == want.keys()
        assert [k for k in want if not torch.equal(got[k], want[k])] == [], rank


@pytest.mark.parametrize("shards,gqa,size", CASES)
def test_converted_model_matches_meta_forward_pass(converted, shards, gqa, size):
    root, hf_dir = converted[size]
    sd, params = convert.load_meta_checkpoint(root / size)
    assert (params.get("n_kv_heads") == 2) is gqa
    model = _hf(hf_dir)
    assert model.config.num_key_value_heads == (2 if gqa else 4)
    tokens = torch.randint(3, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(tokens).logits
    want = convert.meta_forward(sd, params, tokens)
    assert got.shape == want.shape == (2, 16, model.config.vocab_size)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the converted model is also the model the Meta checkpoint was made from
    with torch.no_grad():
        src = _hf(tiny.hf_model(gqa=gqa))(tokens).logits
    torch.testing.assert_close(got, src, atol=1e-5, rtol=1e-5)


def test_without_the_qk_permutation_logits_differ(monkeypatch, tmp_path):
    """The reference is sensitive to the rotary layout: skipping the permutation must break equality."""
    root = tiny.meta_checkpoint(1)
    from helpers import weights

    monkeypatch.setattr(weights, "permute_meta_to_hf", lambda w, n: w)
    model = _hf(convert.meta_to_hf(root, "tiny", tmp_path / "hf"))
    sd, params = convert.load_meta_checkpoint(root / "tiny")
    tokens = torch.arange(3, 19).view(1, 16)
    with torch.no_grad():
        diff = (model(tokens).logits - convert.meta_forward(sd, params, tokens)).abs().max()
    assert diff > 1e-2


def test_hf_output_folder_contents(converted):
    root, hf_dir = converted["tiny-gqa-tp2"]
    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.model", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert any(n.endswith(".safetensors") for n in names) and not any(n.endswith(".bin") for n in names)
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    params = json.loads((root / "tiny-gqa-tp2" / "params.json").read_text(encoding="utf-8"))
    assert cfg["num_key_value_heads"] == params["n_kv_heads"] and cfg["rms_norm_eps"] == params["norm_eps"]
    assert cfg["max_position_embeddings"] == 4096  # guessed LLaMA-2 from norm_eps / n_kv_heads
    assert params["vocab_size"] == -1 and cfg["vocab_size"] == 1000  # -1: taken from tokenizer.model


def test_sharded_safetensors_and_rope_theta(tmp_path):
    root = tmp_path / "meta"
    shutil.copytree(tiny.meta_checkpoint(1), root)
    params = json.loads((root / "tiny" / "params.json").read_text(encoding="utf-8"))
    params["rope_theta"] = 500000.0
    (root / "tiny" / "params.json").write_text(json.dumps(params), encoding="utf-8")
    out = convert.meta_to_hf(root, "tiny", tmp_path / "hf", llama_version=1, max_shard_size="100KB")
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    model = _hf(out)
    assert model.config.rope_parameters["rope_theta"] == 500000.0 and model.config.max_position_embeddings == 2048
    sd, params = convert.load_meta_checkpoint(root / "tiny")
    tokens = torch.arange(5, 25).view(1, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, convert.meta_forward(sd, params, tokens), atol=1e-4, rtol=1e-4)
    back = convert.hf_to_meta(out, tmp_path / "back")  # reads the sharded index
    assert json.loads((back / "params.json").read_text(encoding="utf-8"))["rope_theta"] == 500000.0


@pytest.mark.parametrize("shards,gqa,size", CASES)
def test_pth_to_hf_to_pth_is_bit_identical(converted, tmp_path, shards, gqa, size):
    root, hf_dir = converted[size]
    back = convert.hf_to_meta(hf_dir, tmp_path / "back", num_shards=shards)
    originals = sorted(p.name for p in (root / size).iterdir())
    assert sorted(p.name for p in back.iterdir()) == originals + ["tokenizer.model"]
    for name in originals:
        assert (back / name).read_bytes() == (root / size / name).read_bytes(), name
    shard = torch.load(back / "consolidated.00.pth", map_location="cpu", weights_only=True)
    assert shard["layers.0.attention.wq.weight"].shape[0] == 64 // shards


def test_model_size_sets_meta_shard_count(converted, tmp_path):
    _, hf_dir = converted["tiny"]
    out = convert.hf_to_meta(hf_dir, tmp_path / "13B", model_size="13B")
    assert len(list(out.glob("consolidated.*.pth"))) == 2
    # ... and the 2 shards convert back to the same HF weights
    (tmp_path / "root").mkdir()
    shutil.move(str(out), tmp_path / "root" / "13B")
    shutil.copyfile(hf_dir / "tokenizer.model", tmp_path / "root" / "tokenizer.model")
    again = convert.meta_to_hf(tmp_path / "root", "13B", tmp_path / "hf13")
    a, b = convert.load_hf_state_dict(hf_dir), convert.load_hf_state_dict(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CourseError, match="--num_shards 3: the shard count must divide"):
        convert.hf_to_meta(hf_dir, tmp_path / "x", num_shards=3)


def test_cli_both_directions(tmp_path, capsys):
    root = tiny.meta_checkpoint(2)
    assert convert.main(["--input_dir", str(root), "--model_size", "tiny-tp2", "--output_dir", str(tmp_path / "hf"),
                         "--llama_version", "2"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text(encoding="utf-8"))["max_position_embeddings"] == 4096
    assert convert.main(["--to", "meta", "--input_dir", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "pth"),
                         "--num_shards", "2"]) == 0
    assert (tmp_path / "pth" / "consolidated.01.pth").read_bytes() == (root / "tiny-tp2" / "consolidated.01.pth").read_bytes()
    # an existing output folder is refused (exit 2, no traceback) unless --overwrite
    assert convert.main(["--to", "meta", "--input_dir", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "pth")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert convert.main(["--to", "meta", "--input_dir", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "pth"),
                         "--overwrite"]) == 0
    assert len(list((tmp_path / "pth").glob("consolidated.*.pth"))) == 1


@pytest.fixture
def meta_copy(tmp_path):
    dst = tmp_path / "meta"
    shutil.copytree(tiny.meta_checkpoint(2), dst)
    return dst


def test_missing_params_json_names_the_file(meta_copy, tmp_path):
    (meta_copy / "tiny-tp2" / "params.json").unlink()
    with pytest.raises(CourseError, match=r"tiny-tp2/params.json: params.json not found"):
        convert.meta_to_hf(meta_copy, "tiny-tp2", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shard_count_mismatch(meta_copy, tmp_path):
    (meta_copy / "tiny-tp2").rename(meta_copy / "13B")
    (meta_copy / "13B" / "consolidated.01.pth").unlink()
    with pytest.raises(CourseError, match=r"13B: found 1 consolidated.\*.pth shard\(s\) but LLaMA 13B ships 2"):
        convert.meta_to_hf(meta_copy, "13B", tmp_path / "out")
    (meta_copy / "13B" / "consolidated.00.pth").rename(meta_copy / "13B" / "consolidated.01.pth")
    with pytest.raises(CourseError, match="a shard is missing"):
        convert.meta_to_hf(meta_copy, "13B", tmp_path / "out")


def test_shape_mismatch_names_the_file(meta_copy, tmp_path):
    f = meta_copy / "tiny-tp2" / "consolidated.01.pth"
    sd = torch.load(f, weights_only=True)
    sd["layers.1.attention.wk.weight"] = sd["layers.1.attention.wk.weight"][:8]
    torch.save(sd, f)
    with pytest.raises(CourseError, match=r"consolidated.01.pth: layers.1.attention.wk.weight has shape \(8, 64\)"):
        convert.meta_to_hf(meta_copy, "tiny-tp2", tmp_path / "out")
    params = json.loads((meta_copy / "tiny-tp2" / "params.json").read_text(encoding="utf-8"))
    shutil.copyfile(tiny.meta_checkpoint(2) / "tiny-tp2" / "consolidated.01.pth", f)
    params["n_layers"] = 3
    (meta_copy / "tiny-tp2" / "params.json").write_text(json.dumps(params), encoding="utf-8")
    with pytest.raises(CourseError, match="n_layers=3"):
        convert.meta_to_hf(meta_copy, "tiny-tp2", tmp_path / "out")
    params.update(n_layers=2, dim=128)
    (meta_copy / "tiny-tp2" / "params.json").write_text(json.dumps(params), encoding="utf-8")
    with pytest.raises(CourseError, match="params.json implies"):
        convert.meta_to_hf(meta_copy, "tiny-tp2", tmp_path / "out")


def test_truncated_pth_names_the_file(meta_copy, tmp_path):
    f = meta_copy / "tiny-tp2" / "consolidated.00.pth"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CourseError, match=r"consolidated.00.pth: cannot be read.*truncated or corrupt"):
        convert.meta_to_hf(meta_copy, "tiny-tp2", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_tokenizer_and_missing_folders(meta_copy, tmp_path):
    from helpers.vocab import add_pad_piece

    add_pad_piece(meta_copy / "tokenizer.model", tmp_path / "t.model")
    shutil.copyfile(tmp_path / "t.model", meta_copy / "tokenizer.model")
    with pytest.raises(CourseError, match="tok_embeddings has 1000 rows but the vocabulary has 1001"):
        convert.meta_to_hf(meta_copy, "tiny-tp2", tmp_path / "out")
    with pytest.raises(CourseError, match="7B: folder not found"):
        convert.meta_to_hf(meta_copy, "7B", tmp_path / "out")
    with pytest.raises(CourseError, match="config.json: not found"):
        convert.hf_to_meta(meta_copy, tmp_path / "out")


def test_pickle_checkpoints_are_refused(meta_copy, tmp_path):
    """weights_only=True: a .pth holding arbitrary Python objects is not unpickled."""
    f = meta_copy / "tiny-tp2" / "consolidated.00.pth"
    torch.save({"x": shutil.copyfile}, f)  # a function reference: refused by the safe unpickler
    with pytest.raises(CourseError, match="consolidated.00.pth: cannot be read"):
        convert.meta_to_hf(meta_copy, "tiny-tp2", tmp_path / "out")


def test_meta_params_recover_metas_values():
    """params.json from an HF config: Meta's multiple_of (256 up to 65B) and 70B's 4096 + ffn_dim_multiplier 1.3."""
    from types import SimpleNamespace

    def cfg(h, inter, heads, kv):
        return SimpleNamespace(hidden_size=h, intermediate_size=inter, num_attention_heads=heads,
                               num_key_value_heads=kv, num_hidden_layers=2, rms_norm_eps=1e-5)

    assert convert.meta_params(cfg(4096, 11008, 32, 32))["multiple_of"] == 256  # 7B
    assert convert.meta_params(cfg(5120, 13824, 40, 40))["multiple_of"] == 256  # 13B (512 fits too)
    p70 = convert.meta_params(cfg(8192, 28672, 64, 8))
    assert (p70["multiple_of"], p70["ffn_dim_multiplier"], p70["n_kv_heads"]) == (4096, 1.3, 8)
    assert convert.ffn_dim(8192, p70["multiple_of"], p70["ffn_dim_multiplier"]) == 28672
    with pytest.raises(CourseError, match="intermediate_size 999"):
        convert.meta_params(cfg(64, 999, 4, 4))


def test_odd_vocabulary_splits_like_the_original_merge_script():
    """Chinese-LLaMA's 49953 rows in 13B's 2 shards: output.weight 24976 + 24977; other weights must divide."""
    sd = {"output.weight": torch.randn(1001, 64), "tok_embeddings.weight": torch.randn(1001, 64),
          "norm.weight": torch.ones(64)}
    shards = convert.split_meta_shards(sd, 2)
    assert [s["output.weight"].shape[0] for s in shards] == [500, 501]
    assert [s["tok_embeddings.weight"].shape for s in shards] == [(1001, 32)] * 2
    back = convert.merge_meta_shards(shards)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(CourseError, match=r"layers.0.attention.wq.weight: dimension 0 of shape \(63, 64\).*--num_shards"):
        convert.split_meta_shards({"layers.0.attention.wq.weight": torch.zeros(63, 64)}, 2)


# --------------------------------------------------------------------------- RAM check
def fake_ram(monkeypatch, available, swap=0):
    import psutil
    from types import SimpleNamespace

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))
    monkeypatch.setattr(psutil, "swap_memory", lambda: SimpleNamespace(free=swap))
    monkeypatch.delenv("COURSE_SKIP_RAM_CHECK", raising=False)


def _tiny_bytes():
    """Hand-worked from the tiny config (float32; vocab 1000, hidden 64, 4 heads, intermediate 172, 2 layers):
    ``(all weights, 1-dim norms, q and k)`` in bytes."""
    v, h, i, layers = 1000, 64, 172, 2
    norms = (2 * layers + 1) * h * 4
    total = 2 * v * h * 4 + layers * (4 * h * h + 3 * h * i) * 4 + norms
    return total, norms, layers * 2 * h * h * 4


def test_ram_needed_hand_worked_on_tiny_checkpoints():
    total, norms, qk = _tiny_bytes()
    one = [convert._load_pth(f) for f in convert.shard_files(tiny.meta_checkpoint(1) / "tiny")]
    two = [convert._load_pth(f) for f in convert.shard_files(tiny.meta_checkpoint(2) / "tiny-tp2")]
    # one shard stays memory-mapped: q/k permuted copies + one output shard in the write buffer
    assert convert.ram_needed_meta_to_hf(one) == qk + total
    assert convert.ram_needed_meta_to_hf(one, 1000) == qk + 1000
    # two shards: the split weights are concatenated into memory (the norms, in both shards, stay mapped)
    assert convert.ram_needed_meta_to_hf(two) == (total - norms) + qk + total
    # HF -> Meta: the state dict, the per-rank copies and the permuted q/k
    assert convert.ram_needed_hf_to_meta(tiny.hf_model(), 1) == 2 * total + qk


def test_conversion_refuses_to_start_without_the_ram_it_needs(tmp_path, monkeypatch, capsys):
    total, norms, qk = _tiny_bytes()
    fake_ram(monkeypatch, qk + total - 1)
    with pytest.raises(CourseError, match=r"Meta -> HF conversion would hold .*--max_shard_size.*swap"):
        convert.meta_to_hf(tiny.meta_checkpoint(1), "tiny", tmp_path / "hf")
    assert convert.main(["--input_dir", str(tiny.meta_checkpoint(1)), "--model_size", "tiny",
                         "--output_dir", str(tmp_path / "hf")]) == 2
    assert "Killed" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert convert.meta_to_hf(tiny.meta_checkpoint(1), "tiny", tmp_path / "hf", max_shard_size=1000).is_dir()
    fake_ram(monkeypatch, 2 * total + qk - 1)
    with pytest.raises(CourseError, match=r"HF -> Meta conversion would hold"):
        convert.hf_to_meta(tiny.hf_model(), tmp_path / "meta")
    assert not (tmp_path / "meta").exists()
