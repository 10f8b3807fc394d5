"""Step 06: a Gradio web UI for multi-turn chat (seed 002 第5步, in the spirit of the original gradio_demo.py).

    python -m helpers.webui --base_model DIR --lora_model A[,B] [--port 7860] [--host 127.0.0.1]

``create_ui(engine)`` builds and returns the ``gr.Blocks`` (tests build it without a server);
:func:`launch` starts it on 127.0.0.1 with ``share=False``. The chat streams, renders every turn with a
chat family from :mod:`helpers.prompts`, has sliders for the generation settings, a clear button and a
LoRA-adapter switch (reloads the base model + adapter: adapters may come with different vocab sizes).
"""
from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from pathlib import Path

from .catalog import template_for
from .core import CourseError, cli_main, detect_platform
from .generation import GENERATION_DEFAULTS, cut_at_stop, stream
from .modeling import add_model_arguments, apply_model_arguments, load_model
from .prompts import ChatFamily, family_names, get_family, history_to_messages, render, stop_strings

NO_LORA = "(base model, no LoRA)"


class ChatEngine:
    """A loaded model + tokenizer that can switch LoRA adapters and answer a chat turn by turn.

    ``adapters`` maps a display name to a LoRA folder (``None`` = the base model alone). ``loader`` is
    :func:`helpers.modeling.load_model` (replaceable in tests). ``template`` ``None`` guesses the chat family
    from the adapter/base folder name, falling back to ``alpaca``. ``alpha`` is ``--alpha`` (NTK rope scaling,
    :func:`helpers.modeling.ntk_rope_parameters`), passed to the loader on every (re)load.
    """

    def __init__(self, base_model: str | Path, adapters: dict[str, str | Path | None] | None = None,
                 tokenizer_path: str | Path | None = None, template: str | None = None, device: str | None = None,
                 load_in_8bit: bool = False, loader=None, load_in_4bit: bool = False,
                 alpha: float | str | None = None):
        self.base_model, self.tokenizer_path, self.device = base_model, tokenizer_path, device
        self.load_in_8bit, self.load_in_4bit = load_in_8bit, load_in_4bit
        self.alpha = alpha  # --alpha (NTK rope scaling), kept for every adapter reload
        self.adapters = dict(adapters) if adapters else {NO_LORA: None}
        self.fixed_template = template
        self.loader = loader or load_model
        self.lock = threading.Lock()
        self.model = self.tokenizer = None
        self.current: str | None = None
        self.template: str = "alpaca"
        self.load(next(iter(self.adapters)))

    def guess_template(self, name: str) -> str:
        """The chat family for an adapter: ``--template``, else from its folder or the base name, else alpaca."""
        if self.fixed_template:
            return get_family(self.fixed_template).name
        for candidate in (self.adapters.get(name), name, self.base_model):
            if candidate:
                try:
                    return template_for(str(candidate))  # the model table first, then the folder name
                except CourseError:
                    continue
        return "alpaca"

    def load(self, name: str) -> str:
        """Load the base model with adapter ``name``; returns a status line."""
        if name not in self.adapters:
            raise CourseError(f"LoRA adapter {name!r} is unknown: choose one of {list(self.adapters)}")
        with self.lock:
            if name != self.current:
                self.model = self.tokenizer = None  # free the previous weights first
                self.current = None  # a failed load must not leave the old name on an empty engine
                self.model, self.tokenizer = self.loader(
                    self.base_model, self.adapters[name],
                    self.tokenizer_path, device=self.device, load_in_8bit=self.load_in_8bit,
                    load_in_4bit=self.load_in_4bit, **({"alpha": self.alpha} if self.alpha is not None else {}))
                self.current = name
                self.template = self.guess_template(name)
        return f"loaded **{name}** · vocab {len(self.tokenizer)} · template `{self.template}`"

    def prompt(self, history: list, query: str, template: str | ChatFamily | None = None,
               system: str | None = None) -> tuple[str, bool]:
        """``(prompt text, add_special_tokens)`` for a new ``query`` after ``history`` (gradio messages)."""
        fam = get_family(template or self.template)
        text = render(fam, history_to_messages(history, query, system=system or None), tokenizer=self.tokenizer)
        bos = self.tokenizer.bos_token
        return text, not (bos and text.startswith(bos))  # the template already has <s>: do not add another

    def reply(self, history: list, query: str, template: str | None = None, system: str | None = None,
              **gen) -> Iterator[str]:
        """Yield the growing answer text (streamed), cut at the family's stop strings."""
        fam = get_family(template or self.template)
        text, add_special = self.prompt(history, query, fam, system)
        stop = stop_strings(fam)
        answer = ""
        with self.lock:
            for piece in stream(self.model, self.tokenizer, text, stop=stop, add_special_tokens=add_special, **gen):
                answer += piece
                yield cut_at_stop(answer, stop).strip()


