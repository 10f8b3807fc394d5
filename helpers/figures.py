"""The course's pictures, drawn by code (matplotlib, no network, deterministic) into ``images/``.

    python -m helpers.figures            # regenerate every picture
    python -m helpers.figures --out DIR  # somewhere else (the test compares the two)

The pipeline picture is a dependency graph derived from :data:`PIPELINE`: one row per course step with the
artifacts it reads and writes. The same table gives each notebook's prerequisites (:func:`prerequisites`), which
``helpers.overview.header`` shows at the top of a notebook. Labels are English (no CJK font needed: the PNGs are
the same bytes on every machine with the pinned matplotlib).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path

from .core import REPO_ROOT, CourseError, cli_main

IMAGES = REPO_ROOT / "images"

# Artifacts that come from outside the course (the learner downloads or writes them).
EXTERNAL = ("Meta consolidated.*.pth", "documents (.txt)")


@dataclass(frozen=True)
class Step:
    """One course step: its number, what it reads (artifact names) and what it writes."""

    num: str
    stem: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]


# Which step writes which artifact and which steps read it (the edges of the pipeline graph).
PIPELINE = [
    Step("01", "01_crawl_prompts", (), ("instruction data (Alpaca JSON)",)),
    Step("02", "02_convert_llama", ("Meta consolidated.*.pth",), ("LLaMA in HF format",)),
    Step("03", "03_extend_vocab", ("LLaMA in HF format",), ("Chinese tokenizer (49953 / 49954)",)),
    Step("07", "07_pretrain_and_sft_lora",
         ("LLaMA in HF format", "Chinese tokenizer (49953 / 49954)", "instruction data (Alpaca JSON)"),
         ("LLaMA-LoRA + Alpaca-LoRA",)),
    Step("04", "04_merge_lora", ("LLaMA in HF format", "Chinese tokenizer (49953 / 49954)", "LLaMA-LoRA + Alpaca-LoRA"),
         ("merged Chinese-Alpaca",)),
    Step("05", "05_inference", ("merged Chinese-Alpaca",), ("answers (predictions.json)",)),
    Step("06", "06_webui", ("merged Chinese-Alpaca",), ("chat UI",)),
    Step("08", "08_langchain_qa", ("merged Chinese-Alpaca", "documents (.txt)"), ("QA answers + sources",)),
    Step("09", "09_langchain_summarize", ("merged Chinese-Alpaca", "documents (.txt)"), ("summaries",)),
    Step("10", "10_openai_api", ("merged Chinese-Alpaca",), ("OpenAI-compatible server",)),
    Step("11", "11_export_deploy", ("merged Chinese-Alpaca",), ("GGUF, Modelfile, .flm",)),
    Step("12", "12_evaluate", ("merged Chinese-Alpaca",), ("perplexity, scores",)),
]
# Course notebooks outside the pipeline: the overview and the appendix.
NOT_IN_PIPELINE = ("00_overview", "13_troubleshooting")
# Steps in PIPELINE whose notebook is still being written (none today).
PLANNED: set[str] = set()


def step(num_or_stem: str) -> Step:
    """The :class:`Step` for ``"04"`` or ``"04_merge_lora"``; raises CourseError naming the steps."""
    for s in PIPELINE:
        if num_or_stem in (s.num, s.stem) or num_or_stem.removesuffix(".ipynb") == s.stem:
            return s
    raise CourseError(f"step {num_or_stem!r} is not in helpers.figures.PIPELINE: choose one of "
                      f"{', '.join(s.stem for s in PIPELINE)}")


def producers() -> dict[str, str]:
    """``{artifact: number of the step that writes it}``; raises CourseError if two steps write the same one or
    a step reads an artifact nobody writes (and that is not :data:`EXTERNAL`)."""
    out: dict[str, str] = {}
    for s in PIPELINE:
        for a in s.writes:
            if a in out:
                raise CourseError(f"PIPELINE: {a!r} is written by both step {out[a]} and step {s.num}")
            out[a] = s.num
    for s in PIPELINE:
        for a in s.reads:
            if a not in out and a not in EXTERNAL:
                raise CourseError(f"PIPELINE: step {s.num} reads {a!r}, which no step writes and EXTERNAL lacks")
    return out


def edges() -> list[tuple[str, str, str]]:
    """``(from step, to step, artifact)`` for every artifact a step reads from another step."""
    made = producers()
    return [(made[a], s.num, a) for s in PIPELINE for a in s.reads if a in made]


def graph() -> dict[str, set[str]]:
    """``{step: steps it reads from}`` (direct predecessors)."""
    g: dict[str, set[str]] = {s.num: set() for s in PIPELINE}
    for src, dst, _ in edges():
        g[dst].add(src)
    return g


def prerequisites(num_or_stem: str) -> list[str]:
    """The notebook stems a learner runs before ``num_or_stem`` (all transitive producers of what it reads),
    in an order that works (producers first: 07 before 04); ``[]`` for the first steps and for the notebooks outside the pipeline."""
    if num_or_stem.removesuffix(".ipynb") in NOT_IN_PIPELINE:
        return []
    g, todo, seen = graph(), [step(num_or_stem).num], set()
    while todo:
        for p in g[todo.pop()]:
            if p not in seen:
                seen.add(p)
                todo.append(p)
    order = depths()
    return [s.stem for s in sorted(PIPELINE, key=lambda s: (order[s.num], s.num)) if s.num in seen]


def depths() -> dict[str, int]:
    """Each step's column in the picture: the length of the longest chain of producers before it."""
    g = graph()
    depth: dict[str, int] = {}
    for n in TopologicalSorter(g).static_order():  # raises CycleError on a cycle
        depth[n] = max((depth[p] + 1 for p in g[n]), default=0)
    return depth


