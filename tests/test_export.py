"""Step 11: GGUF (llama.cpp parity, transformers' GGUF loader), Ollama Modelfile rendering, fastllm .flm."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import meta_reference
from helpers import export as E
from helpers import prompts
from helpers.generation import GENERATION_DEFAULTS
from helpers.tokenizer import load_tokenizer

TWO_TURNS = [{"role": "user", "content": "你好，请介绍一下自己"},
             {"role": "assistant", "content": "我是一个乐于助人的助手。"},
             {"role": "user", "content": "北京有什么好玩的？ Tell me 3 places."}]
TEXTS = ["hello world", "你好，北京欢迎你！", "  leading spaces and 2024 digits", "混合 text 与中文 🙂"]


@pytest.fixture(scope="module")
def merged():
    """The tiny Chinese-Alpaca (base + LLaMA-LoRA + Alpaca-LoRA merged, extended vocab + [PAD])."""
    return E.tiny_merged_model("alpaca")


@pytest.fixture(scope="module")
def hf(merged):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tok(merged):
    return load_tokenizer(merged)


@pytest.fixture(scope="module")
def ggufs(merged, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {t: E.export_gguf(merged, out / f"tiny-{t}.gguf", t, progress=False) for t in E.GGUF_OUTTYPES}


@pytest.fixture(scope="module")
def llm_f32(ggufs):
    llm = E.llama_cpp_model(ggufs["f32"])
    yield llm
    llm.close()


# --------------------------------------------------------------------------- GGUF file
def test_sp_vocab_pads_and_keeps_pieces(merged, tok):
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    v = E.sp_vocab(merged / "tokenizer.model", sp.get_piece_size() + 3, merged)
    assert v.tokens[:sp.get_piece_size()] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert v.scores[5] == pytest.approx(sp.get_score(5))
    assert v.types[-3:] == [gguf.TokenType.UNUSED] * 3 and v.tokens[-1] == f"[PAD{sp.get_piece_size() + 2}]"
    assert v.types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]  # <unk> <s> </s>
    assert v.types[sp.piece_to_id("<0x41>")] == gguf.TokenType.BYTE and sp.is_byte(sp.piece_to_id("<0x41>"))
    assert (v.bos_id, v.eos_id, v.unk_id) == (1, 2, 0)
    assert v.pad_id == tok.pad_token_id == tok.convert_tokens_to_ids("[PAD]")
    with pytest.raises(E.ExportError, match="tokenizer_path"):
        E.sp_vocab(merged / "tokenizer.model", 100)


def test_gguf_plan_names_and_types(merged):
    plan = {p.name: p for p in E.gguf_plan(merged, "q8_0")}
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.1.attn_q.weight",
            "blk.1.ffn_down.weight", "blk.0.ffn_norm.weight"} <= set(plan)
    assert plan["blk.0.attn_norm.weight"].qtype == "f32"
    assert plan["blk.0.attn_q.weight"].qtype == "q8_0"
    # intermediate 172 is not a multiple of 32: llama.cpp's converter falls back to f16 there too
    assert plan["blk.0.ffn_down.weight"].shape == (64, 172) and plan["blk.0.ffn_down.weight"].qtype == "f16"
    with pytest.raises(E.ExportError, match="--outtype"):
        E.gguf_plan(merged, "q4_0")


def test_gguf_metadata_layout_and_sizes(ggufs, merged, tok):
    import gguf
    from safetensors.torch import load_file

    s = E.gguf_summary(ggufs["f32"])
    m = s["metadata"]
    cfg = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    assert m["general.architecture"] == "llama" and m["llama.block_count"] == 2
    assert m["llama.vocab_size"] == cfg["vocab_size"] == len(tok)
    assert m["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert m["general.sampling.top_k"] == GENERATION_DEFAULTS["top_k"]
    sizes = [E.gguf_summary(ggufs[t])["size"] for t in ("f32", "f16", "q8_0")]
    assert sizes[0] > 1.8 * sizes[1] and sizes[1] > 1.5 * sizes[2]
    # q/k rows in Meta's interleaved rotary layout, v untouched
    sd = load_file(str(merged / "model.safetensors"))
    r = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(ggufs["f32"])).tensors}
    q = sd["model.layers.0.self_attn.q_proj.weight"]
    assert np.array_equal(r["blk.0.attn_q.weight"], meta_reference.interleave_rows(q, 4).numpy())
    assert not np.array_equal(r["blk.0.attn_q.weight"], q.numpy())
    assert np.array_equal(r["blk.0.attn_v.weight"], sd["model.layers.0.self_attn.v_proj.weight"].numpy())


def test_transformers_gguf_loader_reads_it(ggufs, hf, tok):
    from transformers import AutoModelForCausalLM

    ids = tok(TEXTS[1])["input_ids"]
    want = E.hf_logits(hf, ids)
    tol = {"f32": 1e-5, "f16": 2e-2, "q8_0": 0.3}
    for t, path in ggufs.items():
        m = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        assert np.abs(E.hf_logits(m, ids) - want).max() < tol[t], t


def test_export_refuses_existing_and_bad_folder(ggufs, merged, tmp_path):
    with pytest.raises(E.ExportError, match="--overwrite"):
        E.export_gguf(merged, ggufs["f16"], "f16")
    with pytest.raises(E.ExportError, match="config.json"):
        E.export_gguf(tmp_path, tmp_path / "x.gguf")
    assert not list(tmp_path.glob(".x.gguf*"))


# --------------------------------------------------------------------------- llama.cpp
def test_llama_cpp_tokenizes_like_sentencepiece(ggufs, merged, data_lines):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    llm = E.llama_cpp_model(ggufs["q8_0"], vocab_only=True)
    lines = TEXTS + data_lines[::max(1, len(data_lines) // 300)]
    bad = [x for x in lines if E.llama_cpp_tokenize(llm, x) != [1] + sp.encode(x)]
    llm.close()
    assert len(lines) > 100 and bad == []


def test_llama_cpp_matches_transformers_f32(ggufs, merged, hf):
    rep = E.compare_with_llama_cpp(merged, ggufs["f32"], TEXTS, max_new_tokens=10, model=hf)
    assert rep["token_mismatches"] == []
    assert rep["max_abs_logit_diff"] < 1e-3
    assert rep["greedy_equal"] and all(len(h) == 10 for h, _ in rep["greedy"])


def test_llama_cpp_gqa_model(tmp_path):
    """Grouped-query attention (LLaMA-2-70B style, 2 kv heads): k is permuted with the kv head count."""
    from helpers import tiny

    src = tiny.hf_model(gqa=True)
    out = E.export_gguf(src, tmp_path / "gqa.gguf", "f32", family=None, progress=False)
    assert E.gguf_summary(out)["metadata"]["llama.attention.head_count_kv"] == 2
    rep = E.compare_with_llama_cpp(src, out, TEXTS[:2], max_new_tokens=6)
    assert rep["max_abs_logit_diff"] < 1e-3 and rep["greedy_equal"]


@pytest.fixture(scope="module")
def rope_x4(tmp_path_factory):
    """The tiny model with rope scaling linear x4 in its config.json, spelled as the hfl 16K releases do."""
    from helpers import tiny

    out = tmp_path_factory.mktemp("rope") / "tiny-16k"
    shutil.copytree(tiny.hf_model(), out)
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    cfg.pop("rope_parameters", None)
    cfg.update(rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 4.0})
    (out / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return out


def test_rope_scaling_reaches_llama_cpp(rope_x4, tmp_path):
    """A position-interpolation model: llama.cpp on the GGUF equals transformers on the folder (which applies the
    scaling: its logits differ from the unscaled model's)."""
    from transformers import AutoModelForCausalLM

    from helpers import tiny

    model = AutoModelForCausalLM.from_pretrained(rope_x4, dtype=torch.float32).eval()
    ids = load_tokenizer(rope_x4)(TEXTS[2])["input_ids"]
    plain = AutoModelForCausalLM.from_pretrained(tiny.hf_model(), dtype=torch.float32).eval()
    assert np.abs(E.hf_logits(model, ids) - E.hf_logits(plain, ids)).max() > 0.1
    out = E.export_gguf(rope_x4, tmp_path / "x4.gguf", "f32", family=None, progress=False)
    meta = E.gguf_summary(out)["metadata"]
    assert (meta["llama.rope.scaling.type"], meta["llama.rope.scaling.factor"]) == ("linear", 4.0)
    rep = E.compare_with_llama_cpp(rope_x4, out, TEXTS[2:3], max_new_tokens=6, model=model)
    assert rep["max_abs_logit_diff"] < 1e-3 and rep["greedy_equal"]


@pytest.mark.slow
def test_llama_cpp_f16_q8_close(ggufs, hf, tok):
    ids = tok(TEXTS[1])["input_ids"]
    want = E.hf_logits(hf, ids)
    for t, tol in (("f16", 2e-2), ("q8_0", 0.3)):
        llm = E.llama_cpp_model(ggufs[t])
        got = E.llama_cpp_logits(llm, ids)
        llm.close()
        assert np.abs(got - want).max() < tol, t
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.75, t


def test_llama_cpp_reads_chat_template(llm_f32, tok):
    assert llm_f32.metadata["tokenizer.chat_template"] == prompts.chat_template(E.DEFAULT_FAMILY, tokenizer=tok)


# --------------------------------------------------------------------------- Ollama Modelfile
@pytest.mark.parametrize("family", prompts.family_names())
def test_modelfile_template_renders_registry_prompt(family):
    text = E.modelfile("./m.gguf", family)
    bos = E.leading_bos(family)
    for msgs in (TWO_TURNS, [{"role": "system", "content": "只用中文回答。"}] + TWO_TURNS):
        want = prompts.render(family, msgs)
        assert want.startswith(bos)
        assert E.ollama_prompt(text, msgs) == want[len(bos):]


def test_modelfile_parameters_and_system():
    mf = E.parse_modelfile(E.modelfile("./tiny.gguf", "chinese-alpaca-2", num_ctx=4096, temperature=0.5))
    params = dict(p for p in mf["parameters"] if p[0] != "stop")
    assert mf["from"] == "./tiny.gguf" and mf["system"] == prompts.ALPACA2_SYSTEM
    assert params["temperature"] == "0.5" and params["top_k"] == str(GENERATION_DEFAULTS["top_k"])
    assert params["repeat_penalty"] == str(GENERATION_DEFAULTS["repetition_penalty"]) and params["num_ctx"] == "4096"
    assert [v for k, v in mf["parameters"] if k == "stop"] == ["[INST]", "</s>"]
    assert "SYSTEM" not in E.modelfile("./m.gguf", "alpaca")  # a family without a system slot


def test_modelfile_tokens_equal_registry_encode(llm_f32, tok):
    """llama.cpp (BOS added, control text parsed, as Ollama does) on the Modelfile prompt == the registry's ids."""
    for family in ("chinese-alpaca-2", "alpaca", "llama-2-chat"):
        text = E.ollama_prompt(E.modelfile("./m.gguf", family), TWO_TURNS)
        want = prompts.encode(family, TWO_TURNS, tok)
        want = want if want[:1] == [tok.bos_token_id] else [tok.bos_token_id] + want
        assert E.llama_cpp_tokenize(llm_f32, text, add_bos=True, special=True) == want, family


# Prompts typed from Ollama's template semantics (docs/template.mdx; template/template.go: collate joins every system
# message into .System with a blank line and merges consecutive same-role messages; server/routes.go puts the
# Modelfile SYSTEM first unless the chat starts with a system message). Our TEMPLATE renders system messages in
# .Messages as nothing: their text arrives through .System.
OLLAMA_CASES = [
    ("chinese-alpaca-2", [{"role": "system", "content": "A"}, {"role": "system", "content": "B"},
                          {"role": "user", "content": "q1"}, {"role": "user", "content": "q2"}],
     "[INST] <<SYS>>\nA\n\nB\n<</SYS>>\n\nq1\n\nq2 [/INST]"),
    ("chinese-alpaca-2", [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                          {"role": "system", "content": "S"}, {"role": "user", "content": "q2"}],
     "[INST] <<SYS>>\n" + prompts.ALPACA2_SYSTEM + "\n\nS\n<</SYS>>\n\nq1 [/INST]a1 </s><s>[INST] q2 [/INST]"),
    ("chinese-alpaca-2", [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                          {"role": "assistant", "content": "a2"}, {"role": "user", "content": "q2"}],
     "[INST] <<SYS>>\n" + prompts.ALPACA2_SYSTEM + "\n<</SYS>>\n\nq1 [/INST]a1\n\na2 </s><s>[INST] q2 [/INST]"),
    ("llama-2-chat", [{"role": "user", "content": "q1"}, {"role": "user", "content": "q2"}],
     "[INST] q1\n\nq2 [/INST]"),
    ("alpaca", [{"role": "system", "content": "ignored: no system slot"}, {"role": "user", "content": "q"}],
     prompts.ALPACA_TEMPLATE.format(instruction="q")),
]


@pytest.mark.parametrize("family,messages,want", OLLAMA_CASES, ids=["two-systems", "late-system",
                         "two-assistants", "llama2-two-users", "alpaca-no-system-slot"])
def test_ollama_prompt_collates_like_ollama(family, messages, want):
    assert E.ollama_prompt(E.modelfile("./m.gguf", family), messages) == want


def test_ollama_collate_cases_of_ollamas_own_test():
    """template/template_test.go TestCollate: same-role messages merged, tool messages kept apart, systems joined."""
    assert E.ollama_collate([{"role": "user", "content": "Hello"}, {"role": "user", "content": "How are you?"}]) == \
        ("", [{"Role": "user", "Content": "Hello\n\nHow are you?"}])
    tools = [{"role": "tool", "content": "sunny"}, {"role": "tool", "content": "72F"}]
    assert E.ollama_collate(tools)[1] == [{"Role": "tool", "Content": "sunny"}, {"Role": "tool", "Content": "72F"}]
    system, msgs = E.ollama_collate([{"role": "system", "content": "You are helpful"},
                                     {"role": "user", "content": "Hello"}, *tools], default_system="unused")
    assert system == "You are helpful" and [m["Role"] for m in msgs] == ["system", "user", "tool", "tool"]
    assert E.ollama_collate([{"role": "user", "content": "q"}], default_system="D") == \
        ("D", [{"Role": "system", "Content": "D"}, {"Role": "user", "Content": "q"}])


def test_go_template_subset():
    msgs = [{"Role": "user", "Content": "q"}, {"Role": "assistant", "Content": "a"}]
    t = ('{{- if .System }}S={{ .System }};{{ else }}none;{{ end -}}\n  {{ range .Messages }}'
         '{{ if eq .Role "user" }}U:{{ .Content }}{{ else if eq .Role "assistant" }}A:{{ .Content }}{{ else }}?{{ end }}'
         '{{ end }}{{ "{{" }}')
    assert E.render_go_template(t, "sys", msgs) == "S=sys;U:qA:a{{"
    assert E.render_go_template(t, "", msgs) == "none;U:qA:a{{"
    with pytest.raises(E.ExportError, match="subset"):
        E.render_go_template("{{ len .Messages }}", "", [])
    with pytest.raises(E.ExportError, match="without end"):
        E.render_go_template("{{ if .System }}x", "", [])


# --------------------------------------------------------------------------- fastllm
@pytest.fixture(scope="module")
def flms(merged, tmp_path_factory):
    out = tmp_path_factory.mktemp("flm")
    return {d: E.export_fastllm(merged, out / f"tiny-{d}.flm", d, progress=False) for d in E.FLM_DTYPES}


def test_flm_layout_roundtrip(flms, hf, merged):
    import sentencepiece as spm

    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    f32 = E.read_flm(flms["float32"])
    assert set(f32.tensors) == set(sd)
    assert all(np.array_equal(f32.tensors[k], sd[k]) for k in sd)
    cfg = f32.config
    assert cfg["model_type"] == "llama" and cfg["tokenizer_use_score"] == "1"
    assert {k: cfg[k] for k in ("pre_prompt", "user_role", "bot_role", "history_sep")} == \
        prompts.fastllm_config(E.DEFAULT_FAMILY)
    sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    assert [(b.decode(), i) for b, i, _ in f32.vocab] == [(sp.id_to_piece(i), i) for i in range(sp.get_piece_size())]
    q = "model.layers.0.mlp.up_proj.weight"
    for d, dt, rel in (("float16", 7, 1e-3), ("int8", 3, 1 / 100), ("int4", 8, 1 / 12)):
        f = E.read_flm(flms[d])
        assert f.dtypes[q] == dt and f.dtypes["model.embed_tokens.weight"] == 0 and f.dtypes["model.norm.weight"] == 0
        row_range = np.ptp(sd[q], axis=1, keepdims=True)
        assert (np.abs(f.tensors[q] - sd[q]) <= rel * row_range + 1e-6).all(), d
    sizes = [flms[d].stat().st_size for d in ("float32", "float16", "int8", "int4")]
    assert sizes == sorted(sizes, reverse=True)


def test_flm_rejects_bad_dtype(merged, tmp_path):
    with pytest.raises(E.ExportError, match="--dtype"):
        E.export_fastllm(merged, tmp_path / "x.flm", "int3")


# CI installs ftllm (Makefile) and must run these tests, never skip them.
needs_fastllm = pytest.mark.skipif(E.fastllm_path() is None and os.environ.get("CI") != "true",
                                   reason="ftllm not installed (pip install --no-deps ftllm==1.9.0)")


@needs_fastllm
def test_fastllm_runs_float32_like_transformers(flms, hf, tok):
    ids = [tok(t)["input_ids"] for t in TEXTS[:2]]
    msgs = prompts.history_to_messages([(TWO_TURNS[0]["content"], TWO_TURNS[1]["content"])], TWO_TURNS[2]["content"])
    r = E.fastllm_run(flms["float32"], ids=ids, encode=TEXTS[:2],
                      chat={"query": TWO_TURNS[2]["content"], "history": [[TWO_TURNS[0]["content"], TWO_TURNS[1]["content"]]]})
    # fastllm's own prompt builder with the chat settings stored in the file == the registry
    assert r["prompt"] == prompts.render(E.DEFAULT_FAMILY, msgs, resolve=False)
    assert r["encode"] == [x[1:] for x in ids]  # fastllm's tokenizer == sentencepiece (it adds no BOS)
    for x, greedy, logits in zip(ids, r["greedy"], r["last_logits"]):
        assert greedy == E.hf_greedy(hf, x, 8, tok.eos_token_id)
        assert np.abs(np.array(logits) - E.hf_logits(hf, x)[-1]).max() < 1e-3


def test_flm_dtype_ids_are_torch2flms():
    """The data-type ids against ftllm's own torch2flm.py (read as text: importing ftllm loads its library)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("ftllm")
    if spec is None:
        pytest.skip("ftllm not installed")
    src = (Path(spec.origin).parent / "torch2flm.py").read_text(encoding="utf-8")
    node = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", None) == "fastllm_data_type_dict")
    theirs = ast.literal_eval(node.value)
    assert {k: int(v) for k, v in E.FLM_DTYPES.items()} == {k: theirs[k] for k in E.FLM_DTYPES}


def test_flm_carries_rope_scaling(rope_x4, tmp_path):
    """torch2flm flattens rope_scaling into rope_scaling.<key>; fastllm (when installed) then equals transformers."""
    from transformers import AutoModelForCausalLM

    f = E.export_fastllm(rope_x4, tmp_path / "x4.flm", "float32", family=None, progress=False)
    cfg = E.read_flm(f).config
    assert (cfg["rope_scaling.type"], float(cfg["rope_scaling.factor"]), float(cfg["rope_theta"])) == ("linear", 4.0, 1e4)
    if E.fastllm_path() is None and os.environ.get("CI") != "true":
        return
    ids = load_tokenizer(rope_x4)(TEXTS[2])["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(rope_x4, dtype=torch.float32).eval()
    got = E.fastllm_run(f, ids=[ids], max_new_tokens=2)["last_logits"][0]
    assert np.abs(np.array(got) - E.hf_logits(model, ids)[-1]).max() < 1e-3


def test_python_m_helpers_export_exits_2_with_a_message(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "helpers.export", "fastllm", "--base_model", str(tmp_path),
                           "--outfile", str(tmp_path / "x.flm")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: --base_model {tmp_path}: no config.json")


@needs_fastllm
@pytest.mark.slow
def test_fastllm_runs_quantized(flms, hf, tok):
    ids = tok(TEXTS[1])["input_ids"]
    want = E.hf_logits(hf, ids)[-1]
    for d, tol in (("float16", 2e-2), ("int8", 0.5), ("int4", 3.0)):
        r = E.fastllm_run(flms[d], ids=[ids], max_new_tokens=5)
        assert len(r["greedy"][0]) == 5, d
        got = np.array(r["last_logits"][0])
        assert np.abs(got - want).max() < tol, d
        assert np.corrcoef(got, want)[0, 1] > 0.9, d


# --------------------------------------------------------------------------- CLI and packages
def test_cli(merged, tmp_path, capsys):
    assert E.main(["gguf", "--base_model", str(merged), "--outfile", str(tmp_path / "m.gguf"), "--outtype", "q8_0"]) == 0
    assert E.gguf_summary(tmp_path / "m.gguf")["metadata"]["general.file_type"] == 7
    assert E.main(["modelfile", "--gguf", "./m.gguf", "--template", "llama-2-chat",
                   "--outfile", str(tmp_path / "Modelfile")]) == 0
    assert E.parse_modelfile((tmp_path / "Modelfile").read_text(encoding="utf-8"))["from"] == "./m.gguf"
    assert E.main(["fastllm", "--base_model", str(merged), "--outfile", str(tmp_path / "m.flm"), "--dtype", "int4"]) == 0
    assert E.read_flm(tmp_path / "m.flm").dtypes["lm_head.weight"] == 8
    capsys.readouterr()
    assert E.main(["gguf", "--base_model", str(merged), "--outfile", str(tmp_path / "m.gguf")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert E.main(["fastllm", "--base_model", str(tmp_path), "--outfile", str(tmp_path / "n.flm")]) == 2
    assert E.main(["modelfile", "--gguf", "x.gguf", "--template", "no-such-family"]) == 2


def test_packages_have_manifest_and_modelfile(ggufs, flms, tmp_path):
    from helpers.io import verify_manifest

    g = E.package_gguf(ggufs["q8_0"], tmp_path / "ollama", model_name="tiny-alpaca")
    f = E.package_fastllm(flms["int4"], tmp_path / "fastllm")
    for folder in (g, f):
        assert verify_manifest(folder) == {"mismatch": [], "missing": [], "extra": []}
    assert E.parse_modelfile((g / "Modelfile").read_text(encoding="utf-8"))["from"] == "./tiny-q8_0.gguf"
    assert "ollama create tiny-alpaca" in (g / "README.md").read_text(encoding="utf-8")
    table = E.artifact_sizes({"ollama": g, "fastllm": f})
    assert list(table["files"]) == [4, 3] and (table["MiB"] > 0).all()
