"""The offline stand-in hub: real tokenizers, the hub cache layout, and the unchanged real loading paths.

References independent of helpers.standin: llama.cpp's own tokenizer (llama-cpp-python) and llama.cpp's test
cases for LLaMA's vocabulary; ``git hash-object`` and hashlib for the blob names; transformers' LlamaForCausalLM
on the meta device for the weight names and shapes; numbers typed from the model cards.
"""
import hashlib
import json
import os
import shutil
import subprocess

import pytest
import torch

from helpers import catalog, standin

# Test hook: real vocabularies and layer counts, small widths (the real sizes are exercised by the rehearsal).
SHRINK = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4}
LLAMA2 = "meta-llama/Llama-2-7b-hf"
ALPACA = "hfl/chinese-alpaca-2-1.3b"
LORA = "hfl/chinese-alpaca-2-lora-7b"
BGE = "BAAI/bge-small-zh-v1.5"
HUB_VARS = ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture(scope="module")
def llama_sp():
    return standin.llama_sp_model()


@pytest.fixture(scope="module")
def zh_sp():
    return standin.chinese_llama_sp_model()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return standin.build(tmp_path_factory.mktemp("hub"), shrink=SHRINK)


@pytest.fixture
def on_hub(hub, monkeypatch):
    """This process pointed at the stand-in hub by ``standin.use`` (environment and huggingface_hub restored after)."""
    from huggingface_hub import constants

    for key in HUB_VARS:
        monkeypatch.setenv(key, os.environ.get(key, ""))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", constants.HF_HUB_CACHE)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)
    return hub, standin.use(hub)


def _snapshot(cache, repo):
    folder = cache / ("models--" + repo.replace("/", "--"))
    return folder, folder / "snapshots" / (folder / "refs" / "main").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- tokenizers
def test_llama_tokenizer_encodes_like_llama_cpp(llama_sp):
    import llama_cpp
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(llama_sp))
    assert sp.get_piece_size() == 32000
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.is_byte(3) and sp.id_to_piece(3) == "<0x00>" and sp.is_control(1)
    ref = llama_cpp.Llama(model_path=str(standin.llama_vocab_gguf()), vocab_only=True, verbose=False)
    cases = ["Hello world", " Hello world", "The 2 models cost 1999 yuan.", "你好，世界！今天天气很好。",
             "  two  spaces ", "a\tb\nc", "中文 mixed with English 123", "emoji 🦙 and ½", "x = 12345"]
    for text in cases:
        assert sp.encode(text) == ref.tokenize(text.encode("utf-8"), add_bos=False, special=False), text