def _titles() -> dict[str, str]:
    """Step number -> short title (``helpers.overview.STEPS``; the notebook stem where STEPS has no row)."""
    from .overview import STEPS

    titles = {num: title for num, title, *_ in STEPS}
    return {s.num: titles.get(s.num, s.stem[3:].replace("_", " ")) for s in PIPELINE}


# --------------------------------------------------------------------------- drawing
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.family": "DejaVu Sans", "svg.hashsalt": "course", "path.simplify": True})
    return plt


def _canvas(plt, size: tuple, xlim: tuple, ylim: tuple):
    """A figure of ``size`` inches (100 dpi) with one axis-less drawing area spanning ``xlim`` x ``ylim``; returns
    ``(fig, ax)``."""
    fig, ax = plt.subplots(figsize=size, dpi=100)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    return fig, ax


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG without the (version-stamped) Software metadata; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _box(ax, x, y, w, h, text, fc, fontsize=10, weight="normal", ec="#555555"):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=fc, ec=ec, lw=1.1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, weight=weight)


def _arrow(ax, xy_from, xy_to, color="#444444", text=None, fontsize=8):
    ax.annotate("", xy=xy_to, xytext=xy_from, arrowprops=dict(arrowstyle="->", color=color, lw=1.1))
    if text:
        ax.text((xy_from[0] + xy_to[0]) / 2, (xy_from[1] + xy_to[1]) / 2 + 0.08, text, ha="center",
                va="bottom", fontsize=fontsize, color="#333333")


COLORS = {"data": "#fde9c9", "model": "#d6e9f8", "use": "#dff3df", "ship": "#f3dff0", "ext": "#eeeeee"}
KIND = {"01": "data", "02": "model", "03": "model", "07": "model", "04": "model", "11": "ship"}


