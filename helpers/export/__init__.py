"""Course step 11: export and deployment -- GGUF (llama.cpp / Ollama), fastllm ``.flm``, distributable folders.

One module per format; this package re-exports their public names (``from helpers import export`` then
``export.export_gguf(...)``, as notebook 11 does):

- :mod:`.gguf`: ``export_gguf``, ``gguf_plan``, ``gguf_summary`` (the ``gguf`` package's ``GGUFWriter``, names and
  quantization; llama.cpp's rules for q/k rows, norms and rope scaling).
- :mod:`.runtime`: llama.cpp (``llama-cpp-python``) beside transformers: ``compare_with_llama_cpp`` and the
  ``llama_cpp_*`` / ``hf_*`` helpers.
- :mod:`.quantize`: ``quantize_gguf`` (llama.cpp's quantizer: Q4_0, Q4_K_M, Q5_K_M, Q8_0; block sizes checked
  first, fallbacks reported), ``quant_table`` (size, perplexity, KL vs f16, tokens/s), ``llama_cpp_perplexity``.
- :mod:`.adapter`: ``export_lora_gguf`` (a PEFT LoRA as llama.cpp's LoRA-adapter GGUF), ``lora_gguf_plan``.
- :mod:`.server`: ``start_llama_cpp_server`` (``python -m llama_cpp.server`` on 127.0.0.1, OpenAI API),
  ``vllm_commands``.
- :mod:`.ollama`: ``modelfile``, ``package_gguf`` and an *emulation* of Ollama's prompt building
  (``ollama_prompt``: its message collation and a Go-template subset).
- :mod:`.fastllm`: ``export_fastllm``, ``read_flm``, ``fastllm_run``, ``package_fastllm``; ``FlmDataType``.
- :mod:`.sizes`: ``tensor_bytes``, ``size_table`` (real shapes from :mod:`helpers.catalog`), ``artifact_sizes``.
- :mod:`.source`: the merged folder's config and SentencePiece vocabulary (``sp_vocab``), ``ExportError``.

Command line (:mod:`.cli`)::

    python -m helpers.export gguf --base_model DIR --outfile FILE --outtype f32|f16|q8_0
    python -m helpers.export quantize --gguf F16.gguf --outfile FILE --type Q4_0|Q4_K_M|Q5_K_M|Q8_0 [--allow_fallback]
    python -m helpers.export lora --lora_model DIR --base_gguf BASE.gguf --outfile FILE [--outtype f32|f16]
    python -m helpers.export modelfile --gguf FILE [--adapter LORA.gguf] --template chinese-alpaca-2 --outfile Modelfile
    python -m helpers.export fastllm --base_model DIR --outfile FILE.flm --dtype float16|int8|int4

``gguf`` and ``llama-cpp-python`` are the ``[export]`` extra: imported inside the functions that use them.
The tiny merged model of the examples is :func:`helpers.tiny.merged_model` (``tiny_merged_model`` here).
"""
from ..tiny import merged_model as tiny_merged_model
from .cli import build_parser, main
from .fastllm import (FLM_DTYPES, FLM_VERSION, FlmDataType, FlmFile, export_fastllm, fastllm_path, fastllm_run,
                      flm_config, package_fastllm, read_flm)
from .adapter import export_lora_gguf, lora_gguf_plan
from .gguf import GGUF_OUTTYPES, GgufPlanItem, export_gguf, gguf_plan, gguf_summary
from .gguf import _gguf_tensor  # noqa: F401  (notebook 11's exercise asks students to edit it)
from .ollama import (MODELFILE_COMMANDS, leading_bos, modelfile, ollama_collate, ollama_prompt, ollama_template, package_gguf,
                     parse_modelfile, render_go_template)
from .quantize import (QUANT_TYPES, QuantResult, check_quantizable, heldout_text, llama_cpp_perplexity,
                       llama_cpp_tokens_per_s, quant_blockers, quant_table, quantize_gguf)
from .runtime import (compare_with_llama_cpp, hf_greedy, hf_logits, llama_cpp_greedy, llama_cpp_logits,
                      llama_cpp_model, llama_cpp_tokenize)
from .server import (LlamaCppServer, VllmServer, llama_cpp_server_args, start_llama_cpp_server,
                     start_vllm_server, vllm_commands, vllm_serve_args)
from .sizes import SIZE_FORMATS, SIZE_MODELS, artifact_sizes, size_table, tensor_bytes
from .source import DEFAULT_FAMILY, ExportError, SpVocab, sp_vocab

__all__ = [
    "DEFAULT_FAMILY", "ExportError", "FLM_DTYPES", "FLM_VERSION", "FlmDataType", "FlmFile", "GGUF_OUTTYPES",
    "GgufPlanItem", "SIZE_FORMATS", "SIZE_MODELS", "SpVocab", "artifact_sizes", "build_parser",
    "compare_with_llama_cpp", "export_fastllm", "export_gguf", "fastllm_path", "fastllm_run", "flm_config",
    "gguf_plan", "gguf_summary", "hf_greedy", "hf_logits", "leading_bos", "llama_cpp_greedy", "llama_cpp_logits",
    "llama_cpp_model", "llama_cpp_tokenize", "main", "modelfile", "ollama_collate", "ollama_prompt",
    "ollama_template", "package_fastllm", "package_gguf", "parse_modelfile", "read_flm", "render_go_template",
    "size_table", "sp_vocab", "tensor_bytes", "tiny_merged_model",
    "QUANT_TYPES", "QuantResult", "check_quantizable", "heldout_text", "llama_cpp_perplexity", "llama_cpp_tokens_per_s",
    "quant_blockers", "quant_table", "quantize_gguf", "export_lora_gguf", "lora_gguf_plan", "LlamaCppServer",
    "llama_cpp_server_args", "start_llama_cpp_server", "vllm_commands", "VllmServer", "start_vllm_server",
    "vllm_serve_args", "MODELFILE_COMMANDS",
]
