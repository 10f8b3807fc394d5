"""helpers.troubleshoot: the reproductions notebook 13 shows, checked against hand-worked values and the
libraries' own view of the files."""
import warnings

import pytest

from helpers import merge, tiny, troubleshoot
from helpers.core import CourseError


def test_mojibake_is_utf8_read_as_gbk():
    # "中" = E4 B8 AD in UTF-8; GBK reads E4B8 as one character (U+6D93 "涓") and AD alone is invalid
    assert troubleshoot.mojibake("中") == "涓\ufffd"
    assert troubleshoot.mojibake("abc") == "abc"


def test_repeated_ngram_share_hand_worked():
    assert troubleshoot.repeated_ngram_share([1, 2, 3, 4, 5]) == 0.0
    # 3-grams of 1 2 3 1 2 3: (123) (231) (312) (123) -> one of four seen before
    assert troubleshoot.repeated_ngram_share([1, 2, 3, 1, 2, 3]) == 0.25
    assert troubleshoot.repeated_ngram_share([7] * 12) == pytest.approx(9 / 10)
    assert troubleshoot.repeated_ngram_share([1, 2]) == 0.0


def test_hub_error_explains_401_and_403():
    e401 = troubleshoot.hub_error("meta-llama/Llama-2-7b-hf", 401)
    assert isinstance(e401, CourseError) and "HTTP 401" in str(e401) and "HF_TOKEN" in str(e401)
    e403 = troubleshoot.hub_error("meta-llama/Llama-2-7b-hf", 403)
    assert "gated" in str(e403) and "licen" in str(e403)


def test_adapter_without_modules_to_save(tmp_path):
    from safetensors import safe_open

    lora = tiny.lora_adapters()["llama"]
    out = troubleshoot.adapter_without_modules_to_save(lora, tmp_path / "broken")
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    with safe_open(lora / "adapter_model.safetensors", "pt") as f:
        original = list(f.keys())
    assert keys and all("lora_" in k for k in keys) and len(keys) < len(original)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge.plan_merge(tiny.hf_model(), [out])
    assert any("no modules_to_save" in str(w.message) for w in caught)
    with pytest.raises(CourseError, match="adapter_model.safetensors"):
        troubleshoot.adapter_without_modules_to_save(tmp_path, tmp_path / "x")


def test_lora_effect_fresh_is_zero_trained_is_not():
    base = tiny.hf_model()
    assert troubleshoot.lora_effect(base) == 0.0  # PEFT initialises B to zero
    assert troubleshoot.lora_effect(base, tiny.lora_adapters()["llama"]) > 1e-3