def test_llama_tokenizer_passes_llama_cpps_own_test_cases(llama_sp):
    """llama.cpp ships the expected ids of LLaMA's tokenizer for its test strings (.inp / .out)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(llama_sp))
    gguf = standin.llama_vocab_gguf()
    inputs = gguf.with_name(gguf.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = gguf.with_name(gguf.name + ".out").read_text(encoding="utf-8").splitlines()
    assert len(outputs) > 40
    for text, ids in zip(inputs, outputs):
        assert sp.encode(text) == [int(x) for x in ids.split()], repr(text)


def test_chinese_tokenizer_size_base_pieces_and_efficiency(llama_sp, zh_sp):
    import sentencepiece as spm

    from helpers.tokenizer import load_sp_proto

    base, zh = load_sp_proto(llama_sp), load_sp_proto(zh_sp)
    assert len(zh.pieces) == 55296
    assert [(p.piece, p.score, p.type) for p in zh.pieces[:32000]] == [(p.piece, p.score, p.type) for p in base.pieces]
    pieces = [p.piece for p in zh.pieces]
    assert len(set(pieces)) == 55296
    assert {chr(c) for c in range(0x4E00, 0xA000)} <= set(pieces)   # every CJK Unified Ideograph is one piece
    assert zh.trainer_spec.byte_fallback and zh.normalizer_spec.add_dummy_prefix
    # 20 ideographs + 2 punctuation marks: with every ideograph a piece at most 1 + 22 tokens; LLaMA lacks
    # several of them and falls back to 3 UTF-8 byte tokens each.
    text = "中国的大熊猫生活在四川的山区，喜欢吃竹子。"
    n_zh = len(spm.SentencePieceProcessor(model_file=str(zh_sp)).encode(text))
    n_llama = len(spm.SentencePieceProcessor(model_file=str(llama_sp)).encode(text))
    assert n_zh <= 23 < n_llama


def test_chinese_hf_tokenizer_matches_sentencepiece_on_data_lines(zh_sp, data_lines):
    from helpers.tokenizer import load_tokenizer, sp_mismatches

    tok = load_tokenizer(zh_sp)
    assert len(tok) == 55296
    assert sp_mismatches(tok, zh_sp, data_lines) == []


def test_chinese_pieces_do_not_depend_on_line_order(llama_sp):
    from helpers.tokenizer import load_sp_proto

    have = {p.piece for p in load_sp_proto(llama_sp).pieces}
    texts = standin._zh_texts(standin._zh_source_files())
    n = 55296 - 32000
    a = standin.chinese_pieces(have, n, texts)
    assert a == standin.chinese_pieces(have, n, texts[::-1]) and len(a) == n


def test_sdist_download_failure_names_the_command(tmp_path, monkeypatch):
    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(standin.subprocess, "run", failing)
    with pytest.raises(standin.StandinError, match=r"pip download .*llama-cpp-python==0\.3\.36.*network unreachable"):
        standin._download_sdist("llama-cpp-python", "0.3.36", tmp_path)


def test_a_non_sentencepiece_gguf_is_refused(tmp_path):
    import gguf

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(standin.StandinError, match="not 'llama'"):
        standin.sp_model_from_gguf(path, tmp_path / "tokenizer.model")
    assert not (tmp_path / "tokenizer.model").exists()


def test_bert_vocab_layout():
    vocab = standin.bert_vocab()
    assert len(vocab) == 21128 == len(set(vocab))
    # bert-base-chinese's special ids
    assert [vocab.index(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 100, 101, 102, 103]
    assert "的" in vocab and "a" in vocab and "##s" in vocab


# --------------------------------------------------------------------------- configs and shapes at the real size
def test_real_size_configs_and_weight_names_match_transformers():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = standin.repo_config(ALPACA)       # from the model card: 4 layers of the 7B width, 55296 pieces
    assert (cfg["vocab_size"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"],
            cfg["num_attention_heads"]) == (55296, 4, 4096, 11008, 32)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    want = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert standin.llama_shapes(cfg) == want
    assert sum(torch.Size(s).numel() for _, s in want) == 1_262_522_368   # ~1.26 B parameters
    llama2 = standin.repo_config(LLAMA2, layers_7b=3)
    assert (llama2["num_hidden_layers"], llama2["vocab_size"], llama2["hidden_size"]) == (3, 32000, 4096)


# --------------------------------------------------------------------------- the hub cache layout
def test_cache_layout_refs_symlinks_and_blob_names(hub):
    folder, snap = _snapshot(hub, LLAMA2)
    assert len(snap.name) == 40 and int(snap.name, 16) >= 0
    config, shard = snap / "config.json", snap / "model-00001-of-00002.safetensors"
    for f in (config, shard):
        assert f.is_symlink() and not os.path.isabs(os.readlink(f))
        assert f.resolve().parent == (folder / "blobs").resolve()
    assert shard.resolve().name == hashlib.sha256(shard.read_bytes()).hexdigest()   # git-lfs file: its sha256
    if shutil.which("git"):                                                           # other files: git blob sha1
        sha1 = subprocess.run(["git", "hash-object", str(config)], capture_output=True, text=True).stdout.strip()
        assert config.resolve().name == sha1


def test_snapshot_download_and_tree_listing_offline(on_hub):
    from huggingface_hub import get_cached_repo_tree, hf_hub_download, snapshot_download

    hub, _ = on_hub
    folder, snap = _snapshot(hub, LLAMA2)
    published = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin",
                 "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json", "config.json",
                 "generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "README.md", ".gitattributes"}
    listing = {f.path: f.size for f in get_cached_repo_tree(LLAMA2)}
    assert set(listing) == published
    assert all(listing[name] == (snap / name).stat().st_size for name in published)
    path = snapshot_download(LLAMA2, allow_patterns=["*.safetensors", "*.json", "tokenizer.model"])
    assert os.path.samefile(path, snap)
    assert hf_hub_download(ALPACA, "tokenizer.model") == str(_snapshot(hub, ALPACA)[1] / "tokenizer.model")


def test_allow_patterns_are_checked_against_the_listing(hub, tmp_path, monkeypatch):
    """Offline, huggingface_hub returns the cached snapshot and checks it against the listing: only files the
    patterns select must be present (so the .bin copies are optional for a safetensors download)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo_dir = tmp_path / ("models--" + LLAMA2.replace("/", "--"))
    shutil.copytree(_snapshot(hub, LLAMA2)[0], repo_dir, symlinks=True)
    snap = _snapshot(tmp_path, LLAMA2)[1]
    patterns = ["*.safetensors", "*.json", "tokenizer.model"]
    (snap / "pytorch_model-00002-of-00002.bin").unlink()
    assert snapshot_download(LLAMA2, allow_patterns=patterns, cache_dir=tmp_path)
    (snap / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(IncompleteSnapshotError):
        snapshot_download(LLAMA2, allow_patterns=patterns, cache_dir=tmp_path)


# --------------------------------------------------------------------------- the real loading paths
def test_autoconfig_and_from_pretrained(on_hub):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(ALPACA)
    assert (cfg.vocab_size, cfg.num_hidden_layers, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id,
            cfg.max_position_embeddings, cfg.rms_norm_eps) == (55296, 4, 1, 2, 0, 4096, 1e-5)
    assert cfg.hidden_size == SHRINK["hidden_size"]                  # the test's shrink; real: repo_config above
    long = AutoConfig.from_pretrained("hfl/chinese-alpaca-2-7b-16k")  # config-only: the real values
    assert (long.hidden_size, long.num_hidden_layers, long.rope_scaling["factor"]) == (4096, 32, 4.0)
    model, info = AutoModelForCausalLM.from_pretrained(ALPACA, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.dtype == torch.float16 and model.get_input_embeddings().weight.shape == (55296, 64)
    st, info = AutoModelForCausalLM.from_pretrained(LLAMA2, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert st.config.num_hidden_layers == 2 and "2 of 32 layers" in st.config.standin_note
    pt = AutoModelForCausalLM.from_pretrained(LLAMA2, use_safetensors=False)   # the .bin copy: same weights
    for (name, a), b in zip(st.state_dict().items(), pt.state_dict().values()):
        assert torch.equal(a, b), name
    w = st.model.layers[0].self_attn.q_proj.weight.float()
    assert 0.015 < w.std().item() < 0.025 and torch.equal(st.model.norm.weight, torch.ones(64, dtype=torch.float16))


def test_sharded_index_and_file_sizes(hub):
    snap = _snapshot(hub, LLAMA2)[1]
    shapes = dict(standin.llama_shapes(standin.repo_config(LLAMA2, 2, SHRINK)))
    total = sum(torch.Size(s).numel() * 2 for s in shapes.values())
    for index, prefix in (("model.safetensors.index.json", "model-"), ("pytorch_model.bin.index.json", "pytorch_")):
        data = json.loads((snap / index).read_text(encoding="utf-8"))
        assert set(data["weight_map"]) == set(shapes) and data["metadata"]["total_size"] == total
        files = set(data["weight_map"].values())
        assert len(files) == 2 and all(f.startswith(prefix) for f in files)
        # every file holds its own tensors' bytes (windows of the random pool are not saved as one shared blob)
        assert sum((snap / f).stat().st_size for f in files) >= total


def test_peft_loads_the_lora_on_the_llama2_standin(on_hub):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hub, _ = on_hub
    snap = _snapshot(hub, LORA)[1]
    cfg = json.loads((snap / "adapter_config.json").read_text(encoding="utf-8"))
    assert (cfg["r"], cfg["lora_alpha"], cfg["base_model_name_or_path"]) == (64, 128, LLAMA2)
    assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                    "up_proj", "down_proj"])
    assert sorted(cfg["modules_to_save"]) == ["embed_tokens", "lm_head"]
    saved = torch.load(snap / "adapter_model.bin", weights_only=True)
    assert len(saved) == 2 * 7 * 2 + 2                       # A and B of 7 targets in 2 layers + embed + lm_head
    base = AutoModelForCausalLM.from_pretrained(LLAMA2)
    base.resize_token_embeddings(55296, mean_resizing=False)
    model = PeftModel.from_pretrained(base, LORA)
    q = model.base_model.model.model.layers[1].self_attn.q_proj
    assert q.lora_A["default"].weight.shape == (64, 64) and q.scaling["default"] == 2.0
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"     # PEFT's own key names
    assert torch.equal(q.lora_B["default"].weight, saved[key])
    emb = model.base_model.model.model.embed_tokens.modules_to_save["default"].weight
    assert emb.shape == (55296, 64) and torch.equal(emb, saved["base_model.model.model.embed_tokens.weight"])


def test_tokenizer_from_the_hub_folder(on_hub, zh_sp):
    from huggingface_hub import snapshot_download

    from helpers.tokenizer import load_tokenizer, sp_mismatches

    folder = snapshot_download(ALPACA, allow_patterns=list(catalog.TOKENIZER_FILES))
    tok = load_tokenizer(folder)
    assert len(tok) == 55296 and tok.bos_token_id == 1 and tok.eos_token_id == 2
    assert sp_mismatches(tok, zh_sp, ["大熊猫喜欢吃竹子。", "LoRA 微调 7B 模型"]) == []


def test_sentence_transformers_and_langchain_embeddings(on_hub):
    from langchain_huggingface import HuggingFaceEmbeddings
    from sentence_transformers import SentenceTransformer

    from transformers import AutoModel, AutoTokenizer

    model = SentenceTransformer(BGE)
    assert len(model) == 3                                    # Transformer, Pooling, Normalize (modules.json)
    texts = ["今天天气很好", "股票大跌"]
    vecs = torch.from_numpy(model.encode(texts))
    assert vecs.shape == (2, SHRINK["hidden_size"])
    # bge's recipe computed with plain transformers: the [CLS] vector, L2-normalised
    bert, bert_tok = AutoModel.from_pretrained(BGE), AutoTokenizer.from_pretrained(BGE)
    with torch.no_grad():
        cls = bert(**bert_tok(texts, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    assert torch.allclose(vecs, torch.nn.functional.normalize(cls, dim=-1), atol=1e-5)
    tok = model.tokenizer
    assert len(tok) == 21128 and tok.convert_tokens_to_ids("[CLS]") == 101
    assert tok.tokenize("天气很好") == ["天", "气", "很", "好"]
    emb = HuggingFaceEmbeddings(model_name=BGE)
    assert len(emb.embed_query("你好")) == SHRINK["hidden_size"]


# --------------------------------------------------------------------------- status, require, use, CLI
def test_status_missing_stale_and_require(hub, tmp_path, monkeypatch):
    assert set(standin.status(hub).values()) == {"ok"}
    assert standin.require(hub) == hub
    empty = tmp_path / "empty"
    assert set(standin.status(empty).values()) == {"missing"}
    with pytest.raises(standin.StandinError, match=r"python -m helpers\.standin build") as err:
        standin.require(empty)
    assert str(empty) in str(err.value)
    copy = tmp_path / "copy"
    shutil.copytree(hub, copy, symlinks=True)
    manifest = copy / standin.MANIFEST
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["standin_version"] = "0"
    manifest.write_text(json.dumps(data), encoding="utf-8")
    assert set(standin.status(copy).values()) == {"stale"}
    with pytest.raises(standin.StandinError, match="stale"):
        standin.require(copy)
    # a changed catalog fact makes that repo stale
    data["standin_version"] = standin.STANDIN_VERSION
    manifest.write_text(json.dumps(data), encoding="utf-8")
    changed = catalog.MODELS[ALPACA].__class__(**{**vars(catalog.MODELS[ALPACA]),
                                                    "config": {**catalog.MODELS[ALPACA].config, "rope_theta": 1e6}})
    monkeypatch.setitem(catalog.MODELS, ALPACA, changed)
    states = standin.status(copy)
    assert states[ALPACA] == "stale" and states[LLAMA2] == "ok"


def test_interrupted_build_leaves_no_repo(tmp_path, monkeypatch):
    real = standin.write_repo_files

    def crash(repo, folder, *a, **k):
        real(repo, folder, *a, **k)
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(standin, "write_repo_files", crash)
    with pytest.raises(KeyboardInterrupt):
        standin.build(tmp_path, repos=["hfl/chinese-alpaca-2-7b-16k"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks"]
    assert standin.status(tmp_path)["hfl/chinese-alpaca-2-7b-16k"] == "missing"
    monkeypatch.setattr(standin, "write_repo_files", real)
    standin.build(tmp_path, repos=["hfl/chinese-alpaca-2-7b-16k"])
    assert standin.status(tmp_path)["hfl/chinese-alpaca-2-7b-16k"] == "ok"


def test_build_is_deterministic(tmp_path):
    """Two builds give the same commit and the same blobs (blob names are content hashes)."""
    repos = [LLAMA2, LORA]
    a = standin.build(tmp_path / "a", repos=repos, shrink=SHRINK)
    b = standin.build(tmp_path / "b", repos=repos, shrink=SHRINK)
    for repo in repos:
        (fa, sa), (fb, sb) = _snapshot(a, repo), _snapshot(b, repo)
        assert sa.name == sb.name
        blobs = sorted(p.name for p in (fa / "blobs").iterdir())
        assert blobs == sorted(p.name for p in (fb / "blobs").iterdir())
        assert all(hashlib.sha256((fb / "blobs" / n).read_bytes()).hexdigest() == n for n in blobs if len(n) == 64)


def test_use_points_this_process_and_subprocesses_at_the_hub(on_hub):
    from huggingface_hub import constants

    hub, env = on_hub
    assert env == {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "HF_DATASETS_OFFLINE": "1"}
    assert all(os.environ[k] == v for k, v in env.items())
    assert constants.HF_HUB_CACHE == str(hub) and constants.HF_HUB_OFFLINE is True


def test_cli_check_and_bad_input(hub, tmp_path, capsys):
    assert standin.main(["check", "--cache_dir", str(hub)]) == 0
    assert "ok" in capsys.readouterr().out
    assert standin.main(["check", "--cache_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "python -m helpers.standin build" in err and "Traceback" not in err
    assert standin.main(["build", "--cache_dir", str(tmp_path), "--layers_7b", "0"]) == 2
    assert "--layers_7b" in capsys.readouterr().err
    assert standin.main(["build", "--cache_dir", str(tmp_path), "--repos", "hfl/no-such-model"]) == 2
    assert "hfl/no-such-model" in capsys.readouterr().err
