"""Shared test set-up: offline switches, a small thread budget, and the tiny artifacts."""
import os

from helpers.core import OFFLINE_ENV

for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_paths():
    """Every tiny artifact (built once, cached in the workspace)."""
    from helpers import tiny

    return tiny.build_all()


@pytest.fixture(scope="session")
def data_lines():
    """Every non-empty text line of data/ (txt, and the string fields of json/jsonl)."""
    import json

    from helpers.core import DATA_DIR

    lines = []
    for p in sorted(DATA_DIR.rglob("*")):
        if p.suffix == ".txt":
            lines += [x for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        elif p.suffix in (".json", ".jsonl"):
            text = p.read_text(encoding="utf-8")
            recs = json.loads(text) if p.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
            for r in recs if isinstance(recs, list) else [recs]:
                if isinstance(r, dict):
                    for v in r.values():
                        if isinstance(v, str) and v.strip():
                            lines += v.splitlines()
    return [x for x in lines if x.strip()]


@pytest.fixture(scope="session")
def tiny_model():
    """``(base model folder, {"llama": LoRA, "alpaca": LoRA})`` for the inference and web UI tests."""
    from helpers import tiny

    return tiny.hf_model(), tiny.lora_adapters()


@pytest.fixture(scope="session")
def model_tok():
    """The tiny model + Chinese-Alpaca tokenizer used by the LangChain steps (rag, summarize)."""
    from helpers import rag

    return rag.tiny_model()


@pytest.fixture(scope="session")
def llm(model_tok):
    """The tiny model as a LangChain LLM (HuggingFacePipeline), greedy, 8 new tokens."""
    from helpers import rag

    model, tok = model_tok
    return rag.local_llm(model, tok, max_new_tokens=8, temperature=0)
