"""Step 06 web UI: the chat engine (templates, streaming, LoRA switch), the Gradio app, the launcher's
flags, and a real browser session against the real server (headless Debian chromium via Playwright)."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import webui
from helpers.core import REPO_ROOT, CourseError
from helpers.net import free_port
from helpers.prompts import build_prompt

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def engine(tiny_model):
    base, loras = tiny_model
    adapters = {"chinese-alpaca-lora": loras["alpaca"], "chinese-llama-lora": loras["llama"]}
    return webui.ChatEngine(base, adapters, device="cpu")


def test_engine_guesses_template_and_builds_prompts(engine):
    engine.load("chinese-alpaca-lora")
    assert engine.template == "alpaca"
    text, add_special = engine.prompt([], "你好")
    assert text == build_prompt("你好") and add_special  # the tokenizer adds <s>
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    text, add_special = engine.prompt(history, "再见", template="chinese-alpaca-2", system="你是助手。")
    assert text.startswith("<s>[INST] <<SYS>>\n你是助手。\n<</SYS>>\n\n你好 [/INST]你好！ </s><s>[INST] 再见 [/INST]")
    assert not add_special  # the template carries <s> itself


def test_engine_streams_a_growing_answer(engine):
    engine.load("chinese-alpaca-lora")
    parts = list(engine.reply([], "介绍一下北京", temperature=0, max_new_tokens=24))
    assert len(parts) > 3 and parts[-1]
    assert len({len(p) for p in parts}) > 2  # text arrived in steps, not at once
    again = list(engine.reply([], "介绍一下北京", temperature=0, max_new_tokens=24))
    assert again[-1] == parts[-1]  # greedy is deterministic


def test_switching_adapters_reloads_model_and_tokenizer(engine):
    engine.load("chinese-alpaca-lora")
    vocab_alpaca = len(engine.tokenizer)
    msg = engine.load("chinese-llama-lora")
    assert engine.current == "chinese-llama-lora" and engine.template == "llama"
    assert len(engine.tokenizer) == vocab_alpaca - 1  # Chinese-Alpaca adds [PAD]
    assert engine.model.get_input_embeddings().weight.shape[0] == len(engine.tokenizer)
    assert "chinese-llama-lora" in msg
    with pytest.raises(CourseError, match="unknown"):
        engine.load("nope")
    engine.load("chinese-alpaca-lora")


def test_create_ui_returns_blocks_with_controls(engine):
    import gradio as gr

    demo = webui.create_ui(engine)
    assert isinstance(demo, gr.Blocks)
    labels = {getattr(c, "label", None) for c in demo.blocks.values()}
    for want in ("max_new_tokens", "top_p", "repetition_penalty", "LoRA 模型", "模板 (template)"):
        assert want in labels
    for prefix in ("temperature", "top_k"):
        assert any(str(lbl).startswith(prefix) for lbl in labels)


def test_cli_refuses_share_and_bad_paths(tmp_path, capsys, tiny_model):
    base, _ = tiny_model
    assert webui.main(["--base_model", str(base), "--share"]) == 2
    assert "ssh -L" in capsys.readouterr().err
    assert webui.main(["--base_model", str(base), "--lora_model", str(tmp_path / "missing")]) == 2
    assert "--lora_model" in capsys.readouterr().err
    assert webui.main(["--base_model", str(base), "--template", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: template/family 'nope' is unknown")
    assert webui.main(["--base_model", str(base), "--tokenizer_path", str(tmp_path), "--only_cpu"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: no tokenizer.model")  # a message, no traceback


def test_failed_adapter_load_leaves_no_stale_state():
    """After a load that fails, the engine knows nothing is loaded and loads the next adapter for real."""
    calls = []

    def loader(base, lora, tokenizer_path, device=None, load_in_8bit=False, load_in_4bit=False):
        calls.append(lora)
        if lora == "broken":
            raise CourseError("--lora_model broken: adapter_config.json is missing")
        return object(), [0] * 7  # a stand-in model and a 7-token "tokenizer"

    engine = webui.ChatEngine("base", {"good": "good", "broken": "broken"}, loader=loader)
    with pytest.raises(CourseError, match="broken"):
        engine.load("broken")
    assert engine.current is None and engine.model is None
    assert "good" in engine.load("good") and engine.current == "good"
    assert calls == ["good", "broken", "good"]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """The real UI server (python -m helpers.webui) on 127.0.0.1 and a free port."""
    base, loras = tiny_model
    port = free_port()
    log = tmp_path_factory.mktemp("webui") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "helpers.webui", "--base_model", str(base), "--lora_model",
                                 f"{loras['alpaca']},{loras['llama']}", "--port", str(port), "--only_cpu", "--seed", "1"],
                                cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"web UI did not start:\n{log.read_text(encoding='utf-8')[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.browser
@pytest.mark.server
@pytest.mark.slow
def test_browser_chat_streams_an_answer(server, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("COURSE_REQUIRE_BROWSER"):
            pytest.fail("COURSE_REQUIRE_BROWSER is set but chromium is missing (apt-get install chromium)")
        pytest.skip("Debian chromium is not installed (apt-get install chromium); CI sets COURSE_REQUIRE_BROWSER=1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server, wait_until="domcontentloaded")
            box = page.locator("#query textarea")
            box.wait_for(timeout=60_000)
            # record every length the answer takes in the page itself (independent of polling speed)
            page.evaluate("""() => {
                window.__lens = [];
                new MutationObserver(() => {
                    const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
                    if (bots.length) window.__lens.push(bots[bots.length - 1].innerText.trim().length);
                }).observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
            }""")
            box.fill("介绍一下北京")
            box.press("Enter")
            page.locator('#chatbot [data-testid="user"]').first.wait_for(timeout=30_000)
            assert "介绍一下北京" in page.locator('#chatbot [data-testid="user"]').first.inner_text()
            page.wait_for_function("() => new Set(window.__lens.filter(n => n > 0)).size >= 3 && "
                                   "Math.max(...window.__lens) > 20", timeout=120_000)
            lens = [n for n in page.evaluate("() => window.__lens") if n > 0]
            distinct = sorted(set(lens))
            assert len(distinct) >= 3 and lens[-1] >= distinct[1], f"no streamed answer: {lens}"
            assert page.locator('#chatbot [data-testid="bot"]').last.inner_text().strip()
            shot = tmp_path / "webui.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"screenshot: {shot}")
            # clear empties the conversation; pressed while an answer streams, it also stops the generation
            no_user = "() => !document.querySelector('#chatbot [data-testid=\"user\"]')"
            answering = ("() => [...document.querySelectorAll('#chatbot [data-testid=\"bot\"]')]"
                         ".some(b => b.innerText.trim().length > 0)")
            page.wait_for_timeout(500)
            page.locator("#clear").click()
            page.wait_for_function(no_user, timeout=30_000)
            box.fill("你好")  # up to 400 new tokens: still streaming when clear is pressed at its first text
            box.press("Enter")
            page.wait_for_function(answering, timeout=60_000)
            page.locator("#clear").click()
            page.wait_for_function(no_user, timeout=30_000)
            page.wait_for_timeout(1500)  # a generation left running would bring the conversation back
            assert page.locator('#chatbot [data-testid="user"]').count() == 0
            box.fill("再见")  # the stopped generation released the model: the next question is answered
            box.press("Enter")
            page.wait_for_function(answering, timeout=60_000)
        finally:
            browser.close()


def test_gradio_api_drift():
    """The Gradio keyword arguments helpers.webui relies on (fails loudly after an upgrade renames one)."""
    import inspect

    import gradio as gr

    launch = set(inspect.signature(gr.Blocks.launch).parameters)
    assert {"server_name", "server_port", "share", "inbrowser", "theme", "prevent_thread_lock", "quiet"} <= launch
    assert {"default_concurrency_limit"} <= set(inspect.signature(gr.Blocks.queue).parameters)
    assert {"height", "label", "elem_id"} <= set(inspect.signature(gr.Chatbot.__init__).parameters)
    assert {"font", "font_mono"} <= set(inspect.signature(gr.themes.Default.__init__).parameters)


def test_access_hint_per_platform(monkeypatch):
    """Local: the address; AutoDL: an SSH tunnel (the server stays on 127.0.0.1) or port 6006; Colab: the URL
    Colab's port proxy gives for that port (asked through google.colab.output.eval_js)."""
    import sys
    import types

    assert "http://127.0.0.1:7860" in webui.access_hint(7860, "local")
    hint = webui.access_hint(7861, "autodl")
    assert "ssh -CNg -L 7861:127.0.0.1:7861" in hint and "6006" in hint
    asked = []
    output = types.SimpleNamespace(eval_js=lambda js: asked.append(js) or "https://abc-7862-colab.googleusercontent.com/")
    colab = types.ModuleType("google.colab")
    colab.output = output
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    hint = webui.access_hint(7862, "colab")
    assert asked == ["google.colab.kernel.proxyPort(7862)"] and "https://abc-7862-colab.googleusercontent.com/" in hint


