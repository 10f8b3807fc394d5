"""Course step 00: the pipeline picture, an environment check and the per-step resource table."""
from __future__ import annotations

from pathlib import Path

from .core import CourseError

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
    ("12", "evaluate", "ppl, C-Eval-style choice"),
]

def draw_pipeline(path: str | Path | None = None) -> Path:
    """Draw the course pipeline as a dependency graph (:func:`helpers.figures.draw_pipeline`: steps, and the
    artifacts on the edges) to ``images/pipeline.png``; returns the path."""
    from .figures import draw_pipeline as draw

    return draw(path)


def header(step: str) -> str:
    """The markdown block for the top of notebook ``step`` (``"04"``, ``"04_merge_lora"``): the time it takes in
    the tiny profile (measured: ``data/course_times.json``), in the real profile (the rehearsal's measured 1.3B
    figures, ``data/rehearsal.json``, and the 7B estimate of :func:`helpers.catalog.step_needs`) and the notebooks
    to run first (:func:`helpers.figures.prerequisites`). Returns the markdown string."""
    from .catalog import step_needs
    from .course import notebooks, read_rehearsal, read_times
    from .figures import prerequisites

    stems = {p.stem: p for p in notebooks()}
    stem = next((s for s in stems if s == step.removesuffix(".ipynb") or s.startswith(f"{step}_")), None)
    if stem is None:
        raise CourseError(f"step {step!r}: no notebooks/{step}*.ipynb; choose one of {', '.join(sorted(stems))}")
    tiny = {r["notebook"]: r for r in read_times().get("notebooks", [])}.get(f"{stem}.ipynb")
    real = {r["notebook"]: r for r in read_rehearsal().get("notebooks", [])}.get(f"{stem}.ipynb")
    need = next((n for n in step_needs("hfl/chinese-alpaca-2-7b") if n.step == stem), None)
    lines = [f"tiny 实测约 {tiny['seconds']:.0f} 秒（2 核 CPU，`make course`）" if tiny
             else "tiny 在 2 核 CPU 上不超过约 1 分钟（CI 的上限）"]
    if real:
        lines.append(f"real 排练（1.3B 随机权重，CPU）{real['seconds']:.0f} 秒、峰值内存 {real['peak_rss_gib']:.1f} GiB")
    if need:
        gpu = f"显存 {need.gpu_gib} GiB" if need.gpu_gib else "不需要 GPU"
        lines.append(f"7B 估计：{need.time}，{gpu}，内存 {need.ram_gib} GiB，磁盘 {need.disk_gib} GiB")
    pre = prerequisites(stem)
    links = "、".join(f"[{p[:2]}]({p}.ipynb)" for p in pre) if pre else "无（可以直接运行：tiny 产物会自动生成）"
    return "> **用时**：" + "；".join(lines) + "。\n>\n> **前置**：" + links + \
        ("（tiny 模式下不必先跑它们：需要的迷你产物由 `helpers.tiny` 现场生成）" if pre else "")


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
