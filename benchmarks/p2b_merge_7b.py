"""P2 at 7B — the streaming LoRA merge at full Llama-2-7B size, against the physical floor (a plain copy).

Goals: ``python -m helpers.merge`` peak RSS <= 1.5 GB (a free Colab has ~12.7 GB of RAM) and merge time /
copy time <= 1.5 (the merge reads and writes the model once, like a copy; everything else should be small).

One run, in a scratch folder (default: a new folder under /tmp; deleted afterwards unless ``--keep``):

1. write a full-size stand-in with :mod:`helpers.standin`: ``meta-llama/Llama-2-7b-hf``'s real config (32
   layers, vocab 32000), fp16, the published 2-shard safetensors layout (12.55 GiB), and a LoRA of
   ``hfl/chinese-alpaca-2-lora-7b``'s released shape (r 64 / alpha 128 on all 7 projections of every layer,
   55296-row embed_tokens/lm_head in modules_to_save, ``adapter_model.bin`` fp16, 1.14 GiB); timed, not a goal;
2. the floor: ``shutil.copyfile`` of every base file into another folder on the same disk;
3. ``python -m helpers.merge`` (streaming, HF safetensors output, SHA256SUMS manifest included) into the
   same disk; timed with a breakdown (reading, B@A, add/cast, writing, SHA256) by wrapping helpers.merge's
   functions inside the measured process (a few hundred ``perf_counter`` calls: negligible);
4. a cheap correctness check: layer N-1's q_proj and down_proj in the output equal ``W + (alpha/r) B A``
   computed here from the base and adapter files (fp16 tolerance), embed_tokens/lm_head equal the adapter's
   55296-row tensors, an untouched norm equals the base; the unmerged ``W`` must fail the same comparison;
5. optionally PEFT (``from_pretrained`` fp16 + resize + ``merge_and_unload`` + ``save_pretrained``): only when
   /proc/meminfo's MemAvailable is >= 20 GiB, and the child stops itself above 19 GiB RSS (shared machine).

Durability rule, the same for every variant: the clock stops after ``os.fsync`` of every output file and of
the output folder (helpers.merge / helpers.io do not fsync: their atomicity is the rename). Both the copy and
the merge start with the inputs evicted from the page cache (``fsync`` + ``posix_fadvise(DONTNEED)`` of the
base and adapter files: no root needed, nobody else's cache dropped), so both read from disk.

Each variant runs in its own subprocess (``helpers.bench.in_subprocess``) started from its own small runner
process, because ``ru_maxrss`` of children is a running maximum over all children of one process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/p2b_merge_7b.py [--workdir DIR] [--keep] [--no-peft]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/p2b_merge_7b.py --layers 2     # ~2 GB, checks the script

Needs about 45 GB free on the scratch disk at 32 layers (peak use ~29 GB: base + adapter + merged output;
the copy is deleted before the merge runs); it refuses to start (prints why, exit 0) with less.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers import catalog  # noqa: E402  (no torch: the measuring processes stay small)
from helpers.bench import Measurement, in_subprocess, report  # noqa: E402

BASE_REPO = "meta-llama/Llama-2-7b-hf"
LORA_REPO = "hfl/chinese-alpaca-2-lora-7b"
GB = 10**9
RSS_GOAL_GB = 1.5
TIME_GOAL = 1.5
PEFT_MIN_AVAILABLE = 20 * 2**30     # MemAvailable needed before PEFT is tried
PEFT_RSS_LIMIT = 19 * 2**30         # the PEFT child exits itself above this RSS
HEADROOM = 16 * GB                  # disk left for the other users of the machine beyond our peak

FSYNC = '''
def fsync_tree(folder):
    """fsync every file under folder and the folder itself; returns the bytes of those files."""
    n = 0
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            n += p.stat().st_size
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return n
'''

GENERATE = '''
import json, os, time
from pathlib import Path
from helpers import catalog, standin
''' + FSYNC + '''
base_m, lora_m = catalog.get({base_repo!r}), catalog.get({lora_repo!r})
t0 = time.perf_counter()
b = standin.write_llama({base!r}, base_m.config, {layers}, base_m.weights, dtype="float16", seed=0, desc="base")
t1 = time.perf_counter()
lw = tuple(f for f in lora_m.weights if not f.endswith(".json"))
l = standin.write_lora({lora!r}, lora_m.config, lora_m.lora, {layers}, {base_repo!r}, weights=lw, dtype="float16",
                       seed=1)
t2 = time.perf_counter()
nb, nl = fsync_tree(Path({base!r})), fsync_tree(Path({lora!r}))
t3 = time.perf_counter()
print(json.dumps({{"base_GB": round(nb / 1e9, 3), "lora_GB": round(nl / 1e9, 3), "base_s": round(t1 - t0, 1),
                  "lora_s": round(t2 - t1, 1), "fsync_s": round(t3 - t2, 1)}}))
'''

COPY = '''
import json, os, shutil, time
from pathlib import Path
''' + FSYNC + '''
src, dst = Path({base!r}), Path({out!r})
dst.mkdir()
t0 = time.perf_counter()
for p in sorted(src.iterdir()):
    if p.is_file():
        shutil.copyfile(p, dst / p.name)   # sendfile(2) on Linux: the cheapest way to read + write the bytes
t1 = time.perf_counter()
n = fsync_tree(dst)
t2 = time.perf_counter()
print(json.dumps({{"copy_s": round(t1 - t0, 1), "fsync_s": round(t2 - t1, 1), "GB": round(n / 1e9, 3),
                  "MB_per_s": round(n / (t2 - t0) / 1e6)}}))
'''

MERGE = '''
import json, os, time
from pathlib import Path
import helpers.merge as M
''' + FSYNC + '''
T = {{}}
RSS = {{}}
IN_PLAN = [False]

def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

def wrap(owner, attr, key, planning=False):
    """Time owner.attr into T[key] (calls made while planning count in the plan's time only)."""
    if owner is None or not hasattr(owner, attr):
        return
    fn = getattr(owner, attr)
    def timed(*a, **k):
        if planning:
            IN_PLAN[0] = True
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            if planning:
                IN_PLAN[0] = False
                RSS["after_plan_MB"], RSS["hwm_after_plan_MB"] = round(status_mb("VmRSS")), round(status_mb("VmHWM"))
            if planning or not IN_PLAN[0]:
                T[key] = T.get(key, 0.0) + time.perf_counter() - t
    setattr(owner, attr, timed)

# helpers.merge's own names (whichever this version has): the reader of the base, the LoRA product, the writer
reader = getattr(M, "WeightReader", None) or getattr(M, "_Reader", None)
wrap(M, "plan_merge", "plan (headers + adapter)", planning=True)
wrap(reader, "get", "read base tensors (get; a memory map defers the disk read to first use)")
wrap(M.Adapter, "delta", "B@A fp32 (delta)")        # inside merged_tensor
wrap(M, "merged_tensor", "merged_tensor")
wrap(getattr(M, "StreamingSafetensorsWriter", None), "write", "write tensors")
wrap(M, "write_manifest", "SHA256SUMS")
t0 = time.perf_counter()
rc = M.main(["--base_model", {base!r}, "--lora_model", {lora!r}, "--output_type", "huggingface",
             "--output_dir", {out!r}, "--quiet"])
t1 = time.perf_counter()
assert rc == 0, rc
n = fsync_tree(Path({out!r}))
t2 = time.perf_counter()
if "merged_tensor" in T:
    T["add + cast (merged_tensor - delta)"] = T.pop("merged_tensor") - T.get("B@A fp32 (delta)", 0.0)
T["other (startup, config, tokenizer, card)"] = (t1 - t0) - sum(T.values())
T["fsync after return"] = t2 - t1
print(json.dumps({{"merge_s": round(t1 - t0, 1), "fsync_s": round(t2 - t1, 1), "out_GB": round(n / 1e9, 3),
                  "breakdown_s": {{k: round(v, 1) for k, v in T.items()}}, **RSS,
                  "hwm_MB": round(status_mb("VmHWM"))}}))
'''

PEFT = '''
import json, os, threading, time
from pathlib import Path
''' + FSYNC + '''
def watchdog():   # a shared machine: never let this reference run push others into the OOM killer
    while True:
        with open("/proc/self/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
        if rss > {limit}:
            print(f"PEFT stopped itself: RSS {{rss / 2**30:.1f}} GiB > {{{limit} / 2**30:.0f}} GiB", flush=True)
            os._exit(3)
        time.sleep(0.2)

threading.Thread(target=watchdog, daemon=True).start()
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained({base!r}, dtype=torch.float16)
model.resize_token_embeddings({vocab}, mean_resizing=False)
t1 = time.perf_counter()
model = PeftModel.from_pretrained(model, {lora!r}).merge_and_unload()
t2 = time.perf_counter()
model.save_pretrained({out!r})
t3 = time.perf_counter()
n = fsync_tree(Path({out!r}))
t4 = time.perf_counter()
print(json.dumps({{"load_s": round(t1 - t0, 1), "merge_s": round(t2 - t1, 1), "save_s": round(t3 - t2, 1),
                  "fsync_s": round(t4 - t3, 1), "out_GB": round(n / 1e9, 3)}}))
'''

CHECK = '''
import json
from pathlib import Path
import torch
from safetensors import safe_open

base, lora, out, layer = Path({base!r}), Path({lora!r}), Path({out!r}), {layer}

def weight_map(folder):
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {{k: "model.safetensors" for k in f.keys()}}

maps = {{base: weight_map(base), out: weight_map(out)}}

def tensor(folder, key):
    with safe_open(str(folder / maps[folder][key]), "pt") as f:
        return f.get_tensor(key)

cfg = json.loads((lora / "adapter_config.json").read_text(encoding="utf-8"))
scaling = cfg["lora_alpha"] / cfg["r"]
sd = torch.load(lora / "adapter_model.bin", map_location="cpu", weights_only=True, mmap=True)

def adapter(pred, what):
    hits = [k for k in sd if pred(k)]
    assert len(hits) == 1, f"{{what}}: adapter keys {{hits}}"
    return sd[hits[0]]

assert set(maps[out]) == set(maps[base]), "the output does not hold the base's tensor names"
vocab = json.loads((out / "config.json").read_text(encoding="utf-8"))["vocab_size"]
res = {{"vocab_size": vocab}}
for mod in ("self_attn.q_proj", "mlp.down_proj"):
    key = f"model.layers.{{layer}}.{{mod}}.weight"
    w = tensor(base, key)
    a = adapter(lambda k: k.endswith(f".layers.{{layer}}.{{mod}}.lora_A.weight"), key)
    b = adapter(lambda k: k.endswith(f".layers.{{layer}}.{{mod}}.lora_B.weight"), key)
    want = (w.float() + scaling * (b.float() @ a.float())).to(torch.float16)   # W + (alpha/r) B A
    got = tensor(out, key)
    assert got.dtype == torch.float16 and got.shape == w.shape, (key, got.dtype, got.shape)
    torch.testing.assert_close(got, want)    # fp16 defaults: rtol 1e-3, atol 1e-5
    assert not torch.allclose(w, want, rtol=1e-3, atol=1e-5), "the unmerged W would pass: the check is too weak"
    res[mod] = {{"max_abs_diff": (got.float() - want.float()).abs().max().item(),
                "equal_fraction": round((got == want).float().mean().item(), 6),
                "max_abs_delta": (want.float() - w.float()).abs().max().item()}}
for key, mod in (("model.embed_tokens.weight", "embed_tokens"), ("lm_head.weight", "lm_head")):
    want = adapter(lambda k: mod in k and "lora_" not in k, mod)
    got = tensor(out, key)
    assert got.shape == want.shape == (vocab, got.shape[1]), (key, got.shape, want.shape)
    assert torch.equal(got, want.to(got.dtype)), key
    res[mod] = f"== adapter's {{tuple(want.shape)}}"
key = f"model.layers.{{layer}}.input_layernorm.weight"
assert torch.equal(tensor(out, key), tensor(base, key)), key
res["untouched norm"] = "== base"
print(json.dumps(res))
'''


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a new folder under /tmp); "
                    "its disk must have ~45 GB free at 32 layers")
    ap.add_argument("--keep", action="store_true", help="keep the stand-in base, adapter and merged output")
    ap.add_argument("--layers", type=int, default=None, help="layers of the stand-in (default: all 32; "
                    "e.g. 2 to check the script in a minute)")
    ap.add_argument("--no-peft", dest="peft", action="store_false", help="skip the PEFT reference")
    ap.add_argument("--phase", choices=["all", "one"], default="all", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--code", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.phase == "one":  # a runner: one measured child, so its ru_maxrss is that child's alone
        m = in_subprocess(a.name, Path(a.code).read_text(encoding="utf-8"))
        print(json.dumps(m.__dict__))
        return 0
    base_m, lora_m = catalog.get(BASE_REPO), catalog.get(LORA_REPO)
    layers = a.layers or int(base_m.config["num_hidden_layers"])
    cfg = dict(base_m.config, num_hidden_layers=layers)
    base_bytes = catalog.param_count(cfg) * 2
    lora_bytes = catalog.lora_param_count(dict(lora_m.config, num_hidden_layers=layers), lora_m.lora["r"]) * 2
    merged_bytes = catalog.param_count(dict(cfg, vocab_size=lora_m.config["vocab_size"])) * 2
    peak = base_bytes + lora_bytes + max(base_bytes, merged_bytes)
    parent = Path(a.workdir).resolve().parent if a.workdir else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < peak + HEADROOM:
        print(f"SKIPPED: {parent} has {free / GB:.1f} GB free; this run needs {(peak + HEADROOM) / GB:.0f} GB "
              f"(peak {peak / GB:.1f} GB of stand-in files + {HEADROOM / GB:.0f} GB left for others). "
              "Free some space or pass --workdir on a larger disk.")
        return 0
    work = Path(a.workdir).resolve() if a.workdir else Path(tempfile.mkdtemp(prefix="p2b-merge-7b-", dir=parent))
    created = not work.exists() or not a.workdir
    work.mkdir(parents=True, exist_ok=True)
    print(f"scratch {work} ({free / GB:.1f} GB free; peak use ~{peak / GB:.1f} GB); stand-in: {layers} layers")
    try:
        return run(work, layers, a.peft, a.keep)
    finally:  # remove only what this script made (a --workdir given by the user may hold other files)
        for p in work.glob(".code-*.py"):
            p.unlink()
        for sub in ("copy", "peft") + (() if a.keep else ("merged", "base", "lora")):
            shutil.rmtree(work / sub, ignore_errors=True)
        if created and not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, layers: int, try_peft: bool, keep: bool) -> int:
    """Generate, copy, merge, check (and PEFT); print and save the report. Returns 0."""
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    base, lora = work / "base", work / "lora"
    fmt = dict(base=str(base), lora=str(lora), base_repo=BASE_REPO, lora_repo=LORA_REPO, layers=layers)
    rows: list[Measurement] = []
    if not (base / "config.json").is_file() or not (lora / "adapter_config.json").is_file():
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(lora, ignore_errors=True)
        rows.append(measure(work, "write stand-in (base + LoRA)", GENERATE.format(**fmt), env))
        print(f"wrote the stand-in: {rows[-1].seconds:.0f} s {rows[-1].extra}")
    inputs = [p for d in (base, lora) for p in sorted(d.iterdir()) if p.is_file()]

    for sub in ("copy", "merged", "peft"):  # left over by an interrupted run in the same --workdir
        shutil.rmtree(work / sub, ignore_errors=True)
    evict(inputs)
    copy = measure(work, "floor: shutil.copyfile + fsync", COPY.format(base=str(base), out=str(work / "copy")), env)
    shutil.rmtree(work / "copy")
    rows.append(copy)
    print(f"copy: {copy.seconds:.0f} s {copy.extra}")

    evict(inputs)
    out = work / "merged"
    merge = measure(work, "python -m helpers.merge + fsync", MERGE.format(out=str(out), **fmt), env)
    rows.append(merge)
    print(f"merge: {merge.seconds:.0f} s, peak RSS {merge.peak_rss_mb:.0f} MiB")
    check = measure(work, "check: W + (alpha/r) B A, embeddings", CHECK.format(out=str(out), layer=layers - 1, **fmt),
                    env)
    print(f"check passed: {check.extra}")
    rows.append(check)
    if not keep:
        shutil.rmtree(out)

    peft = None
    if try_peft:
        peft, why = try_peft_variant(work, fmt, env, layers)
        if peft is not None:
            rows.append(peft)
        print(why)

    ratios = {
        "merge peak RSS, GB": (merge.peak_rss_mb * 2**20 / GB, f"<= {RSS_GOAL_GB}"),
        "merge time / copy time (both fsync'd)": (merge.seconds / copy.seconds, f"<= {TIME_GOAL}"),
        "merge / copy, before the final fsync": (merge.extra["merge_s"] / copy.extra["copy_s"], "(report)"),
    }
    if peft is not None:
        ratios["PEFT peak RSS, GB"] = (peft.peak_rss_mb * 2**20 / GB, "(reference)")
        ratios["merge time / PEFT time"] = (merge.seconds / peft.seconds, "(reference)")
    report(f"P2 at 7B streaming LoRA merge vs copy ({layers} layers)", rows, ratios)
    print("\nmerge breakdown (s):")
    for k, v in merge.extra["breakdown_s"].items():
        print(f"  {k:40s} {v:8.1f}")
    print(f"  RSS after the plan (adapter loaded): {merge.extra.get('after_plan_MB')} MiB; "
          f"peak {merge.extra.get('hwm_MB')} MiB")
    met_rss = merge.peak_rss_mb * 2**20 / GB <= RSS_GOAL_GB
    met_time = merge.seconds / copy.seconds <= TIME_GOAL
    print(f"goals: peak RSS <= {RSS_GOAL_GB} GB {'met' if met_rss else 'MISSED'}; "
          f"time <= {TIME_GOAL}x copy {'met' if met_time else 'MISSED'}")
    return 0


def try_peft_variant(work: Path, fmt: dict, env: dict, layers: int) -> tuple[Measurement | None, str]:
    """PEFT's load + merge_and_unload + save, if memory and disk allow; returns (measurement or None, what happened)."""
    available = meminfo("MemAvailable")
    if available < PEFT_MIN_AVAILABLE:
        return None, (f"PEFT skipped: MemAvailable {available / 2**30:.1f} GiB < {PEFT_MIN_AVAILABLE / 2**30:.0f} GiB "
                      "(it holds the whole fp16 model, ~14 GB at 7B, plus the adapter and modules_to_save copies)")
    out = work / "peft"
    evict([p for d in (work / "base", work / "lora") for p in d.iterdir() if p.is_file()])
    vocab = catalog.get(LORA_REPO).config["vocab_size"]
    try:
        peft = measure(work, "PEFT load + merge_and_unload + save", PEFT.format(
            out=str(out), vocab=vocab, limit=PEFT_RSS_LIMIT, **fmt), env)
    except RuntimeError as e:
        shutil.rmtree(out, ignore_errors=True)
        return None, f"PEFT did not finish: {str(e)[-400:]}"
    try:
        check = measure(work, "check PEFT output", CHECK.format(out=str(out), layer=layers - 1, **fmt), env)
        peft.extra["check"] = "passed"
        note = (f"PEFT: {peft.seconds:.0f} s, peak RSS {peft.peak_rss_mb:.0f} MiB; its output passes the check "
                f"{check.extra}")
    except RuntimeError as e:
        peft.extra["check"] = "FAILED"
        note = f"PEFT output fails the check: {str(e)[-600:]}"
    shutil.rmtree(out, ignore_errors=True)
    return peft, note


def measure(work: Path, name: str, code: str, env: dict) -> Measurement:
    """Run ``code`` via a fresh runner process that calls helpers.bench.in_subprocess once; its Measurement."""
    path = work / f".code-{''.join(c if c.isalnum() else '_' for c in name)[:40]}.py"
    path.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, __file__, "--phase", "one", "--name", name, "--code", str(path)],
                          capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode:
        raise RuntimeError(f"{name}: {proc.stderr[-3000:]}")
    return Measurement(**json.loads(proc.stdout.strip().splitlines()[-1]))


def evict(paths: list[Path]) -> None:
    """Drop these files' pages from the page cache (fsync first: only clean pages can be dropped)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    cached = cached_bytes(paths)
    if cached is not None:
        print(f"  inputs in the page cache after eviction: {cached / 2**20:.0f} MiB")


def cached_bytes(paths: list[Path]) -> int | None:
    """Bytes of ``paths`` resident in the page cache (util-linux ``fincore``), or None without it."""
    if not shutil.which("fincore"):
        return None
    proc = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", *map(str, paths)],
                          capture_output=True, text=True)
    return sum(int(x) for x in proc.stdout.split()) if proc.returncode == 0 else None


def meminfo(field: str) -> int:
    """A /proc/meminfo value in bytes."""
    with open("/proc/meminfo", encoding="utf-8") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


if __name__ == "__main__":
    sys.exit(main())