def create_ui(engine: ChatEngine, title: str = "Chinese-LLaMA-Alpaca 对话") -> "gr.Blocks":  # noqa: F821
    """The Gradio app (not launched): chat, sliders, clear, adapter and template switches."""
    import gradio as gr

    d = GENERATION_DEFAULTS
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\n多轮对话；每一轮都用所选模板（chat family）把历史拼成一个 prompt。")
        with gr.Row():
            adapter = gr.Dropdown(list(engine.adapters), value=engine.current, label="LoRA 模型", elem_id="adapter")
            template = gr.Dropdown(family_names(), value=engine.template, label="模板 (template)", elem_id="template")
        status = gr.Markdown(f"loaded **{engine.current}** · template `{engine.template}`", elem_id="status")
        chatbot = gr.Chatbot(label="对话", height=360, elem_id="chatbot")
        with gr.Row():
            query = gr.Textbox(placeholder="输入你的问题，回车发送", show_label=False, scale=5, elem_id="query")
            send = gr.Button("发送", variant="primary", scale=1, elem_id="send")
            clear = gr.Button("清空", scale=1, elem_id="clear")
        with gr.Accordion("生成参数", open=False):
            system = gr.Textbox(label="system prompt（模板有 {system} 时使用；空 = 默认）", elem_id="system")
            max_new_tokens = gr.Slider(1, 2048, value=d["max_new_tokens"], step=1, label="max_new_tokens")
            temperature = gr.Slider(0.0, 2.0, value=d["temperature"], step=0.05, label="temperature (0 = greedy)")
            top_p = gr.Slider(0.0, 1.0, value=d["top_p"], step=0.01, label="top_p")
            top_k = gr.Slider(0, 100, value=d["top_k"], step=1, label="top_k (0 = off)")
            repetition_penalty = gr.Slider(1.0, 2.0, value=d["repetition_penalty"], step=0.01,
                                           label="repetition_penalty")

        def add_user(message: str, history: list):
            if not message or not message.strip():
                return message, history
            return "", list(history or []) + [{"role": "user", "content": message.strip()}]

        def bot(history: list, fam: str, sys_prompt: str, n: float, temp: float, p: float, k: float, rep: float):
            if not history or history[-1]["role"] != "user":
                yield history
                return
            past, q = history[:-1], history[-1]["content"]
            q = q if isinstance(q, str) else history_to_messages([history[-1]])[0]["content"]
            gen = dict(max_new_tokens=int(n), temperature=float(temp), top_p=float(p), top_k=int(k),
                       repetition_penalty=float(rep))
            out = list(history) + [{"role": "assistant", "content": ""}]
            for text in engine.reply(past, q, template=fam, system=sys_prompt, **gen):
                out[-1] = {"role": "assistant", "content": text}
                yield out

        def switch(name: str):
            msg = engine.load(name)
            return msg, [], engine.template  # a new adapter (and tokenizer) starts a new conversation

        inputs = [chatbot, template, system, max_new_tokens, temperature, top_p, top_k, repetition_penalty]
        replies = [query.submit(add_user, [query, chatbot], [query, chatbot], queue=False).then(bot, inputs, chatbot),
                   send.click(add_user, [query, chatbot], [query, chatbot], queue=False).then(bot, inputs, chatbot)]
        # clear first stops an answer still streaming (else its next piece would bring the conversation back)
        clear.click(None, None, None, queue=False, cancels=replies).then(lambda: [], None, chatbot, queue=False)
        adapter.change(switch, adapter, [status, chatbot, template])
    return demo