def draw_pipeline(path: str | Path | None = None) -> Path:
    """The course as a dependency graph: a box per step (columns = :func:`depths`), arrows labelled with the
    artifact that flows along them. Returns the PNG path (default ``images/pipeline.png``)."""
    plt = _plt()
    path = Path(path or IMAGES / "pipeline.png")
    depth, titles = depths(), _titles()
    columns: dict[int, list[str]] = {}
    for s in PIPELINE:
        columns.setdefault(depth[s.num], []).append(s.num)
    for col in columns.values():
        col.sort()
    height = max(len(c) for c in columns.values())
    fig, ax = _canvas(plt, (15, 7.5), (-0.2, 3.05 * len(columns) + 0.2), (-0.8, height + 0.3))
    w, h, pos = 2.0, 0.62, {}
    for d, nums in columns.items():
        top = (height + len(nums)) / 2 - 1
        lift = 0.9 if len(nums) == 1 and d % 2 else 0  # odd single columns sit higher: long edges pass below
        for i, num in enumerate(nums):
            x, y = 3.05 * d, top - i * (1 if len(nums) > 2 else 1.6) + lift
            pos[num] = (x, y)
            _box(ax, x, y, w, h, f"{num}  {titles[num]}", COLORS[KIND.get(num, 'use')], 9.5, "bold")
    labelled: dict[str, int] = {}
    for src, dst, art in edges():
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        skip = depth[dst] - depth[src] > 1  # a long edge bends below the boxes it would cross
        ax.annotate("", xy=(x1, y1 + h / 2 - (0.15 if skip else 0)), xytext=(x0 + w, y0 + h / 2 - (0.15 if skip else 0)),
                    arrowprops=dict(arrowstyle="->", color="#777777" if skip else "#444444", lw=1.0,
                                    connectionstyle=f"arc3,rad={0.18 if skip else 0.0}"))
        key = f"{src}|{art}"
        if key not in labelled:  # one label per artifact, above its producer's box
            labelled[key] = sum(k.startswith(src + "|") for k in labelled)
            ax.text(x0 + w / 2, y0 + h + 0.05 + 0.2 * labelled[key], art, fontsize=8.5, color="#1f4e79",
                    ha="center", va="bottom", style="italic")
    for art in EXTERNAL:
        readers = [s.num for s in PIPELINE if art in s.reads]
        x, y = pos[readers[0]]
        ax.text(x + w / 2, y - 0.08, f"reads {art}", fontsize=8, ha="center", va="top", color="#666666")
    ax.text(0, -0.7, "00 overview: the tiny artifacts of every step.  13 appendix: troubleshooting.",
            fontsize=9, style="italic", color="#444444")
    fig.tight_layout()
    return _save(fig, path)


def draw_lora_merge(path: str | Path | None = None) -> Path:
    """Step 04: ``W' = W + B @ A * alpha / r`` with the shapes, and the ordered two-LoRA merge with the vocabulary
    at each step. Returns the PNG path."""
    plt = _plt()
    path = Path(path or IMAGES / "04_lora_merge.png")
    fig, ax = _canvas(plt, (13, 5.2), (0, 13), (0, 5.2))
    _box(ax, 0.3, 2.6, 2.2, 2.2, "W\nd_out x d_in\n(frozen base)", COLORS["model"], 11)
    ax.text(2.8, 3.7, "+", fontsize=22, ha="center", va="center")
    _box(ax, 3.2, 2.6, 0.55, 2.2, "B\nd_out\nx r", COLORS["data"], 9)
    ax.text(4.0, 3.7, "@", fontsize=16, ha="center", va="center")
    _box(ax, 4.3, 4.05, 2.2, 0.55, "A   r x d_in", COLORS["data"], 9)
    ax.text(6.95, 3.7, "x  alpha / r", fontsize=13, ha="left", va="center")
    ax.text(8.9, 3.7, "=", fontsize=22, ha="center", va="center")
    _box(ax, 9.4, 2.6, 2.2, 2.2, "W'\nsame shape as W\n(no extra cost\nat inference)", COLORS["use"], 10)
    ax.text(0.3, 2.2, "r << d: B@A has rank r.  B starts at 0, so training starts from W itself.  "
            "modules_to_save (embed_tokens, lm_head) are whole tensors that replace W.", fontsize=9)
    steps = [("LLaMA base\nvocab 32000", COLORS["model"]),
             ("+ Chinese-LLaMA-LoRA\nresize to 49953\n(modules_to_save rows)", COLORS["data"]),
             ("+ Chinese-Alpaca-LoRA\nresize to 49954 ([PAD])\ntrained on the merged model", COLORS["data"]),
             ("merged Chinese-Alpaca\nvocab 49954", COLORS["use"])]
    for i, (text, fc) in enumerate(steps):
        _box(ax, 0.3 + 3.25 * i, 0.25, 2.75, 1.3, text, fc, 9)
        if i:
            _arrow(ax, (3.25 * i + 0.05, 0.9), (3.25 * i + 0.3, 0.9))
    ax.text(6.5, 1.7, "order = training order (--lora_model llama_lora,alpaca_lora); reversed, the vocabulary "
            "would shrink 49954 -> 49953", fontsize=9, ha="center", color="#8b0000")
    fig.tight_layout()
    return _save(fig, path)


