"""helpers.generation: speculative decoding (transformers' assisted generation) with the tiny target/draft pair:
greedy output identical to the target alone, the draft's acceptance measured, a foreign vocabulary refused first."""
import pytest
import torch

from helpers import tiny
from helpers.core import CourseError
from helpers.generation import check_draft, generate, speculative_generate

PROMPTS = ["Once upon a time", "The weather today is", "hello", "I like to read books about"]
GREEDY = dict(temperature=0, max_new_tokens=40)


@pytest.fixture(scope="module")
def pair():
    """``(target, tokenizer, {"draft", "draft_random", "target"} -> draft models)`` on CPU, one thread (token-by-token
    decoding of tiny models is 10-50x slower with two threads on a busy machine: measured)."""
    from helpers.modeling import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    paths = tiny.speculative_pair()
    target, tok = load_model(paths["target"], device="cpu")
    drafts = {name: load_model(paths[name], device="cpu")[0] for name in ("draft", "draft_random", "target")}
    yield target, tok, drafts
    torch.set_num_threads(threads)


def _alone(target, tok, prompt):
    """Reference: transformers' plain greedy decoding of the target, no draft involved."""
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = target.generate(**enc, do_sample=False, max_new_tokens=GREEDY["max_new_tokens"], repetition_penalty=1.1,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("draft_k", [None, 3])
def test_greedy_speculative_output_is_the_targets_own(pair, draft_k):
    target, tok, drafts = pair
    for prompt in PROMPTS:
        expected = _alone(target, tok, prompt)
        for name in ("draft", "draft_random"):
            got = speculative_generate(target, tok, prompt, drafts[name], draft_k, **GREEDY)
            assert got.text == expected, (name, prompt)
            assert got.new_tokens == GREEDY["max_new_tokens"] and got.draft_calls > 0


def test_acceptance_rate_bounds(pair):
    """The target drafting for itself has every token accepted (and needs far fewer target passes than tokens);
    the truncated copy is accepted part of the time, the unrelated random draft (almost) never."""
    target, tok, drafts = pair
    same = speculative_generate(target, tok, PROMPTS[0], drafts["target"], 4, **GREEDY)
    assert same.acceptance_rate == 1.0 and same.target_calls <= GREEDY["max_new_tokens"] // 5 + 1
    copy = [speculative_generate(target, tok, p, drafts["draft"], 4, **GREEDY).acceptance_rate for p in PROMPTS]
    rand = [speculative_generate(target, tok, p, drafts["draft_random"], 4, **GREEDY).acceptance_rate for p in PROMPTS]
    assert sum(rand) / len(rand) < 0.1 < sum(copy) / len(copy) < 1.0
    alone = speculative_generate(target, tok, PROMPTS[0], None, **GREEDY)
    assert alone.target_calls == GREEDY["max_new_tokens"] and alone.acceptance_rate is None


def test_draft_with_another_vocabulary_is_refused_before_generating(pair):
    from transformers import LlamaConfig, LlamaForCausalLM

    target, tok, _ = pair
    foreign = LlamaForCausalLM(LlamaConfig(**tiny.TINY_CONFIG, vocab_size=1200)).eval()
    calls = []
    handle = target.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(CourseError, match=r"--draft_base_model.*1200 tokens.*has 1000"):
            speculative_generate(target, tok, "hello", foreign, **GREEDY)
        with pytest.raises(CourseError, match="1200"):
            generate(target, tok, ["hello"], assistant_model=foreign, **GREEDY)
    finally:
        handle.remove()
    assert calls == []  # nothing was generated
    check_draft(target, target)  # same vocabulary: accepted


def test_batched_generate_with_a_draft_runs_one_prompt_at_a_time(pair):
    target, tok, drafts = pair
    from helpers.generation import draft_kwargs

    plain = generate(target, tok, PROMPTS, batch_size=1, **GREEDY)
    assisted = generate(target, tok, PROMPTS, batch_size=4, **draft_kwargs(drafts["draft"]), **GREEDY)
    assert assisted == plain == [_alone(target, tok, p) for p in PROMPTS]