def offline_theme():
    """The default theme with system fonts (no Google Fonts request: works offline and behind firewalls)."""
    import gradio as gr

    fonts = ["ui-sans-serif", "system-ui", "Noto Sans CJK SC", "sans-serif"]
    return gr.themes.Default(font=fonts, font_mono=["ui-monospace", "monospace"])


def launch(demo, host: str = "127.0.0.1", port: int = 7860, **kwargs):
    """Start the app: bound to ``host`` (127.0.0.1 = only this machine), never shared publicly."""
    demo.queue(default_concurrency_limit=1)
    return demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, theme=offline_theme(),
                       **kwargs)


AUTODL_PORT = 6006  # AutoDL's "自定义服务" forwards this container port to an https address


def colab_proxy_url(port: int) -> str:
    """The https address under which Colab's port proxy shows ``127.0.0.1:port`` of the runtime (only inside
    Colab: it asks the browser side through ``google.colab.output.eval_js``)."""
    from google.colab.output import eval_js  # only importable on Colab

    return str(eval_js(f"google.colab.kernel.proxyPort({int(port)})"))


def access_hint(port: int, where: str | None = None) -> str:
    """How a learner opens a server started on ``127.0.0.1:port``: locally the address; on Colab the port
    proxy's address (the server stays on 127.0.0.1, Colab forwards it to your browser only); on AutoDL an SSH
    tunnel, or the custom-service port 6006 (an explicit ``--host 0.0.0.0`` choice, with a password)."""
    where = where or detect_platform()
    local = f"http://127.0.0.1:{port}"
    if where == "colab":
        try:
            return f"Colab: open {colab_proxy_url(port)} (Colab's port proxy for {local}; only you can open it)"
        except Exception as e:  # outside a Colab browser session eval_js has nobody to ask
            return f"Colab: run google.colab.output.serve_kernel_port_as_window({port}) to open {local} ({e})"
    if where == "autodl":
        return (f"AutoDL: on your computer run `ssh -CNg -L {port}:127.0.0.1:{port} root@<host> -p <ssh port>` "
                f"(host and port from the console's SSH login line), then open {local}. Or start with --host 0.0.0.0 "
                f"--port {AUTODL_PORT} and use the console's 自定义服务 link (public: set a password/--api_key)")
    return f"open {local} in a browser on this machine (remote machine: ssh -L {port}:127.0.0.1:{port} user@host)"


def parse_adapters(value: str | None) -> dict[str, str | None]:
    """``--lora_model a,b`` -> ``{folder name: path}``; each must exist. Empty -> the base model alone."""
    if not value:
        return {NO_LORA: None}
    out: dict[str, str | None] = {}
    for item in (x.strip() for x in value.split(",") if x.strip()):
        p = Path(item)
        if not p.exists():
            raise CourseError(f"--lora_model {item}: folder not found (comma-separated LoRA folders)")
        out[p.name or item] = item
    return out


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.webui`` (the model flags of the original gradio_demo.py)."""
    p = argparse.ArgumentParser(prog="python -m helpers.webui", description="Gradio chat UI for a course model")
    add_model_arguments(p, lora_help="one or more LoRA folders, comma-separated (switchable)")
    p.add_argument("--template", default=None, help=f"chat family, one of {family_names()}; default: guessed")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 = local only; reach a remote one with ssh -L")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="refused: use ssh port forwarding instead")
    return p


def _run(args) -> int:
    """The CLI: refuse --share, load the engine, serve until stopped."""
    if args.share:
        raise CourseError("--share is off in this course: it would publish the model on a public gradio.live "
                          "URL. On a remote server use `ssh -L 7860:127.0.0.1:7860 user@server` instead")
    if args.template:
        get_family(args.template)
    engine = ChatEngine(args.base_model, parse_adapters(args.lora_model), args.tokenizer_path, args.template,
                        **apply_model_arguments(args))
    print(f"web UI on http://{args.host}:{args.port} (template {engine.template})", flush=True)
    print(access_hint(args.port), flush=True)
    launch(create_ui(engine), args.host, args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.webui ...``: serve until stopped; returns the exit code (2 with a message on bad input)."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
