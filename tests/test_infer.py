"""Step 05 inference: file mode (JSON + generation_config), batched == one-at-a-time under greedy,
the interactive loop through stdin, the flags and their errors."""
import json
import os
import subprocess
import sys

import pytest

from helpers import infer
from helpers.core import REPO_ROOT, CourseError
from helpers.generation import GENERATION_DEFAULTS, generate, held_back, stream
from helpers.prompts import ALPACA_TEMPLATE

QUESTIONS = ["为什么要减少污染，保护环境？", "介绍一下北京", "写一首关于春天的诗", "hello",
             "如何学习编程？请给出三条建议，并说明原因。", "1+1=?"]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from helpers.modeling import load_model

    base, loras = tiny_model
    return load_model(base, loras["alpaca"], device="cpu")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}


def test_defaults_are_the_original_scripts():
    assert GENERATION_DEFAULTS == dict(temperature=0.2, top_k=40, top_p=0.9, num_beams=1, do_sample=True,
                                       repetition_penalty=1.1, max_new_tokens=400)


def test_make_prompt():
    assert infer.make_prompt("你好", with_prompt=False) == "你好"
    assert infer.make_prompt("你好", with_prompt=True) == ALPACA_TEMPLATE.format(instruction="你好")
    p2 = infer.make_prompt("你好", True, "chinese-alpaca-2")
    assert p2.startswith("[INST] <<SYS>>") and p2.endswith("你好 [/INST]")


def test_lora_with_larger_vocab_resizes_embeddings(loaded, tiny_model):
    from transformers import AutoConfig

    model, tok = loaded
    base_vocab = AutoConfig.from_pretrained(tiny_model[0]).vocab_size
    assert model.get_input_embeddings().weight.shape[0] == len(tok) > base_vocab
    assert tok.padding_side == "left" and tok.pad_token is not None


def test_batched_equals_one_at_a_time_under_greedy(loaded):
    model, tok = loaded
    prompts = [infer.make_prompt(q, True) for q in QUESTIONS]  # different lengths -> real left padding
    batched = generate(model, tok, prompts, batch_size=4, temperature=0, max_new_tokens=24)
    single = generate(model, tok, prompts, batch_size=1, temperature=0, max_new_tokens=24)
    assert batched == single
    assert all(batched) and len(set(batched)) > 1
    # sorting by length changes batching, not results or their order
    assert generate(model, tok, prompts, batch_size=3, temperature=0, max_new_tokens=24, sort_by_length=True) == single


def test_stop_strings_cut_answers(loaded):
    model, tok = loaded
    out = generate(model, tok, ["你好"], temperature=0, max_new_tokens=12)[0]
    assert len(out) > 4
    cut = generate(model, tok, ["你好"], temperature=0, max_new_tokens=12, stop=[out[2:4]])[0]
    assert cut == out[:out.find(out[2:4])]


def test_held_back_keeps_possible_stop_prefixes():
    assert held_back("答案\n\n### ", ["### Instruction:"]) == 4
    assert held_back("答案\n\n#", ["### Instruction:", "#!"]) == 1
    assert held_back("答案。", ["### Instruction:"]) == 0 and held_back("x", None) == 0


def test_stream_stops_at_a_string_split_across_pieces(loaded):
    """A stop string that arrives in two streamed pieces leaves no trace of its first half."""
    model, tok = loaded
    prompt = infer.make_prompt("介绍一下北京", True)
    pieces = list(stream(model, tok, prompt, temperature=0, max_new_tokens=24))
    full = "".join(pieces)
    assert len(pieces) > 2 and full == generate(model, tok, [prompt], temperature=0, max_new_tokens=24)[0]
    end = len(pieces[0])  # the stop string straddles the first piece boundary
    stop = full[end - 1:end + 1]
    got = "".join(stream(model, tok, prompt, stop=[stop], temperature=0, max_new_tokens=24))
    assert got == full[:full.find(stop)]