def draw_label_masking(path: str | Path | None = None) -> Path:
    """Step 07: SFT labels (the prompt is -100, the reply and EOS are trained) and the three ways to batch
    (``longest``, ``pad_to_max``, ``flatten``). Returns the PNG path."""
    plt = _plt()
    path = Path(path or IMAGES / "07_label_masking_packing.png")
    fig, ax = _canvas(plt, (13, 6.4), (0, 20), (0, 10))
    cell = lambda x, y, t, fc: _box(ax, x, y, 0.9, 0.7, t, fc, 8)  # noqa: E731
    tokens = ["<s>", "Below", "...", "### Inst", "...", "### Resp:", "Reply", "tokens", "...", "</s>"]
    ax.text(0.1, 9.5, "SFT record:  input_ids", fontsize=10, weight="bold")
    for i, t in enumerate(tokens):
        cell(2.2 + i * 1.0, 8.6, t, COLORS["model"] if i < 6 else COLORS["use"])
    ax.text(0.1, 8.0, "labels", fontsize=10, weight="bold")
    for i, t in enumerate(tokens):
        cell(2.2 + i * 1.0, 7.7, "-100" if i < 6 else t, COLORS["ext"] if i < 6 else COLORS["use"])
    ax.text(12.6, 8.1, "loss only on the reply + EOS\n(no EOS: the model never learns to stop)", fontsize=9)
    rows = {"longest": [5, 3, 4], "pad_to_max": [5, 3, 4], "flatten": [5, 3, 4]}
    palette = ["#d6e9f8", "#fde9c9", "#dff3df"]
    y = 6.2
    for mode, lengths in rows.items():
        width = {"longest": max(lengths), "pad_to_max": 8, "flatten": sum(lengths)}[mode]
        ax.text(0.1, y - 0.2, f"--packing {mode}", fontsize=10, weight="bold")
        if mode == "flatten":
            x = 2.2
            for k, n in enumerate(lengths):
                for j in range(n):
                    _box(ax, x, y - 0.5, 0.6, 0.5, "-100" if j == 0 else "", palette[k], 6)  # every example
                    x += 0.65
            ax.text(x + 0.3, y - 0.3, "one row, position_ids restart per example,\nfirst label of each example = "
                    "-100: no padding", fontsize=8, va="center")
            y -= 1.2
            continue
        for k, n in enumerate(lengths):
            for j in range(width):
                _box(ax, 2.2 + j * 0.65, y - 0.5 - k * 0.6, 0.6, 0.5, "" if j < n else "pad", palette[k] if j < n
                     else COLORS["ext"], 6)
        ax.text(2.2 + width * 0.65 + 0.3, y - 0.8, ("pad to the longest row" if mode == "longest" else
                "pad every row to --max_seq_length") + "\n(pad: label -100, attention_mask 0)", fontsize=8, va="center")
        y -= 0.6 * len(lengths) + 0.5
    fig.tight_layout()
    return _save(fig, path)


