"""Notebook harness: list, check, strip and execute the course notebooks.

    python -m helpers.course run [--profile tiny] [--out build/executed] [NOTEBOOK ...]
    python -m helpers.course strip      # the committed state: no outputs, no execution counts
    python -m helpers.course check      # parameters cell, setup call, clean state
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .core import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
COURSE = [
    "00_overview", "01_crawl_prompts", "02_convert_llama", "03_extend_vocab", "04_merge_lora", "05_inference",
    "06_webui", "07_pretrain_and_sft_lora", "08_langchain_qa", "09_langchain_summarize", "10_openai_api",
    "11_export_deploy",
]


def notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def problems(path: Path) -> list[str]:
    """What is wrong with a committed notebook (empty list = fine)."""
    nb = _read(path)
    out = []
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if not code or "parameters" not in code[0].get("metadata", {}).get("tags", []):
        out.append("first code cell is not tagged 'parameters'")
    elif "PROFILE" not in "".join(code[0]["source"]):
        out.append("parameters cell does not define PROFILE")
    if not any("setup(" in "".join(c["source"]) for c in code[:3]):
        out.append("none of the first three code cells calls helpers.setup(...)")
    for i, c in enumerate(code):
        if c.get("outputs") or c.get("execution_count") is not None:
            out.append(f"code cell {i} has outputs or an execution count (run `make strip`)")
            break
    for i, c in enumerate(code):
        n = len("".join(c["source"]).strip().splitlines())
        if n > 25:
            out.append(f"code cell {i} has {n} lines: move logic into helpers/")
    return out


def strip(path: Path) -> bool:
    """Remove outputs and execution counts in place; True when the file changed."""
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
        c.get("metadata", {}).pop("execution", None)
        c.get("metadata", {}).pop("papermill", None)
    nb["metadata"] = {k: v for k, v in nb.get("metadata", {}).items() if k in ("kernelspec", "language_info")}
    new = json.dumps(nb, ensure_ascii=False, indent=1) + "\n"
    if new != raw:
        path.write_text(new, encoding="utf-8")
        return True
    return False


def run(paths: list[Path], profile: str = "tiny", out_dir: Path | None = None, timeout: int = 900) -> list[dict]:
    """Execute notebooks headless with papermill (``PROFILE`` injected); returns per-notebook timings."""
    import logging

    import papermill as pm

    # papermill logs "Unable to parse line" for parameters with trailing comments; the values are still injected
    logging.getLogger("papermill.translators").setLevel(logging.ERROR)
    out_dir = Path(out_dir or REPO_ROOT / "build" / "executed")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for path in paths:
        start = time.perf_counter()
        status = "ok"
        try:
            pm.execute_notebook(str(path), str(out_dir / path.name), parameters={"PROFILE": profile},
                                cwd=str(path.parent), kernel_name="python3", progress_bar=False,
                                execution_timeout=timeout)
        except Exception as e:  # papermill raises PapermillExecutionError with the failing cell
            status = f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"
        seconds = time.perf_counter() - start
        results.append({"notebook": path.name, "seconds": round(seconds, 1), "status": status})
        print(f"{path.name:40s} {seconds:7.1f} s  {status}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute notebooks headless")
    r.add_argument("notebooks", nargs="*", help="notebook files (default: all, in course order)")
    r.add_argument("--profile", default="tiny", choices=["tiny", "real"])
    r.add_argument("--out", default=str(REPO_ROOT / "build" / "executed"))
    r.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    sub.add_parser("strip", help="remove outputs from the committed notebooks")
    sub.add_parser("check", help="check the committed notebooks")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        paths = [Path(p) for p in args.notebooks] or notebooks()
        total = time.perf_counter()
        results = run(paths, args.profile, Path(args.out), args.timeout)
        print(f"{'total':40s} {time.perf_counter() - total:7.1f} s  ({len(results)} notebooks, outputs in {args.out})")
        return 1 if any(r["status"] != "ok" for r in results) else 0
    if args.cmd == "strip":
        for p in notebooks():
            if strip(p):
                print("stripped", p.name)
        return 0
    bad = {p.name: problems(p) for p in notebooks()}
    for name, msgs in bad.items():
        for m in msgs:
            print(f"{name}: {m}")
    return 1 if any(bad.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
