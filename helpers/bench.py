"""A small harness for ratio benchmarks: run variants side by side in one process run, print ratios.

Benchmarks live in ``benchmarks/pN_*.py``; each measures two or more variants of the same work in the
same run (so machine load affects both) and prints a table plus the ratio against its goal.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@dataclass
class Measurement:
    name: str
    seconds: float
    peak_rss_mb: float | None = None
    extra: dict = field(default_factory=dict)


def timed(name: str, fn, repeat: int = 1, **extra) -> Measurement:
    """Best wall time of ``repeat`` calls of ``fn()`` in this process."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return Measurement(name, best, None, extra)


def in_subprocess(name: str, code: str, env: dict | None = None) -> Measurement:
    """Run ``python -c code`` in a fresh process; wall time and peak RSS (ru_maxrss of the child).

    The code may print one JSON object on its last stdout line; it is kept in ``extra``.
    """
    import resource  # POSIX only

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    extra = {}
    lines = proc.stdout.strip().splitlines()
    if lines:
        try:
            extra = json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    # ru_maxrss of children is the max over all children so far: run the larger variant last or alone.
    return Measurement(name, seconds, max(peak, before) / 1024, extra)


def report(title: str, rows: list[Measurement], ratios: dict[str, tuple[float, str]]) -> dict:
    """Print a table and ``ratio  value  goal`` lines; save JSON under benchmarks/results/."""
    print(f"\n## {title}")
    print(f"{'variant':36s} {'seconds':>9s} {'peak RSS MB':>12s}  extra")
    for m in rows:
        rss = f"{m.peak_rss_mb:12.0f}" if m.peak_rss_mb is not None else f"{'-':>12s}"
        print(f"{m.name:36s} {m.seconds:9.3f} {rss}  {json.dumps(m.extra, ensure_ascii=False) if m.extra else ''}")
    for key, (value, goal) in ratios.items():
        print(f"{key:48s} {value:8.3f}   goal {goal}")
    out = {"title": title, "rows": [m.__dict__ for m in rows], "ratios": {k: v[0] for k, v in ratios.items()}}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    slug = "".join(ch if ch.isalnum() else "_" for ch in title.lower())[:60]
    (RESULTS_DIR / f"{slug}.json").write_text(json.dumps(out, indent=2, ensure_ascii=False), encoding="utf-8")
    return out
