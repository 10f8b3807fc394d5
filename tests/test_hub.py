"""helpers.hub: which files a download fetches, the disk check, explained failures, the offline cache.

Online tests run huggingface_hub for real against a fake Hub on 127.0.0.1 (tests/fakehub.py); the expected
file sets are written here from the course's rules (config + tokenizer + ONE weights format), not computed
by helpers.hub. Offline tests use a Hugging Face cache laid out by hand.
"""
import argparse
import collections
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fakehub import FakeHub

from helpers import catalog, hub
from helpers.core import REPO_ROOT

LLAMA2 = "meta-llama/Llama-2-7b-hf"            # gated, publishes .bin AND .safetensors
BIN_ONLY = "hfl/chinese-alpaca-2-7b"           # .bin shards only
LORA = "hfl/chinese-alpaca-2-lora-7b"
EMBEDDING = "BAAI/bge-small-zh-v1.5"
UNLISTED = "someone/unlisted-model"            # not in the course's table
TOKEN = "hf_granted"                           # the account that accepted the Llama 2 licence

LLAMA_TOKENIZER = {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"}
ST_SHARDS = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"}
BIN_SHARDS = {"pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"}


def _files(names) -> dict[str, bytes]:
    """Small distinct contents (distinct ETags), a few dozen bytes each."""
    return {n: f"<{n}>".encode() * 2 for n in names}


REPOS = {
    LLAMA2: _files({"config.json", "generation_config.json", *LLAMA_TOKENIZER, *ST_SHARDS, *BIN_SHARDS,
                    "README.md", "LICENSE.txt", "USE_POLICY.md"}),
    BIN_ONLY: _files({"config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json",
                      "special_tokens_map.json", *BIN_SHARDS, "README.md"}),
    LORA: _files({"adapter_config.json", "adapter_model.bin", "tokenizer.model", "tokenizer_config.json",
                  "special_tokens_map.json", "README.md"}),
    EMBEDDING: _files({"config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                       "1_Pooling/config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                       "special_tokens_map.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx",
                       "README.md"}),
    UNLISTED: _files({"config.json", "model.safetensors", "pytorch_model.bin", "training_args.bin", "README.md"}),
}
# What a model download must leave in the snapshot (written from the rules, per repo).
EXPECTED = {
    LLAMA2: {"config.json", "generation_config.json", *LLAMA_TOKENIZER, *ST_SHARDS},
    BIN_ONLY: {"config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json",
               "special_tokens_map.json", *BIN_SHARDS},
    LORA: {"adapter_config.json", "adapter_model.bin", "tokenizer.model", "tokenizer_config.json",
           "special_tokens_map.json"},
    EMBEDDING: {"config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                "1_Pooling/config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "model.safetensors"},
    UNLISTED: {"config.json", "model.safetensors"},
}


def _tree(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in Path(path).rglob("*") if p.is_file()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache (HF_HUB_CACHE) and no token from the environment or a stored login."""
    from huggingface_hub import constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def online(cache, monkeypatch):
    """huggingface_hub switched online and pointed at the fake Hub.

    huggingface_hub reads HF_HUB_OFFLINE once, at import (conftest set it): its module copy is patched.
    HF_ENDPOINT is only set in the environment: helpers.hub reads it at call time and passes ``endpoint=``
    itself (constants.ENDPOINT / the resolve-URL template stay consistent with each other, as after import).
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # building request headers would otherwise fetch an "agent harness" registry from huggingface.co
    monkeypatch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)
    with FakeHub() as fake:
        for repo, files in REPOS.items():
            fake.add(repo, files, gated=repo == LLAMA2, tokens={TOKEN})
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


def _fetched(fake: FakeHub) -> set[str]:
    """File names the fake Hub served with GET /resolve/ (bodies actually downloaded)."""
    return {p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p, _ in fake.log if m == "GET" and "/resolve/" in p}


# --------------------------------------------------------------------------- patterns (no server)
def test_patterns_from_table_choose_one_weights_format():
    llama2 = set(hub.download_patterns(catalog.get(LLAMA2)))
    assert llama2 == {"config.json", "generation_config.json", *LLAMA_TOKENIZER, "added_tokens.json", *ST_SHARDS}
    assert set(hub.download_patterns(catalog.get(BIN_ONLY))) & {*ST_SHARDS, *BIN_SHARDS} == BIN_SHARDS
    assert set(hub.download_patterns(catalog.get(LLAMA2), "tokenizer")) == {*LLAMA_TOKENIZER, "added_tokens.json"}
    assert set(hub.download_patterns(catalog.get(LLAMA2), "config")) == {"config.json", "generation_config.json"}
    lora = set(hub.download_patterns(catalog.get(LORA)))
    assert lora == {"adapter_config.json", "adapter_model.bin", *LLAMA_TOKENIZER, "added_tokens.json"}
    both = ["adapter_config.json", "adapter_model.bin", "adapter_model.safetensors", "tokenizer.model"]
    assert set(hub.download_patterns(catalog.get(LORA), files=both)) == {"adapter_config.json",
                                                                          "adapter_model.safetensors",
                                                                          "tokenizer.model"}


def test_patterns_reject_bad_what_and_bad_names():
    with pytest.raises(hub.HubError, match="--what"):
        hub.download_patterns(catalog.get(LLAMA2), "weights")
    with pytest.raises(hub.HubError, match="neither a role"):
        hub.download("alpacca")


def test_modelscope_command_parses_as_modelscope_cli():
    # the argument spec of `modelscope download` (modelscope/cli/download.py)
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--include", nargs="*")
    ap.add_argument("--local_dir")
    line = hub.modelscope_command("alpaca")
    words = shlex.split(line)
    assert words[:2] == ["modelscope", "download"]
    args = ap.parse_args(words[2:])
    assert args.model == "ChineseAlpacaGroup/chinese-alpaca-2-1.3b"
    assert set(args.include) == {"config.json", "generation_config.json", *LLAMA_TOKENIZER, "added_tokens.json",
                                 "model.safetensors"}
    assert args.local_dir == "models/chinese-alpaca-2-1.3b"
    emb = ap.parse_args(shlex.split(hub.modelscope_command(EMBEDDING, "config", local_dir="my dir"))[2:])
    assert "1_Pooling/*" in emb.include and emb.local_dir == "my dir"
    with pytest.raises(hub.HubError, match="ModelScope"):
        hub.modelscope_command(LORA)     # the table names no ModelScope copy of the LoRA


# --------------------------------------------------------------------------- online, fake Hub
def test_llama2_downloads_safetensors_config_tokenizer_only(online, cache, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    expected = EXPECTED[LLAMA2]
    assert hub.download_size(LLAMA2) == sum(len(REPOS[LLAMA2][f]) for f in expected)
    path = hub.download("llama2_base")
    assert path.parent.parent == cache / "models--meta-llama--Llama-2-7b-hf"
    assert _tree(path) == expected
    assert (path / "model-00002-of-00002.safetensors").read_bytes() == REPOS[LLAMA2]["model-00002-of-00002.safetensors"]
    assert not any(f.endswith(".bin") for f in _fetched(online))          # the .bin copy never left the Hub
    assert {a for m, p, a in online.log if "/resolve/" in p} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize("repo", [BIN_ONLY, LORA, EMBEDDING, UNLISTED])
def test_other_repos_get_their_one_format(online, repo):
    path = hub.download(repo)
    assert _tree(path) == EXPECTED[repo]
    assert _fetched(online) <= EXPECTED[repo]


def test_tokenizer_only(online):
    assert _tree(hub.download(BIN_ONLY, "tokenizer")) == {"tokenizer.model", "tokenizer_config.json",
                                                            "special_tokens_map.json"}
    assert not any(f.endswith(".bin") for f in _fetched(online))


def test_gated_without_token_names_licence_page_and_token(online, cache):
    with pytest.raises(hub.HubError) as e:
        hub.download(LLAMA2)
    msg = str(e.value)
    assert "https://huggingface.co/meta-llama/Llama-2-7b-hf" in msg     # the licence page of the table
    assert "HF_TOKEN" in msg and "hf auth login" in msg and "no Hugging Face token" in msg
    assert "shakechen/Llama-2-7b-hf" in msg                              # the ModelScope copy
    assert not cache.exists() or not any(cache.iterdir())                # nothing written


def test_gated_token_without_accepted_licence(online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
    with pytest.raises(hub.HubError) as e:
        hub.download(LLAMA2)
    assert "no access yet" in str(e.value) and "Accept the licence on its page" in str(e.value)
    assert any(a == "Bearer hf_not_granted" for _, _, a in online.log)


def test_gated_through_a_mirror_without_auth_check_route(online, monkeypatch):
    online.auth_check_route = False
    with pytest.raises(hub.HubError, match="no Hugging Face token"):       # the file requests say it instead
        hub.download(LLAMA2)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert _tree(hub.download(LLAMA2)) == EXPECTED[LLAMA2]


def test_invalid_token_on_a_public_repo(online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_invalid_typo")
    with pytest.raises(hub.HubError, match="refused your token"):
        hub.download(BIN_ONLY)


def test_missing_repo_names_it_and_similar_ids(online):
    with pytest.raises(hub.HubError) as e:
        hub.download("hfl/chinese-alpaca-2-1.3B")
    msg = str(e.value)
    assert "'hfl/chinese-alpaca-2-1.3B'" in msg and "spelling" in msg
    assert re.search(r"similar ids[^.]*: hfl/chinese-alpaca-2-1\.3b", msg)


def test_disk_too_small_says_both_numbers_and_writes_nothing(online, cache, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    seen = []
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda p: seen.append(p) or usage(10**6, 10**6 - 100, 100))
    need = sum(len(REPOS[BIN_ONLY][f]) for f in EXPECTED[BIN_ONLY])
    assert 100 < need < 1000
    with pytest.raises(hub.HubError) as e:
        hub.download(BIN_ONLY)
    msg = str(e.value)
    assert f"{need} bytes" in msg and "100 bytes" in msg
    assert str(cache) in msg and "HF_HUB_CACHE" in msg
    assert seen                                                          # the check really ran
    assert not cache.exists()                                            # nothing written
    assert not any("/resolve/" in p for _, p, _ in online.log)          # nothing downloaded


def test_network_error_suggests_mirror_and_modelscope(online, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")   # nothing listens there
    with pytest.raises(hub.HubError) as e:
        hub.download("alpaca")
    msg = str(e.value)
    assert "HF_ENDPOINT=https://hf-mirror.com" in msg and "ChineseAlpacaGroup/chinese-alpaca-2-1.3b" in msg


def test_stale_offline_switch_inside_huggingface_hub_is_explained(cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubError, match="restart"):
        hub.download("alpaca")


# --------------------------------------------------------------------------- offline, hand-made cache
def _cached(cache: Path, repo: str, files: dict[str, bytes], sha: str = "c0ffee" + "0" * 34) -> Path:
    """The Hugging Face cache layout: models--org--name/refs/main -> sha, snapshots/<sha>/<files>."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(sha)
    snap = storage / "snapshots" / sha
    for name, data in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_bytes(data)
    return snap


ALPACA_FILES = _files({"config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                       "model.safetensors", "README.md"})


def test_offline_resolves_from_cache(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = _cached(cache, "hfl/chinese-alpaca-2-1.3b", ALPACA_FILES)
    assert hub.download("alpaca") == snap
    assert hub.download_size("alpaca") == sum(len(b) for n, b in ALPACA_FILES.items() if n != "README.md")
    tok = {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}
    assert hub.download_size("alpaca", "tokenizer") == sum(len(ALPACA_FILES[n]) for n in tok)
    unlisted = _cached(cache, UNLISTED, REPOS[UNLISTED])
    assert hub.download(UNLISTED) == unlisted                            # not in the table: whole snapshot


def test_offline_missing_repo_says_cache_and_standin(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError) as e:
        hub.download(BIN_ONLY)
    msg = str(e.value)
    assert "not in the local cache" in msg and str(cache / "models--hfl--chinese-alpaca-2-7b") in msg
    assert "python -m helpers.standin build" in msg


def test_offline_snapshot_without_weights_is_refused(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _cached(cache, "hfl/chinese-alpaca-2-1.3b", {k: v for k, v in ALPACA_FILES.items() if k != "model.safetensors"})
    assert hub.download("alpaca", "tokenizer").is_dir()
    with pytest.raises(hub.HubError, match="lacks weights"):
        hub.download("alpaca")


# --------------------------------------------------------------------------- CLI
def test_cli_prints_path_or_message(cache, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = _cached(cache, "hfl/chinese-alpaca-2-1.3b", ALPACA_FILES)
    assert hub.main(["download", "alpaca", "--what", "tokenizer"]) == 0
    assert capsys.readouterr().out.strip() == str(snap)
    assert hub.main(["download", "nobody"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "llama_base" in err and "Traceback" not in err


def test_cli_module_exits_2_without_traceback(cache):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    r = subprocess.run([sys.executable, "-m", "helpers.hub", "download", BIN_ONLY], cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "python -m helpers.standin build" in r.stderr and "Traceback" not in r.stderr
