"""Notebook harness: list, check, strip and execute the course notebooks.

    python -m helpers.course run [--profile tiny] [--out build/executed] [NOTEBOOK ...]
    python -m helpers.course rehearse [--record] [NOTEBOOK ...]   # real profile on the stand-in hub, CPU
    python -m helpers.course strip      # the committed state: no outputs, no execution counts
    python -m helpers.course check      # parameters cell, setup call, clean state
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path

from . import standin
from .core import REPO_ROOT, cli_main
from .io import write_json

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
COURSE = [
    "00_overview", "01_crawl_prompts", "02_convert_llama", "03_extend_vocab", "04_merge_lora", "05_inference",
    "06_webui", "07_pretrain_and_sft_lora", "08_langchain_qa", "09_langchain_summarize", "10_openai_api",
    "11_export_deploy", "12_evaluate",
    "13_troubleshooting",  # appendix (issue 18)
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


def _peak_rss_kib(pid: int) -> int:
    """The peak resident set (VmHWM, KiB) of a live process; its current RSS where /proc has no VmHWM."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss // 1024
    except Exception:  # the process ended between listing and reading
        return 0


class PeakMemory:
    """Watches this process's descendants (the notebook kernel and any server it starts) while a notebook runs.

    ``kernel_gib``: the largest single process's peak RSS (exact: the kernel's VmHWM, read until it exits);
    ``tree_gib``: the largest sum of the descendants' current RSS seen by sampling every ``interval`` seconds.
    """

    def __init__(self, interval: float = 0.2):
        self.interval, self.kernel_kib, self.tree_kib = interval, 0, 0

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.interval):
            try:
                kids = me.children(recursive=True)
            except psutil.Error:  # pragma: no cover
                continue
            self.kernel_kib = max([self.kernel_kib] + [_peak_rss_kib(k.pid) for k in kids])
            total = 0
            for k in kids:
                try:
                    total += k.memory_info().rss // 1024
                except psutil.Error:
                    pass
            self.tree_kib = max(self.tree_kib, total)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def kernel_gib(self) -> float:
        return round(self.kernel_kib / 2**20, 2)

    @property
    def tree_gib(self) -> float:
        return round(self.tree_kib / 2**20, 2)


# Environment of the kernels `run` starts: debugpy's "frozen modules" warning off (PYDEVD_DISABLE_FILE_VALIDATION).
KERNEL_ENV = {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}
LOG_TAIL = 25  # lines of a failed notebook's kernel log printed under its FAILED line
# Kernel log lines never worth showing, even under a failure (a learner cannot act on them).
KERNEL_NOISE = ("Kernel is running over TCP without encryption", "Debugger warning:", "frozen_modules",
                "PYDEVD_DISABLE_FILE_VALIDATION", "Debugging will proceed")


