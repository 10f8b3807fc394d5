"""Step 11, deployment: llama.cpp's quantizer (Q4_0/Q4_K_M/Q5_K_M/Q8_0), LoRA-adapter GGUF, llama.cpp's OpenAI
server with the course's clients, the Modelfile's ADAPTER line."""
import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import export as E
from helpers import crawl, prompts, rag, tiny
from helpers.tokenizer import load_tokenizer

# Bytes per block and values per block of each ggml type, from ggml's block structs (ggml-common.h):
# block_q4_0 = fp16 d + 16 nibble bytes; block_q8_0 = fp16 d + 32 int8; block_q4_K = 2 fp16 + 12 scale bytes +
# 128 nibble bytes; block_q5_K = that + 32 high-bit bytes; block_q6_K = 128 + 64 + 16 scales + fp16 d.
GGML_BLOCKS = {"Q4_0": (32, 18), "Q8_0": (32, 34), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
               "Q5_0": (32, 22), "F16": (1, 2), "F32": (1, 4)}


@pytest.fixture(scope="module")
def kq_dir():
    return tiny.kquant_model()


@pytest.fixture(scope="module")
def kq(kq_dir, tmp_path_factory):
    """The K-quant-friendly model as f16 GGUF and the four quantized files made from it."""
    out = tmp_path_factory.mktemp("quant")
    f16 = E.export_gguf(kq_dir, out / "kq-f16.gguf", "f16", family=None, progress=False)
    return {"f16": f16, **{q: E.quantize_gguf(f16, out / f"kq-{q}.gguf", q) for q in E.QUANT_TYPES}}


@pytest.fixture(scope="module")
def merged_f16(tmp_path_factory):
    return E.export_gguf(tiny.merged_model(), tmp_path_factory.mktemp("m16") / "m-f16.gguf", "f16", progress=False)


# --------------------------------------------------------------------------- quantized GGUF
def test_quantized_files_hold_blocks_of_the_original_weights(kq):
    """Every tensor's bytes follow ggml's block layout for the type llama.cpp reports, the main type is the one asked
    for, and the weights dequantized by the gguf package are the f16 weights within each type's precision."""
    import gguf

    src = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
           for t in gguf.GGUFReader(str(kq["f16"])).tensors}
    want_main = {"Q4_0": "Q4_0", "Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q8_0": "Q8_0"}
    errs = {}
    for q, res in ((q, kq[q]) for q in E.QUANT_TYPES):
        counts = res.summary()
        assert max(counts, key=counts.get) == want_main[q], (q, counts)
        rel = []
        for t in gguf.GGUFReader(str(res.path)).tensors:
            per, nbytes = GGML_BLOCKS[t.tensor_type.name]
            assert int(t.n_bytes) == int(t.n_elements) // per * nbytes, (q, t.name)
            if len(t.shape) >= 2:
                w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(src[t.name].shape)
                rel.append(np.sqrt(((w - src[t.name]) ** 2).mean() / (src[t.name] ** 2).mean()))
        errs[q] = max(rel)
    assert errs["Q8_0"] < 0.01 and errs["Q5_K_M"] < 0.05 and errs["Q4_K_M"] < 0.12 and errs["Q4_0"] < 0.15, errs
    assert errs["Q8_0"] < errs["Q5_K_M"] < errs["Q4_K_M"], errs
    # llama.cpp's *_K_M recipe keeps the output matrix in Q6_K: reported as "another type"
    assert kq["Q4_K_M"].other["output.weight"] == "Q6_K" and kq["Q8_0"].other == {}


