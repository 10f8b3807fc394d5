"""P2 — streaming LoRA merge: peak RSS / model size (goal <= 0.5) and time vs PEFT (goal: no slower).

A synthetic fp32 LLaMA-shaped model (~2.4 GB, 10 safetensors shards) and a random r=8 LoRA on every
attention/MLP projection are written to a temporary folder (not the repo) and deleted afterwards. Each
variant runs in its own subprocess (helpers.bench.in_subprocess), smallest first, because ru_maxrss of
children is a running maximum:

1. floor: ``import torch, helpers.merge`` only (the interpreter's own footprint);
2. ``python -m helpers.merge`` (streaming, HF safetensors output, SHA256SUMS manifest included);
3. PEFT: ``from_pretrained`` + ``PeftModel.from_pretrained`` + ``merge_and_unload`` + ``save_pretrained``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/p2_merge_memory.py [--workdir /tmp/p2-merge] [--keep]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers.bench import in_subprocess, report  # noqa: E402

CONFIG = dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=18, num_attention_heads=12,
              num_key_value_heads=12, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6,
              tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS_PER_SHARD = 2


def layer_shapes(h: int, f: int) -> dict[str, tuple[int, int]]:
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}


def write_model(folder: Path) -> int:
    """Write the synthetic base shard by shard (never the whole model in this process); returns bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder.mkdir(parents=True)
    LlamaConfig(**CONFIG).save_pretrained(folder)
    h, f, n, v = (CONFIG[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    g = torch.Generator().manual_seed(0)
    groups = [list(range(i, min(i + LAYERS_PER_SHARD, n))) for i in range(0, n, LAYERS_PER_SHARD)]
    names = [f"model-{i + 1:05d}-of-{len(groups) + 1:05d}.safetensors" for i in range(len(groups) + 1)]
    weight_map, total = {}, 0
    for shard, layers in enumerate(groups):
        sd = {}
        for i in layers:
            for mod, shape in layer_shapes(h, f).items():
                sd[f"model.layers.{i}.{mod}.weight"] = torch.randn(shape, generator=g) * 0.02
            sd[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(h)
            sd[f"model.layers.{i}.post_attention_layernorm.weight"] = torch.ones(h)
        total += _save(sd, folder / names[shard], weight_map, save_file)
    sd = {"model.embed_tokens.weight": torch.randn(v, h, generator=g) * 0.02, "model.norm.weight": torch.ones(h),
          "lm_head.weight": torch.randn(v, h, generator=g) * 0.02}
    total += _save(sd, folder / names[-1], weight_map, save_file)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}), encoding="utf-8")
    return total


def _save(sd, path, weight_map, save_file) -> int:
    save_file(sd, str(path), metadata={"format": "pt"})
    weight_map.update({k: path.name for k in sd})
    return sum(t.numel() * t.element_size() for t in sd.values())


def write_lora(folder: Path, r: int = 8) -> None:
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    LoraConfig(r=r, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM",
               base_model_name_or_path="synthetic").save_pretrained(folder)
    g = torch.Generator().manual_seed(1)
    sd = {}
    for i in range(CONFIG["num_hidden_layers"]):
        for mod, (rows, cols) in layer_shapes(CONFIG["hidden_size"], CONFIG["intermediate_size"]).items():
            key = f"base_model.model.model.layers.{i}.{mod}"
            sd[f"{key}.lora_A.weight"] = torch.randn(r, cols, generator=g) * 0.02
            sd[f"{key}.lora_B.weight"] = torch.randn(rows, r, generator=g) * 0.02
    save_file(sd, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


FLOOR = "import torch, helpers.merge"
OURS = """
from helpers.merge import main
assert main(["--base_model", {base!r}, "--lora_model", {lora!r}, "--output_dir", {out!r},
             "--max_shard_size", "400MB", "--quiet"]) == 0
"""
PEFT = """
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({base!r}, dtype=torch.float32)
model = PeftModel.from_pretrained(model, {lora!r}).merge_and_unload()
model.save_pretrained({out!r}, max_shard_size="400MB")
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a new folder under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic files")
    ap.add_argument("--small", action="store_true", help="a ~70 MB model to check the script quickly")
    ap.add_argument("--phase", choices=["all", "generate", "measure"], default="all", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.small:
        CONFIG.update(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=4,
                      vocab_size=8000)
    if a.phase == "generate":
        write_model(Path(a.workdir) / "base")
        write_lora(Path(a.workdir) / "lora")
        return 0
    if a.phase == "measure":
        return measure(Path(a.workdir))
    # Generation and measurement run in fresh processes: a child's ru_maxrss includes the pages of the
    # parent it was forked from, so the measuring parent must stay small (it imports no torch).
    work = Path(a.workdir or tempfile.mkdtemp(prefix="p2-merge-", dir="/tmp"))
    flags = ["--workdir", str(work)] + (["--small"] if a.small else [])
    try:
        if not (work / "base").is_dir():
            subprocess.run([sys.executable, __file__, "--phase", "generate", *flags], check=True)
        subprocess.run([sys.executable, __file__, "--phase", "measure", *flags], check=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def measure(work: Path) -> int:
    """Run the three variants (smallest first), check the outputs agree, print and save the report."""
    base, lora = work / "base", work / "lora"
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    size = json.loads((base / "model.safetensors.index.json").read_text(encoding="utf-8"))["metadata"]["total_size"]
    print(f"synthetic base: {size / 1e9:.2f} GB fp32 in {len(list(base.glob('*.safetensors')))} shards at {base}")
    fmt = dict(base=str(base), lora=str(lora))
    for out in ("out_ours", "out_peft"):
        shutil.rmtree(work / out, ignore_errors=True)
    floor = in_subprocess("floor: import torch + helpers.merge", FLOOR, env)
    ours = in_subprocess("helpers.merge (streaming)", OURS.format(out=str(work / "out_ours"), **fmt), env)
    peft = in_subprocess("PEFT load+merge_and_unload+save", PEFT.format(out=str(work / "out_peft"), **fmt), env)
    mb = size / 2**20
    report("P2 streaming LoRA merge", [floor, ours, peft], {
        "streaming peak RSS / model size": (ours.peak_rss_mb / mb, "<= 0.5"),
        "PEFT peak RSS / model size": (peft.peak_rss_mb / mb, "(reference, ~1.2)"),
        "streaming time / PEFT time": (ours.seconds / peft.seconds, "<= 1.0"),
    })
    _check_same(work / "out_ours", work / "out_peft")
    return 0


def _check_same(ours: Path, peft: Path, n: int = 6) -> None:
    """Spot-check that both outputs hold the same merged weights (a few tensors)."""
    import torch
    from safetensors import safe_open

    def index(folder):
        if (folder / "model.safetensors.index.json").is_file():
            return json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))["weight_map"]
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return {k: "model.safetensors" for k in f.keys()}

    a, b = index(ours), index(peft)
    assert set(a) == set(b), "different tensor names"
    for key in sorted(a)[:: max(1, len(a) // n)]:
        with safe_open(str(ours / a[key]), "pt") as fa, safe_open(str(peft / b[key]), "pt") as fb:
            torch.testing.assert_close(fa.get_tensor(key), fb.get_tensor(key), atol=1e-6, rtol=1e-5)
    print("outputs agree on the sampled tensors")


if __name__ == "__main__":
    sys.exit(main())
