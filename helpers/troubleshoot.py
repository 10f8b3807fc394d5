"""Appendix 13 (报错速查): small reproductions of the mistakes learners meet, on the tiny artifacts.

Each function builds the broken situation (an adapter without ``modules_to_save``, a hub answer with HTTP 401,
a GBK console reading UTF-8 bytes, an untrained LoRA) so that the notebook can show the course's own message
or the measured effect in one line.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .core import CourseError


def adapter_without_modules_to_save(lora_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy the PEFT adapter ``lora_dir`` to ``out_dir`` without its ``modules_to_save`` tensors (embed_tokens /
    lm_head) and config field: the adapter someone trained with an extended tokenizer but forgot
    ``--modules_to_save embed_tokens,lm_head``. Returns ``out_dir`` (replaced if it exists)."""
    from safetensors.torch import load_file, save_file

    src, out = Path(lora_dir), Path(out_dir)
    if not (src / "adapter_model.safetensors").is_file():
        raise CourseError(f"{src}: no adapter_model.safetensors; pass a PEFT LoRA folder")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    tensors = {k: v for k, v in load_file(src / "adapter_model.safetensors").items() if "lora_" in k}
    save_file(tensors, out / "adapter_model.safetensors")
    config = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    config["modules_to_save"] = None
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


def hub_error(repo: str, status: int = 401):
    """The :class:`helpers.hub.HubError` the course raises when the hub answers ``status`` (401: token refused;
    403: licence not accepted) for ``repo``; returns it (built offline from a synthetic HTTP response)."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    from . import catalog, hub

    url = f"{hub.endpoint()}/{repo}/resolve/main/config.json"
    response = httpx.Response(status, request=httpx.Request("GET", url))
    err = HfHubHTTPError(f"{status} Client Error for url: {url}", response=response)
    try:
        model = catalog.get(repo)
    except CourseError:
        model = None
    return hub._explain(err, repo, model, token="hf_expired_token_for_the_demo")


def mojibake(text: str, console: str = "gbk") -> str:
    """``text`` as a console using ``console`` encoding shows its UTF-8 bytes (Windows' default cmd.exe code page
    936 = GBK): the garbled Chinese of a script that printed or wrote UTF-8. Returns the garbled string."""
    return text.encode("utf-8").decode(console, errors="replace")


def repeated_ngram_share(ids: list[int], n: int = 3) -> float:
    """Share of the ``n``-grams of ``ids`` that occurred earlier in the same sequence: 0.0 for no repetition,
    close to 1.0 for a generation stuck in a loop. Returns the share (0.0 for fewer than ``n`` + 1 ids)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if len(grams) < 2:
        return 0.0
    seen, repeated = set(), 0
    for g in grams:
        repeated += g in seen
        seen.add(g)
    return repeated / len(grams)


def lora_effect(base_model: str | Path, adapter=None, text: str = "白日依山尽") -> float:
    """Largest |logit difference| between ``base_model`` and the same model with a LoRA: the adapter folder
    ``adapter``, or (None) a freshly initialised LoRA on q/v (PEFT starts B at zero). Returns the max |diff|."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from .tokenizer import load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32).eval()
    tok = load_tokenizer(adapter or base_model)
    if len(tok) > base.get_input_embeddings().weight.shape[0]:
        from .vocab import resize_embeddings

        resize_embeddings(base, len(tok))  # new rows at the mean, as training, merging and loading do
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        before = base(ids).logits.clone()
        if adapter is None:
            model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        else:
            model = PeftModel.from_pretrained(base, str(adapter))
        after = model.eval()(ids).logits
    return (after - before).abs().max().item()