@pytest.mark.slow
def test_file_mode_cli_writes_predictions_and_config(tiny_model, tmp_path):
    base, loras = tiny_model
    data = tmp_path / "questions.txt"
    data.write_text("\n".join(QUESTIONS[:3]) + "\n\n", encoding="utf-8")
    out = tmp_path / "out" / "predictions.json"
    proc = subprocess.run([sys.executable, "-m", "helpers.infer", "--base_model", str(base), "--lora_model",
                           str(loras["alpaca"]), "--with_prompt", "--data_file", str(data), "--predictions_file",
                           str(out), "--only_cpu", "--max_new_tokens", "16", "--temperature", "0"],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    assert [r["Input"] for r in results] == QUESTIONS[:3]
    assert all(isinstance(r["Output"], str) and r["Output"] for r in results)
    config = json.loads((out.parent / "generation_config.json").read_text(encoding="utf-8"))
    assert config["max_new_tokens"] == 16 and config["do_sample"] is False and config["repetition_penalty"] == 1.1
    # the same greedy answers as the in-process batched call
    from helpers.modeling import load_model

    model, tok = load_model(base, loras["alpaca"], device="cpu")
    expected = infer.predict(model, tok, QUESTIONS[:3], batch_size=1, temperature=0, max_new_tokens=16)
    assert results == expected


@pytest.mark.slow
def test_interactive_mode_through_stdin(tiny_model):
    base, loras = tiny_model
    proc = subprocess.run([sys.executable, "-m", "helpers.infer", "--base_model", str(base), "--lora_model",
                           str(loras["llama"]), "--with_prompt", "--interactive", "--only_cpu",
                           "--max_new_tokens", "12", "--temperature", "0"],
                          input="介绍一下北京\nhello\n\nthis line is never read\n", capture_output=True, text=True,
                          cwd=REPO_ROOT, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("Input:") == 3  # two questions, then the empty line exits
    answers = [part.split("\n")[0] for part in proc.stdout.split("Response: ")[1:]]
    assert len(answers) == 2 and all(a.strip() for a in answers)
    assert "never read" not in proc.stdout


def test_interactive_streams_pieces(loaded):
    """Only the writes after ``Response: `` count (the banner alone makes many): the answer arrives in several
    pieces, and together they are the greedy answer that batched ``generate`` gives for the same prompt."""
    import io

    from helpers.prompts import get_family, stop_strings

    model, tok = loaded

    class Out(io.StringIO):
        def __init__(self):
            super().__init__()
            self.chunks: list[str] = []

        def write(self, s):
            self.chunks.append(s)
            return super().write(s)

    out = Out()
    n = infer.interactive(model, tok, True, stdin=io.StringIO("你好\n"), stdout=out, temperature=0,
                          max_new_tokens=10)
    assert n == 1
    chunks = [c for c in out.chunks if c]  # print(..., end="") also writes an empty end
    start = chunks.index("Response: ") + 1
    end = chunks.index("Input:", start)  # the next prompt
    assert chunks[end - 2:end] == ["\n", "\n"]  # print("\n") after the answer
    pieces = chunks[start:end - 2]
    want = generate(model, tok, [infer.make_prompt("你好", True)], temperature=0, max_new_tokens=10,
                    stop=stop_strings(get_family("alpaca")))[0]
    assert len(pieces) >= 2 and "".join(pieces) == want and want.strip()


def test_cli_errors_exit_2(tiny_model, tmp_path, capsys):
    base, _ = tiny_model
    assert infer.main(["--base_model", str(base), "--data_file", str(tmp_path / "missing.txt")]) == 2
    assert "--data_file" in capsys.readouterr().err
    assert infer.main(["--base_model", str(base), "--only_cpu", "--load_in_8bit"]) == 2
    assert "--load_in_8bit" in capsys.readouterr().err
    assert infer.main(["--base_model", str(tmp_path / "nope")]) == 2
    assert "--base_model" in capsys.readouterr().err
    assert infer.main(["--base_model", str(base), "--template", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: template/family 'nope' is unknown")
    (tmp_path / "gbk.txt").write_bytes("介绍一下北京".encode("gbk"))
    assert infer.main(["--base_model", str(base), "--data_file", str(tmp_path / "gbk.txt")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --data_file {tmp_path / 'gbk.txt'}: not UTF-8")
    assert infer.main(["--base_model", str(base), "--batch_size", "0"]) == 2
    assert capsys.readouterr().err == "error: --batch_size must be >= 1\n"
    assert infer.main(["--base_model", str(base), "--tokenizer_path", str(tmp_path)]) == 2  # no tokenizer files
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: no tokenizer.model")


def test_load_in_4bit_on_cpu_exits_2_naming_the_flag(tiny_model, monkeypatch, capsys):
    base, _ = tiny_model
    monkeypatch.setenv("COURSE_DEVICE", "cpu")  # the CPU even on a GPU machine
    for argv in (["--load_in_4bit"], ["--load_in_4bit", "--only_cpu"]):
        assert infer.main(["--base_model", str(base), *argv]) == 2
        err = capsys.readouterr().err
        assert "--load_in_4bit needs a CUDA GPU" in err and "drop the flag" in err and "Traceback" not in err


def test_load_in_8bit_on_cpu_is_a_clear_error(tiny_model):
    from helpers.modeling import load_model

    with pytest.raises(CourseError, match="CUDA"):
        load_model(tiny_model[0], device="cpu", load_in_8bit=True)


# --------------------------------------------------------------------------- long context (rope scaling), --alpha
def _hf_inv_freq(rope_parameters, head_dim=128, context=4096, seq_len=None):
    """Reference: transformers' own ROPE_INIT_FUNCTIONS for a LLaMA config with these rope parameters."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=context,
                      rope_parameters=rope_parameters)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    kind = rope_parameters["rope_type"]
    if kind == "default":
        return LlamaRotaryEmbedding(cfg).inv_freq.double().numpy()
    inv, _ = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu", seq_len=seq_len)
    return inv.double().numpy()


@pytest.mark.parametrize("method,params,seq_len", [
    ("rope", {"rope_type": "default", "rope_theta": 10000.0}, None),
    ("pi", {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}, None),
    ("ntk", {"rope_type": "default", "rope_theta": 10000.0 * 4.0 ** (128 / 126)}, None),
    ("dynamic", {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}, 3 * 4096),
    ("dynamic", {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}, 2048),
    ("yarn", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 4096},
     None),
])
def test_rope_frequencies_match_transformers(method, params, seq_len):
    ours = infer.rope_inv_freq(method, 128, 10000.0, 4.0, 4096, seq_len=seq_len)
    context = 4 * 4096 if method == "yarn" else 4096
    ref = _hf_inv_freq(params, context=context, seq_len=seq_len)
    assert ours.shape == ref.shape == (64,)
    assert abs(ours / ref - 1).max() < 1e-5


def test_rope_plot_and_bad_method():
    import matplotlib

    matplotlib.use("Agg")
    fig = infer.plot_rope_scaling()
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == len(infer.ROPE_METHODS) + 1
    with pytest.raises(CourseError, match="method 'xpos'"):
        infer.rope_inv_freq("xpos")


def _spy_load(monkeypatch, module):
    """Wrap ``module.load_model``: the models it returned, in order."""
    from helpers import modeling

    loaded = []

    def spy(*a, **kw):
        out = modeling.load_model(*a, **kw)
        loaded.append(out[0])
        out[0].forward_calls = 0

        def count(module, args, output):
            module.forward_calls += 1

        out[0].register_forward_hook(count)
        return out

    monkeypatch.setattr(module, "load_model", spy)
    return loaded


def test_alpha_flag_reaches_the_model(tiny_model, tmp_path, monkeypatch, capsys):
    base, _ = tiny_model
    loaded = _spy_load(monkeypatch, infer)
    data = tmp_path / "q.txt"
    data.write_text("hello\n", encoding="utf-8")
    argv = ["--base_model", str(base), "--only_cpu", "--data_file", str(data), "--predictions_file",
            str(tmp_path / "p.json"), "--max_new_tokens", "2", "--temperature", "0"]
    assert infer.main(argv + ["--alpha", "2"]) == 0
    assert loaded[-1].config.rope_parameters["rope_theta"] == pytest.approx(10000.0 * 2 ** (16 / 14))
    assert infer.main(argv + ["--alpha", "auto"]) == 0
    assert loaded[-1].config.rope_parameters["rope_type"] == "dynamic"
    capsys.readouterr()
    assert infer.main(argv + ["--alpha", "fast"]) == 2
    assert capsys.readouterr().err.startswith("error: --alpha fast:")


def test_draft_model_flag_gives_the_targets_greedy_answers(tmp_path, monkeypatch, capsys):
    from helpers import tiny

    paths = tiny.speculative_pair()
    data = tmp_path / "q.txt"
    data.write_text("hello\nOnce upon a time\n", encoding="utf-8")
    argv = ["--base_model", str(paths["target"]), "--only_cpu", "--data_file", str(data), "--max_new_tokens", "12",
            "--temperature", "0"]
    assert infer.main(argv + ["--predictions_file", str(tmp_path / "alone.json")]) == 0
    loaded = _spy_load(monkeypatch, infer)
    assert infer.main(argv + ["--predictions_file", str(tmp_path / "spec.json"), "--draft_model",
                              str(paths["draft"]), "--draft_k", "3"]) == 0
    alone, spec = (json.loads((tmp_path / f).read_text(encoding="utf-8")) for f in ("alone.json", "spec.json"))
    assert spec == alone and "speculative decoding" in capsys.readouterr().out
    target, draft = loaded  # the draft really drafted, 3 tokens a round: the target ran fewer passes than tokens
    assert draft.config.num_hidden_layers == 1 and draft.forward_calls > 0
    assert target.forward_calls < 2 * 12
    assert infer.main(argv + ["--speculative_sampling"]) == 2
    assert "--draft_base_model" in capsys.readouterr().err
    other = tiny_hf()
    capsys.readouterr()
    assert infer.main(argv + ["--draft_base_model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "error: --draft_base_model" in err and "has 1000" in err and "Traceback" not in err


def tiny_hf():
    """A draft whose vocabulary differs from the target's (1000): the merged tiny Chinese-Alpaca (extended)."""
    from helpers import tiny

    return tiny.merged_model("alpaca")