def draw_rag_flow(path: str | Path | None = None) -> Path:
    """Step 08: read -> split -> embed -> FAISS (dense) and BM25 (lexical) -> reciprocal-rank fusion -> top-k
    chunks in the prompt -> LLM -> answer with sources. Returns the PNG path."""
    from .chains import CHUNK_OVERLAP, CHUNK_SIZE

    plt = _plt()
    path = Path(path or IMAGES / "08_rag_flow.png")
    fig, ax = _canvas(plt, (14, 4.6), (0, 14), (0, 4.6))
    _box(ax, 0.2, 1.9, 1.6, 0.9, "document\n(.txt)", COLORS["ext"], 9)
    _box(ax, 2.3, 1.9, 1.7, 0.9, f"split at Chinese\npunctuation\n({CHUNK_SIZE} / overlap {CHUNK_OVERLAP})", COLORS["data"], 8)
    _box(ax, 4.6, 3.1, 1.9, 0.9, "embed (tiny: USE multi-\nlingual; real: bge-small-zh)\nFAISS index", COLORS["model"], 8)
    _box(ax, 4.6, 0.7, 1.9, 0.9, "jieba words\nBM25", COLORS["model"], 8)
    _box(ax, 7.1, 1.9, 1.7, 0.9, "fusion (RRF)\ntop-k chunks", COLORS["data"], 8)
    _box(ax, 9.3, 1.9, 2.0, 0.9, "prompt: template\n+ context + question\n(stuff / refine)", COLORS["data"], 8)
    _box(ax, 11.8, 1.9, 1.9, 0.9, "LLM (local or\nOpenAI API) ->\nanswer + sources", COLORS["use"], 8)
    _arrow(ax, (1.8, 2.35), (2.3, 2.35))
    _arrow(ax, (4.0, 2.5), (4.6, 3.4))
    _arrow(ax, (4.0, 2.2), (4.6, 1.3))
    _arrow(ax, (6.5, 3.4), (7.1, 2.6))
    _arrow(ax, (6.5, 1.3), (7.1, 2.1))
    _arrow(ax, (8.8, 2.35), (9.3, 2.35))
    _arrow(ax, (11.3, 2.35), (11.8, 2.35))
    ax.text(5.55, 4.25, "question -> same embedding -> nearest chunks", fontsize=8, ha="center")
    ax.text(5.55, 0.35, "question -> jieba words -> BM25 scores", fontsize=8, ha="center")
    ax.text(7.95, 1.55, "score = sum of w / (60 + rank)", fontsize=8, ha="center")
    fig.tight_layout()
    return _save(fig, path)