@contextlib.contextmanager
def kernel_output_to(log: Path):
    """Send everything written to this process's file descriptors 1 and 2 while the block runs -- and so the
    stdout/stderr of the kernel it starts and of the servers the kernel starts (they inherit them) -- to ``log``.

    The kernel's own log lines ("Kernel is running over TCP without encryption"), C libraries printing from inside
    the kernel (llama.cpp's loader) and server access logs are noise a learner cannot act on; cell outputs are not
    affected (they travel over the kernel protocol into the executed notebook). Yields the log path.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "wb") as f:
        try:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield log
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _tail(log: Path, n: int = LOG_TAIL) -> str:
    """The last ``n`` lines of ``log`` without :data:`KERNEL_NOISE`, indented for the terminal ("" when none)."""
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if log.is_file() else []
    lines = [line for line in lines if line.strip() and not any(noise in line for noise in KERNEL_NOISE)][-n:]
    return "\n".join("    " + line for line in lines)


def run(paths: list[Path], profile: str = "tiny", out_dir: Path | None = None, timeout: int = 900,
        memory: bool = False) -> list[dict]:
    """Execute notebooks headless with papermill (``PROFILE`` injected); returns per-notebook timings
    (and, with ``memory``, the peak RSS of the kernel and of all processes it started).

    Prints one line per notebook. The kernel's stdout/stderr go to ``<out_dir>/<notebook>.log`` (see
    :func:`kernel_output_to`); when a notebook fails, the failing cell's error and the log's last lines are printed.
    """
    import papermill as pm

    # papermill logs "Unable to parse line" for parameters with trailing comments; the values are still injected
    logging.getLogger("papermill.translators").setLevel(logging.ERROR)
    out_dir = Path(out_dir or REPO_ROOT / "build" / "executed")
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_env = {k: os.environ.get(k) for k in KERNEL_ENV}
    os.environ.update(KERNEL_ENV)
    results = []
    try:
        for path in paths:
            results.append(_run_one(pm, Path(path), profile, out_dir, timeout, memory))
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return results


def _run_one(pm, path: Path, profile: str, out_dir: Path, timeout: int, memory: bool) -> dict:
    """Execute one notebook (see :func:`run`); prints its line and returns its row."""
    start = time.perf_counter()
    status, detail = "ok", ""
    watch = PeakMemory() if memory else None
    log = out_dir / f"{path.stem}.log"
    try:
        if watch:
            watch.__enter__()
        with kernel_output_to(log):
            pm.execute_notebook(str(path), str(out_dir / path.name), parameters={"PROFILE": profile},
                                cwd=str(path.parent), kernel_name="python3", progress_bar=False,
                                execution_timeout=timeout)
    except Exception as e:  # papermill raises PapermillExecutionError with the failing cell
        text = str(e).strip()
        status = f"FAILED: {type(e).__name__}: {text.splitlines()[-1][:200] if text else ''}"
        tail = _tail(log)
        detail = f"\n  kernel log {log} (last lines):\n{tail}" if tail else ""
    finally:
        if watch:
            watch.__exit__(None, None, None)
    seconds = time.perf_counter() - start
    row = {"notebook": path.name, "seconds": round(seconds, 1), "status": status}
    mem = ""
    if watch:
        row.update(peak_rss_gib=watch.kernel_gib, peak_tree_gib=watch.tree_gib)
        mem = f"  peak RSS {watch.kernel_gib:5.2f} GiB (all processes {watch.tree_gib:5.2f})"
    print(f"{path.name:40s} {seconds:7.1f} s{mem}  {status}{detail}", flush=True)
    return row


REHEARSAL_RECORD = REPO_ROOT / "data" / "rehearsal.json"


def rehearse(paths: list[Path] | None = None, out_dir: Path | None = None, timeout: int = 1800,
             record: bool = False, cache_dir: Path | None = None) -> list[dict]:
    """Run notebooks with ``PROFILE="real"`` against the offline stand-in hub on CPU (``make rehearse``).

    The stand-in hub must be built (``python -m helpers.standin build``); the notebooks see the real repo ids,
    ``HF_HUB_OFFLINE=1``, ``COURSE_DEVICE=cpu`` and ``COURSE_REHEARSAL=1`` (long loops shortened, said in the
    output). Returns the per-notebook rows; with ``record`` writes them to ``data/rehearsal.json``, the figures
    the real sections and notebook 00 show.
    """
    standin.require(cache_dir)
    saved = dict(os.environ)
    try:
        os.environ.update(standin.use(cache_dir))
        os.environ.update(COURSE_DEVICE="cpu", COURSE_REHEARSAL="1", COURSE_PROFILE="real")
        rows = run(paths or notebooks(), "real", out_dir or REPO_ROOT / "build" / "rehearsal", timeout, memory=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if record and all(r["status"] == "ok" for r in rows):
        import torch

        old = read_rehearsal()
        merged = {r["notebook"]: r for r in old.get("notebooks", [])} | {r["notebook"]: r for r in rows}
        write_json(REHEARSAL_RECORD, {
            "what": "make rehearse: PROFILE=real on the stand-in hub (real 1.3B sizes, random weights), CPU",
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d"),
            "notebooks": [merged[k] for k in sorted(merged)]})
    return rows


TIMES_RECORD = REPO_ROOT / "data" / "course_times.json"


def record_times(rows: list[dict]) -> Path:
    """Merge the tiny-profile timings of ``rows`` into ``data/course_times.json``; returns its path."""
    old = {r["notebook"]: r for r in read_times().get("notebooks", [])}
    new = old | {r["notebook"]: {"notebook": r["notebook"], "seconds": r["seconds"]} for r in rows}
    return write_json(TIMES_RECORD, {
        "what": "python -m helpers.course run --record: PROFILE=tiny, seconds per notebook (kernel start included)",
        "machine": f"{os.cpu_count()} cores, {platform.machine()}", "date": time.strftime("%Y-%m-%d"),
        "notebooks": [new[k] for k in sorted(new)]})


def read_times() -> dict:
    """The recorded tiny timings (``data/course_times.json``), ``{}`` before the first ``run --record``."""
    if not TIMES_RECORD.exists():
        return {}
    return json.loads(TIMES_RECORD.read_text(encoding="utf-8"))


def read_rehearsal() -> dict:
    """The recorded rehearsal figures (``data/rehearsal.json``), ``{}`` before the first ``--record``."""
    if not REHEARSAL_RECORD.exists():
        return {}
    return json.loads(REHEARSAL_RECORD.read_text(encoding="utf-8"))


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.course`` (sub-commands run, rehearse, strip, check)."""
    ap = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute notebooks headless")
    r.add_argument("notebooks", nargs="*", help="notebook files (default: all, in course order)")
    r.add_argument("--profile", default="tiny", choices=["tiny", "real"])
    r.add_argument("--out", default=str(REPO_ROOT / "build" / "executed"))
    r.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    r.add_argument("--record", action="store_true",
                   help="write the tiny timings to data/course_times.json (shown at the top of each notebook)")
    h = sub.add_parser("rehearse", help="run notebooks with PROFILE=real on the offline stand-in hub (CPU)")
    h.add_argument("notebooks", nargs="*", help="notebook files (default: all, in course order)")
    h.add_argument("--out", default=str(REPO_ROOT / "build" / "rehearsal"))
    h.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    h.add_argument("--cache_dir", default=None, help="stand-in hub folder (default: <workspace>/standin-hub)")
    h.add_argument("--record", action="store_true", help="write the figures to data/rehearsal.json")
    sub.add_parser("strip", help="remove outputs from the committed notebooks")
    sub.add_parser("check", help="check the committed notebooks")
    return ap


def _run(args) -> int:
    """The CLI: one sub-command; returns 1 when a notebook failed or a check found a problem."""
    paths = [Path(p) for p in getattr(args, "notebooks", [])] or notebooks()
    total = time.perf_counter()
    if args.cmd == "run":
        rows = run(paths, args.profile, Path(args.out), args.timeout)
        if args.record and args.profile == "tiny" and all(r["status"] == "ok" for r in rows):
            record_times(rows)
        print(f"{'total':40s} {time.perf_counter() - total:7.1f} s  ({len(rows)} notebooks, outputs in {args.out})")
        return 1 if any(r["status"] != "ok" for r in rows) else 0
    if args.cmd == "rehearse":
        rows = rehearse(paths, Path(args.out), args.timeout, args.record,
                        Path(args.cache_dir) if args.cache_dir else None)
        print(f"{'total':40s} {time.perf_counter() - total:7.1f} s  ({len(rows)} notebooks, PROFILE=real, "
              f"stand-in hub, CPU; outputs in {args.out})")
        return 1 if any(r["status"] != "ok" for r in rows) else 0
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


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.course run|rehearse|strip|check``; returns the exit code (2 with a message on bad input)."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
