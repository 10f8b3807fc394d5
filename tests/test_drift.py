"""Guard against the ecosystem moving: the keyword arguments the course passes to library classes must
still exist in the installed versions, so an upgrade that renames one fails here, not in a classroom."""
import ast
import dataclasses
import inspect
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _targets():
    import peft
    import transformers

    out = {
        "TrainingArguments": transformers.TrainingArguments,
        "LoraConfig": peft.LoraConfig,
        "GenerationConfig": transformers.GenerationConfig,
        "BitsAndBytesConfig": transformers.BitsAndBytesConfig,
    }
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        out["RecursiveCharacterTextSplitter"] = RecursiveCharacterTextSplitter
    except ImportError:  # pragma: no cover
        pass
    return out


def _accepted(obj) -> set[str] | None:
    """Keyword names ``obj(...)`` accepts; None when it takes arbitrary ``**kwargs`` with no fields to check."""
    if obj.__name__ in ("GenerationConfig", "BitsAndBytesConfig"):  # **kwargs stored as attributes
        try:
            return set(vars(obj())) | set(inspect.signature(obj.__init__).parameters)
        except Exception:  # e.g. bitsandbytes not installed: nothing to check against
            return None
    if dataclasses.is_dataclass(obj):
        return {f.name for f in dataclasses.fields(obj)}
    names, var_kw = set(), False
    for klass in inspect.getmro(obj) if inspect.isclass(obj) else [obj]:
        init = klass.__init__ if inspect.isclass(obj) else obj
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            continue
        names |= {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
        if not var_kw:
            break
    model_fields = getattr(obj, "model_fields", None)  # pydantic (LangChain)
    if model_fields:
        names |= set(model_fields)
    return names if names else None


def _sources():
    for p in sorted((ROOT / "helpers").rglob("*.py")):
        yield p.name, p.read_text(encoding="utf-8")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("!", "%")))
        yield nb.name, code


def _calls():
    targets = _targets()
    for name, src in _sources():
        for node in ast.walk(ast.parse(src)):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if fn in targets:
                for kw in node.keywords:
                    if kw.arg is not None:
                        yield name, fn, kw.arg, targets[fn]


def test_keyword_arguments_still_exist():
    calls = list(_calls())
    assert calls, "expected the course to construct library objects with keyword arguments"
    unknown = []
    for where, fn, kw, obj in calls:
        accepted = _accepted(obj)
        if accepted is not None and kw not in accepted:
            unknown.append(f"{where}: {fn}({kw}=...)")
    assert not unknown, "library API drift: " + "; ".join(sorted(set(unknown)))


def test_generation_defaults_are_generation_config_fields():
    from transformers import GenerationConfig

    from helpers.generation import GENERATION_DEFAULTS

    cfg = GenerationConfig()
    assert all(hasattr(cfg, k) for k in GENERATION_DEFAULTS)


def test_tiny_config_keys_are_llama_config_attributes():
    from helpers.tiny import TINY_CONFIG, tiny_config

    cfg = tiny_config(100)
    for key, value in TINY_CONFIG.items():
        assert getattr(cfg, key) == value, key


@pytest.mark.parametrize("fn", ["from_pretrained"])
def test_from_pretrained_accepts_dtype_keyword(fn):
    """transformers 5 renamed torch_dtype -> dtype; the course passes dtype."""
    from transformers import modeling_utils

    params = inspect.signature(getattr(modeling_utils.PreTrainedModel, fn)).parameters
    src = inspect.getsource(modeling_utils.PreTrainedModel.from_pretrained)
    assert "dtype" in params or '"dtype"' in src or "'dtype'" in src
