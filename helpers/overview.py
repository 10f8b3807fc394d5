"""Course step 00: the pipeline picture, an environment check and the per-step resource table."""
from __future__ import annotations

from pathlib import Path

from .core import REPO_ROOT

STEPS = [
    ("01", "crawl prompts", "instruction data"),
    ("02", "convert Meta -> HF", "consolidated.*.pth"),
    ("03", "extend vocab", "Chinese SentencePiece"),
    ("04", "merge LoRA", "LLaMA-LoRA, Alpaca-LoRA"),
    ("05", "inference", "template, batch"),
    ("06", "web UI", "Gradio chat"),
    ("07", "PT + SFT LoRA", "train adapters"),
    ("08", "RAG QA", "LangChain + FAISS"),
    ("09", "summarize", "stuff/refine/map_reduce"),
    ("10", "OpenAI API", "FastAPI server"),
    ("11", "export", "GGUF, Ollama, fastllm"),
]

def draw_pipeline(path: str | Path | None = None) -> Path:
    """Draw the course pipeline (one box per notebook) to ``images/pipeline.png``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    path = Path(path or REPO_ROOT / "images" / "pipeline.png")
    fig, ax = plt.subplots(figsize=(13, 4.2), dpi=100)
    ax.set_xlim(0, 6)
    ax.set_ylim(0, 2.2)
    ax.axis("off")
    colors = {"data": "#fde9c9", "model": "#d6e9f8", "use": "#dff3df", "ship": "#f3dff0"}
    kinds = ["data", "model", "model", "model", "use", "use", "model", "use", "use", "use", "ship"]
    positions = [(i % 6, 1.25 if i < 6 else 0.15) for i in range(len(STEPS))]
    for (num, title, sub), kind, (x, y) in zip(STEPS, kinds, positions):
        ax.add_patch(FancyBboxPatch((x + 0.06, y), 0.86, 0.75, boxstyle="round,pad=0.02",
                                    fc=colors[kind], ec="#555555", lw=1.2))
        ax.text(x + 0.49, y + 0.52, f"{num}  {title}", ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x + 0.49, y + 0.22, sub, ha="center", va="center", fontsize=8.5, color="#333333")
    for i in range(len(STEPS) - 1):
        (x0, y0), (x1, y1) = positions[i], positions[i + 1]
        if y0 == y1:
            ax.annotate("", xy=(x1 + 0.06, y1 + 0.37), xytext=(x0 + 0.93, y0 + 0.37),
                        arrowprops=dict(arrowstyle="->", color="#444444"))
        else:  # wrap from the end of the first row to the start of the second, through the gap
            mid = (y0 + y1 + 0.75) / 2
            ax.plot([x0 + 0.49, x0 + 0.49, x1 + 0.49], [y0 - 0.02, mid, mid], color="#444444", lw=1)
            ax.annotate("", xy=(x1 + 0.49, y1 + 0.77), xytext=(x1 + 0.49, mid),
                        arrowprops=dict(arrowstyle="->", color="#444444"))
    ax.text(5.5, 0.5, "00 overview\n(tiny artifacts)", ha="center", va="center", fontsize=9, style="italic")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def environment_table():
    """Versions and device as a one-column DataFrame (for notebook 00)."""
    import pandas as pd

    from .core import detect_platform, pick_device, versions

    info = versions()
    info.update({"device": pick_device(), "platform": detect_platform()})
    return pd.DataFrame({"value": info})


def resources_table(repos=("hfl/chinese-alpaca-2-1.3b", "hfl/chinese-alpaca-2-7b")):
    """Per-step needs of the real profile (estimates from :func:`helpers.catalog.step_needs`) with the rehearsal's
    measured figures for the 1.3B size beside them (``data/rehearsal.json``: CPU, stand-in weights)."""
    from .catalog import needs_table
    from .course import read_rehearsal

    table = needs_table(repos)
    measured = {r["notebook"].removesuffix(".ipynb"): r for r in read_rehearsal().get("notebooks", [])}
    col = []
    for step, model in table.index:
        m = measured.get(step) or next((v for k, v in measured.items() if k.startswith(step[:2] + "_")), None)
        col.append(f"{m['seconds']:.0f} s, {m['peak_rss_gib']:.1f} GiB RSS" if m and "1.3b" in model else "")
    table["rehearsal (CPU, measured)"] = col
    return table


def needs(step: str):
    """The rows of :func:`resources_table` for one notebook (``"05_inference"``): estimates for 1.3B and 7B and the
    rehearsal's measured time and peak RSS — what a notebook's real section shows."""
    table = resources_table()
    return table.loc[step]