def draw_chain_types(path: str | Path | None = None) -> Path:
    """Step 09: how ``stuff``, ``refine`` and ``map_reduce`` feed a long document's chunks to the LLM (number of
    calls, what each call sees). Returns the PNG path."""
    plt = _plt()
    path = Path(path or IMAGES / "09_chain_types.png")
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), dpi=100)
    for ax in axes:
        ax.set_xlim(0, 5)
        ax.set_ylim(0, 6)
        ax.axis("off")
    a, b, c = axes
    a.set_title("stuff: 1 call", fontsize=11, weight="bold")
    for i in range(3):
        _box(a, 0.3, 4.6 - i * 0.8, 1.4, 0.6, f"chunk {i + 1}", COLORS["data"], 9)
    _box(a, 2.6, 3.1, 1.4, 1.0, "LLM", COLORS["model"], 10)
    _box(a, 2.6, 0.8, 1.4, 0.8, "summary", COLORS["use"], 9)
    _arrow(a, (1.7, 3.9), (2.6, 3.6))
    _arrow(a, (3.3, 3.1), (3.3, 1.6))
    a.text(0.2, 0.2, "all chunks in one prompt:\nmust fit the context window", fontsize=8)
    b.set_title("refine: n calls, in order", fontsize=11, weight="bold")
    for i in range(3):
        _box(b, 0.3, 4.6 - i * 1.5, 1.4, 0.6, f"chunk {i + 1}", COLORS["data"], 9)
        _box(b, 2.3, 4.6 - i * 1.5, 1.0, 0.6, "LLM", COLORS["model"], 9)
        _box(b, 3.7, 4.6 - i * 1.5, 1.2, 0.6, f"summary {i + 1}", COLORS["use"], 8)
        _arrow(b, (1.7, 4.9 - i * 1.5), (2.3, 4.9 - i * 1.5))
        _arrow(b, (3.3, 4.9 - i * 1.5), (3.7, 4.9 - i * 1.5))
        if i < 2:
            _arrow(b, (4.3, 4.6 - i * 1.5), (2.8, 4.2 - (i + 1) * 1.5 + 0.4 + 0.6))
    b.text(0.2, 0.2, "each call: previous summary + next chunk\nsequential (no parallelism)", fontsize=8)
    c.set_title("map_reduce: n + 1 calls", fontsize=11, weight="bold")
    for i in range(3):
        _box(c, 0.2, 4.6 - i * 1.1, 1.2, 0.6, f"chunk {i + 1}", COLORS["data"], 9)
        _box(c, 1.8, 4.6 - i * 1.1, 0.8, 0.6, "LLM", COLORS["model"], 9)
        _arrow(c, (1.4, 4.9 - i * 1.1), (1.8, 4.9 - i * 1.1))
        _arrow(c, (2.6, 4.9 - i * 1.1), (3.2, 3.9))
    _box(c, 3.2, 3.3, 1.3, 0.9, "LLM\n(reduce)", COLORS["model"], 9)
    _box(c, 3.2, 1.4, 1.3, 0.8, "summary", COLORS["use"], 9)
    _arrow(c, (3.85, 3.3), (3.85, 2.2))
    c.text(0.2, 0.2, "map calls are independent (parallel);\nreduce collapses partial summaries\n"
           "(token counting decides when)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def draw_gguf_layout(path: str | Path | None = None) -> Path:
    """Step 11: a GGUF file from first byte to last: header, metadata key/values, tensor infos, alignment padding,
    tensor data. Returns the PNG path."""
    plt = _plt()
    path = Path(path or IMAGES / "11_gguf_layout.png")
    fig, ax = _canvas(plt, (13, 6), (0, 13), (0, 6.4))
    parts = [
        ("header", "magic 'GGUF' | version 3 | tensor_count (u64) | metadata_kv_count (u64)", COLORS["ext"], 0.6),
        ("metadata", "general.architecture = llama   general.name   general.file_type (F16, Q4_K_M, ...)\n"
                     "llama.context_length  llama.embedding_length  llama.block_count  llama.rope.freq_base\n"
                     "llama.attention.head_count / head_count_kv (GQA)   llama.rope.scaling.*\n"
                     "tokenizer.ggml.model = llama   tokens[]  scores[]  token_type[] (1 normal, 2 unknown, "
                     "3 control, 6 byte)\ntokenizer.ggml.bos/eos/padding_token_id   add_bos_token   tokenizer.chat_template\n"
                     "general.sampling.temp / top_k / top_p / penalty_repeat (the course's generation defaults)",
         COLORS["data"], 2.1),
        ("tensor infos", "per tensor: name (token_embd.weight, blk.0.attn_q.weight, ...) | n_dims | dims | "
                         "type (F16, Q8_0, Q4_K, ...) | offset", COLORS["model"], 0.8),
        ("padding", "zeros up to general.alignment (32 bytes)", COLORS["ext"], 0.4),
        ("tensor data", "the weights, each tensor aligned; quantized in blocks (Q4_K: 256 weights per super-block "
                        "with scales)\nread with mmap: loading is a page-in, not a parse", COLORS["use"], 1.4),
    ]
    y = 6.2
    for name, text, fc, h in parts:
        y -= h + 0.1
        _box(ax, 0.2, y, 2.0, h, name, fc, 10, "bold")
        _box(ax, 2.4, y, 10.4, h, text, fc, 8.5)
    fig.tight_layout()
    return _save(fig, path)


FIGURES = {
    "pipeline.png": draw_pipeline,
    "04_lora_merge.png": draw_lora_merge,
    "07_label_masking_packing.png": draw_label_masking,
    "08_rag_flow.png": draw_rag_flow,
    "09_chain_types.png": draw_chain_types,
    "11_gguf_layout.png": draw_gguf_layout,
}


def draw_all(out_dir: str | Path | None = None) -> list[Path]:
    """Draw every picture of :data:`FIGURES` into ``out_dir`` (default ``images/``); returns the paths."""
    out = Path(out_dir or IMAGES)
    return [draw(out / name) for name, draw in FIGURES.items()]


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.figures``."""
    ap = argparse.ArgumentParser(prog="python -m helpers.figures", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(IMAGES), help="folder for the PNGs (default: images/)")
    return ap


def _run(args) -> int:
    for p in draw_all(Path(args.out)):
        print(p)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.figures [--out DIR]``; returns the exit code."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