def test_template_of_a_hub_snapshot_comes_from_the_model_table():
    """A model downloaded with snapshot_download lives in .../snapshots/<commit>: the name is in the cache path."""
    engine = webui.ChatEngine.__new__(webui.ChatEngine)
    engine.fixed_template, engine.adapters = None, {webui.NO_LORA: None}
    engine.base_model = "/hf/hub/models--hfl--chinese-alpaca-2-1.3b/snapshots/4f1c2b"
    assert engine.guess_template(webui.NO_LORA) == "chinese-alpaca-2"


def test_alpha_flag_reaches_the_model_through_the_cli(tiny_model, monkeypatch):
    """``python -m helpers.webui --alpha 2``: the engine's model gets the NTK base (10000 * 2 ** (16/14), d = 16),
    also after an adapter switch reloads it."""
    base, loras = tiny_model
    seen = {}
    monkeypatch.setattr(webui, "create_ui", lambda engine: seen.setdefault("engine", engine))
    monkeypatch.setattr(webui, "launch", lambda *a, **k: None)
    assert webui.main(["--base_model", str(base), "--lora_model", f"{loras['alpaca']},{loras['llama']}",
                       "--only_cpu", "--alpha", "2"]) == 0
    engine = seen["engine"]
    theta = 10000.0 * 2 ** (16 / 14)
    assert engine.model.config.rope_parameters["rope_theta"] == pytest.approx(theta)
    engine.load(list(engine.adapters)[1])
    assert engine.model.config.rope_parameters["rope_theta"] == pytest.approx(theta)
