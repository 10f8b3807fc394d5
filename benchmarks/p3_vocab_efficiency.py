"""P3: Chinese tokens per character on held-out text, extended vs base tokenizer (goal <= 0.6).

Side by side in one run, all on data/zh_heldout.txt (never used for training):
  base                 the tiny LLaMA-like base (English BPE, byte fallback)
  + zh 3000 (tiny)     base + Chinese SP trained on zh_corpus + jieba word counts (the tiny profile)
  + zh 3000 corpus     base + Chinese SP trained on zh_corpus only (what jieba adds)
  + zh 3000 score 0    the original merge_tokenizers.py scores (all new pieces 0): efficiency unchanged?
  + zh 20000 (real)    base + the real-size Chinese SP (20k pieces, jieba's 400k most frequent words = all)
  + zh 20000 corpus    the same size from zh_corpus only
Also: training time of each Chinese model, HF == sentencepiece on held-out for every ordered-score merge.

    python benchmarks/p3_vocab_efficiency.py
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import tiny, vocab  # noqa: E402
from helpers.bench import report, timed  # noqa: E402
from helpers.core import DATA_DIR, REPO_ROOT  # noqa: E402
from helpers.tokenizer import build_hf_tokenizer, sp_mismatches  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="p3_") as tmp:  # the trained models are deleted afterwards
        return run(Path(tmp))


def run(tmp: Path) -> int:
    held = [x for x in (DATA_DIR / "zh_heldout.txt").read_text(encoding="utf-8").splitlines() if x.strip()]
    base = tiny.base_sp_model()
    zh = {}
    rows = [timed("train zh 3000 (corpus + jieba)", lambda: zh.__setitem__(
        "tiny", vocab.train_chinese_sp(tmp / "zh3000", vocab_size=tiny.TINY_ZH_VOCAB)))]

    def corpus_only(size: int):
        vocab.write_weighted_tsv(tmp / "corpus.tsv", [DATA_DIR / "zh_corpus.txt"], [])
        zh[f"corpus{size}"] = vocab.train_sp_model([tmp / "corpus.tsv"], tmp / f"zh_corpus{size}", size,
                                                   character_coverage=0.9995, input_format="tsv",
                                                   add_dummy_prefix=False, byte_fallback=False)

    rows.append(timed("train zh 3000 (corpus only)", lambda: corpus_only(tiny.TINY_ZH_VOCAB)))
    rows.append(timed("train zh 20000 (corpus only)", lambda: corpus_only(20000)))
    rows.append(timed("train zh 20000 (corpus + jieba)", lambda: zh.__setitem__(
        "real", vocab.train_chinese_sp(tmp / "zh20000", vocab_size=20000))))
    merged = {"base": base}
    for name, key, zero in (("+ zh 3000 (tiny)", "tiny", False), ("+ zh 3000 corpus only", "corpus3000", False),
                            ("+ zh 3000 score 0 (original)", "tiny", True), ("+ zh 20000 (real size)", "real", False),
                            ("+ zh 20000 corpus only", "corpus20000", False)):
        out = tmp / f"{len(merged)}.model"
        vocab.merge_sp_models(base, zh[key], out, zero_scores=zero)
        merged[name] = out
    df = vocab.efficiency_table(merged, held, base="base")
    print(df.to_string(index=False))
    same = {n: len(sp_mismatches(build_hf_tokenizer(p), p, held)) for n, p in merged.items() if "score 0" not in n}
    print("held-out lines where HF != sentencepiece:", same)
    assert all(v == 0 for v in same.values())
    vocab.plot_efficiency(df[df.tokenizer != "+ zh 3000 score 0 (original)"], REPO_ROOT / "images" / "03_vocab_efficiency.png")
    r = dict(zip(df.tokenizer, df.vs_base))
    report("P3 vocabulary extension efficiency", rows, {
        "tokens/char tiny extended / base": (r["+ zh 3000 (tiny)"], "<= 0.6"),
        "tokens/char 20k extended / base": (r["+ zh 20000 (real size)"], "<= 0.6"),
        "tokens/char corpus-only 3000 / base": (r["+ zh 3000 corpus only"], "report (jieba's value)"),
        "tokens/char corpus-only 20k / base": (r["+ zh 20000 corpus only"], "report (jieba's value)"),
        "score-0 merge / ordered-score merge": (r["+ zh 3000 score 0 (original)"] / r["+ zh 3000 (tiny)"], "~1.0"),
    })
    return 0 if r["+ zh 3000 (tiny)"] <= 0.6 and r["+ zh 20000 (real size)"] <= 0.6 else 1


if __name__ == "__main__":
    sys.exit(main())