def test_perplexity_matches_transformers_and_table(kq, kq_dir):
    """llama.cpp's perplexity of the f16 file == a perplexity computed here with transformers on the HF folder
    (same windows: BOS + 63 tokens, first prediction skipped); the table orders the types by KL from f16."""
    from transformers import AutoModelForCausalLM

    text = E.heldout_text()[:600]
    got = E.llama_cpp_perplexity(kq["f16"], text, n_ctx=64, max_tokens=200)
    tok = load_tokenizer(kq_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"][:200]
    model = AutoModelForCausalLM.from_pretrained(kq_dir, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    for s in range(0, len(ids) - 1, 63):
        w = [tok.bos_token_id] + ids[s:s + 63]
        if len(w) < 3:
            break
        with torch.inference_mode():
            logp = torch.log_softmax(model(torch.tensor([w])).logits[0].double(), -1)
        nll -= float(logp[torch.arange(1, len(w) - 1), torch.tensor(w[2:])].sum())
        n += len(w) - 2
    assert got["tokens"] == n
    assert got["perplexity"] == pytest.approx(np.exp(nll / n), rel=5e-3)
    table = E.quant_table({k: kq[k] if k == "f16" else kq[k].path for k in ("f16", "Q8_0", "Q4_0")}, text=text,
                          n_ctx=64, max_tokens=200, new_tokens=8)
    assert list(table.index) == ["f16", "Q8_0", "Q4_0"]
    assert table.loc["f16", "ppl / f16"] == 1.0 and table.loc["f16", "KL vs f16"] == 0
    assert table.loc["Q8_0", "KL vs f16"] < table.loc["Q4_0", "KL vs f16"]
    assert table.loc["Q4_0", "MiB"] < table.loc["Q8_0", "MiB"] < table.loc["f16", "MiB"]
    assert (table["tokens/s"] > 0).all()


def test_quantize_refuses_rows_that_do_not_fit_the_block(merged_f16, kq, tmp_path):
    # the tiny merged model: hidden 64 (not a multiple of 256), FFN 172 (not even of 32)
    with pytest.raises(E.ExportError, match=r"tensor output\.weight has rows of 64 .*256.*Q4_0, Q8_0 would work"):
        E.quantize_gguf(merged_f16, tmp_path / "x.gguf", "Q4_K_M")
    with pytest.raises(E.ExportError, match=r"blk\.0\.ffn_down\.weight has rows of 172 .*no quantized type fits"):
        E.quantize_gguf(merged_f16, tmp_path / "x.gguf", "Q4_0")
    assert not list(tmp_path.iterdir())
    res = E.quantize_gguf(merged_f16, tmp_path / "x.gguf", "Q4_K_M", allow_fallback=True)
    # what llama.cpp did instead (its quantizer's fallback table): Q5_0 for 64-value rows, F16 for 172
    assert res.other["blk.0.attn_q.weight"] == "Q5_0" and res.other["blk.0.ffn_down.weight"] == "F16"
    assert "not divisible by 256" in res.log
    with pytest.raises(E.ExportError, match="already quantized"):
        E.quantize_gguf(kq["Q8_0"].path, tmp_path / "y.gguf", "Q4_0")
    with pytest.raises(E.ExportError, match="--type"):
        E.quantize_gguf(kq["f16"], tmp_path / "y.gguf", "Q3_K")
    with pytest.raises(E.ExportError, match="--overwrite"):
        E.quantize_gguf(kq["f16"], kq["Q8_0"].path, "Q8_0")


# --------------------------------------------------------------------------- LoRA as a GGUF adapter
@pytest.fixture(scope="module")
def lora_case(tmp_path_factory):
    """Base GGUF, adapter GGUF, and the GGUF of the adapter merged by helpers.merge (all f32)."""
    from helpers.merge import merge_lora_into

    out = tmp_path_factory.mktemp("lora")
    base, lora = tiny.merged_model(), tiny.plain_lora_adapter()
    base_gguf = E.export_gguf(base, out / "base.gguf", "f32", progress=False)
    adapter = E.export_lora_gguf(lora, base_gguf, out / "lora.gguf")
    merge_lora_into(base, [lora], out / "merged", output_type="huggingface", progress=False)
    merged = E.export_gguf(out / "merged", out / "merged.gguf", "f32", progress=False)
    return {"base": base_gguf, "adapter": adapter, "merged": merged, "lora": lora}


def test_lora_adapter_gguf_gives_the_merged_logits(lora_case):
    """llama.cpp: base GGUF + adapter GGUF == the GGUF of the model merged in transformers (f32 KV cache)."""
    from llama_cpp import Llama

    meta = E.gguf_summary(lora_case["adapter"])["metadata"]
    assert (meta["general.type"], meta["adapter.type"], meta["adapter.lora.alpha"]) == ("adapter", "lora", 16.0)
    kw = dict(n_ctx=128, logits_all=True, verbose=False, type_k=0, type_v=0, n_threads=1)
    with_lora = Llama(str(lora_case["base"]), lora_path=str(lora_case["adapter"]), **kw)
    merged, plain = E.llama_cpp_model(lora_case["merged"]), E.llama_cpp_model(lora_case["base"])
    try:
        ids = E.llama_cpp_tokenize(merged, "你好，北京欢迎你！混合 text 2024")
        want = E.llama_cpp_logits(merged, ids)
        assert np.abs(E.llama_cpp_logits(with_lora, ids) - want).max() < 1e-4
        assert np.abs(E.llama_cpp_logits(plain, ids) - want).max() > 0.1  # the adapter does change the model
    finally:
        for llm in (with_lora, merged, plain):
            llm.close()


def test_lora_adapter_refusals(lora_case, kq, tmp_path):
    # a LoRA that grew the vocabulary (modules_to_save embed_tokens/lm_head) cannot be a llama.cpp adapter
    with pytest.raises(E.ExportError, match=r"modules_to_save.*Merge this adapter"):
        E.export_lora_gguf(tiny.lora_adapters()["alpaca"], lora_case["base"], tmp_path / "a.gguf")
    # the adapter on another base: names the tensor and both shapes
    with pytest.raises(E.ExportError, match=r"model\.layers\.0\.mlp\.down_proj\.weight \(blk\.0\.ffn_down\.weight\) "
                                            r"changes a \[64, 172\] matrix but the base GGUF's blk\.0\.ffn_down\.weight "
                                            r"is \[256, 768\]"):
        E.export_lora_gguf(lora_case["lora"], kq["f16"], tmp_path / "a.gguf")
    assert not list(tmp_path.iterdir())


def test_modelfile_adapter_line_and_unknown_instructions():
    text = E.modelfile("./base-q8_0.gguf", "chinese-alpaca-2", adapter="./lora.gguf")
    lines = [x for x in text.splitlines() if x and not x.startswith("#")]
    assert lines[:2] == ["FROM ./base-q8_0.gguf", "ADAPTER ./lora.gguf"]  # Ollama: ADAPTER applies to FROM
    mf = E.parse_modelfile(text)
    assert (mf["from"], mf["adapter"]) == ("./base-q8_0.gguf", "./lora.gguf")
    assert E.ollama_prompt(text, [{"role": "user", "content": "q"}]).endswith("q [/INST]")
    assert "ADAPTER" not in E.modelfile("./m.gguf")
    with pytest.raises(E.ExportError, match="QUANTIZE is not a Modelfile instruction"):  # seed 004's advice
        E.parse_modelfile("FROM ./m.gguf\nQUANTIZE q4_0\n")


# --------------------------------------------------------------------------- llama.cpp's OpenAI server
def test_llama_cpp_server_with_openai_and_langchain_clients():
    """The exported GGUF behind python -m llama_cpp.server: the chat prompt is the registry's (token count), the
    completion is transformers' greedy continuation, streaming == non-streaming, and the course's LangChain client
    (helpers.chains.llm_from_args with --openai_api_base) gets the same answer."""
    from openai import OpenAI
    from transformers import AutoModelForCausalLM

    from helpers import chains

    merged = tiny.merged_model()
    tok = load_tokenizer(merged)
    gguf_path = E.export_gguf(merged, merged.parent.parent / "server-test-f32.gguf", "f32", overwrite=True,
                              progress=False)
    hf = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    msgs = [{"role": "user", "content": "北京有什么好玩的？"}]
    with E.start_llama_cpp_server(gguf_path, n_ctx=512, kv_f32=True) as srv:
        client = OpenAI(base_url=srv.v1, api_key="x", max_retries=0, timeout=120)
        chat = client.chat.completions.create(model=srv.model, messages=msgs, max_tokens=8, temperature=0)
        assert chat.usage.prompt_tokens == len(prompts.encode(E.DEFAULT_FAMILY, msgs, tok))
        stream = client.chat.completions.create(model=srv.model, messages=msgs, max_tokens=8, temperature=0,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == chat.choices[0].message.content
        prompt = "你好，北京欢迎你！"
        ids = tok(prompt)["input_ids"]
        # llama_cpp.server applies repeat_penalty 1.1 unless told (its own field): off, as transformers' greedy
        comp = client.completions.create(model=srv.model, prompt=prompt, max_tokens=6, temperature=0,
                                         extra_body={"repeat_penalty": 1.0})
        assert comp.usage.prompt_tokens == len(ids)
        assert comp.choices[0].text == tok.decode(E.hf_greedy(hf, ids, 6, tok.eos_token_id))
        args = argparse.Namespace(model_path=None, openai_api_base=srv.v1, tokenizer_path=str(merged),
                                  max_new_tokens=8, gpus="0", template=None)
        llm, template, _ = chains.llm_from_args(args)
        assert template == "raw"
        # unchanged: langchain-openai 1.x sends the limit as max_completion_tokens, which llama_cpp.server 0.3.36
        # ignores; helpers.chains.api_llm also sends max_tokens, so the answer stops at 8 tokens like the chat above
        assert llm.bind(temperature=0).invoke(msgs[0]["content"]).content == chat.choices[0].message.content

        # the crawl step (step 01) pointed at it unchanged: one round asked and logged (a tiny model's answer is
        # not JSON, so the round is recorded as rejected with its raw text, never lost)
        out = Path(tempfile.mkdtemp()) / "crawl.jsonl"
        res = crawl.crawl(out, 1, crawl.make_client(srv.v1), srv.model, progress=False, max_tokens=16, temperature=0)
        logged = crawl.read_log(out)
        assert res["rounds"] == 1 and len(logged) == 1 and logged[0]["raw"] and logged[0]["model"] == srv.model

        # the QA step (step 08) with this server as its LLM: retrieval + the stuff chain over HTTP (short chunks: the
        # server holds 512 tokens of context and refuses more with a 400, which LangChain raises)
        qa = rag.build_qa(rag.DOCS_DIR / "panda.txt", llm, chain_type="stuff", k=1, template=template, chunk_size=150,
                          chunk_overlap=0,
                          index_dir=out.parent / "index")
        ans = rag.answer(qa, "大熊猫主要吃什么？")
        assert ans["sources"] and isinstance(ans["answer"], str)
        shutil.rmtree(out.parent)


def test_llama_cpp_server_refuses_missing_file(tmp_path):
    with pytest.raises(E.ExportError, match="no such GGUF"):
        E.start_llama_cpp_server(tmp_path / "none.gguf")


# --------------------------------------------------------------------------- CLI
def test_cli_quantize_and_lora(kq, lora_case, merged_f16, tmp_path, capsys):
    assert E.main(["quantize", "--gguf", str(kq["f16"]), "--outfile", str(tmp_path / "q.gguf"), "--type", "Q5_K_M"]) == 0
    assert "Q5_K" in capsys.readouterr().out
    assert E.main(["quantize", "--gguf", str(merged_f16), "--outfile", str(tmp_path / "r.gguf"), "--type", "Q4_K_M"]) == 2
    assert "output.weight" in capsys.readouterr().err
    assert E.main(["lora", "--lora_model", str(lora_case["lora"]), "--base_gguf", str(lora_case["base"]),
                   "--outfile", str(tmp_path / "l.gguf"), "--outtype", "f16"]) == 0
    assert E.gguf_summary(tmp_path / "l.gguf")["metadata"]["adapter.type"] == "lora"
    assert E.main(["modelfile", "--gguf", "./b.gguf", "--adapter", "./l.gguf", "--outfile", str(tmp_path / "Modelfile")]) == 0
    assert E.parse_modelfile((tmp_path / "Modelfile").read_text(encoding="utf-8"))["adapter"] == "./l.gguf"
    shutil.rmtree(tmp_path)


def test_vllm_server_command_and_refusal():
    """`vllm serve` as vLLM's docs write it (model positional, --served-model-name, --enable-lora with
    --lora-modules NAME=PATH), on 127.0.0.1; without a CUDA GPU (here) it is refused with the reason, never started."""
    args = E.vllm_serve_args("m", served_name="s", lora_dir="l", max_model_len=2048)
    assert E.VllmServer.command(None, args, 8000) == [
        "vllm", "serve", "m", "--served-model-name", "s", "--dtype", "float16", "--max-model-len", "2048",
        "--enable-lora", "--max-lora-rank", "64", "--lora-modules", "my-lora=l", "--host", "127.0.0.1", "--port", "8000"]
    assert E.VllmServer.ready_path == "/v1/models"
    if not torch.cuda.is_available():
        with pytest.raises(E.ExportError, match="CUDA GPU"):
            E.start_vllm_server("m")
