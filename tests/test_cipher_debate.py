"""CIPHER debate: at temperature 0 it is the debate with each answer passed on as its exact tokens."""

from __future__ import annotations

import pytest
import torch

from commlib.backends import Decoding, get_backend
from commlib.channels.slot import prompt_parts
from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import Batch, encode
from commlib.protocols.debate import cipher_debate, nld
from commlib.protocols.questions import ReasoningConfig, debate_prompt, question_prompt
from commlib.protocols.reasoning import run_reasoning_method
from commlib.sweep import until_eos
from commlib.tasks.items import ReasoningItem

ITEM = ReasoningItem(
    "Tom has 3 apples and buys 4 more. How many apples does he have?", "7", id="t", task="gsm8k"
)


def token_debate(a: Model, b: Model, item: ReasoningItem, rounds: int, tokens: int) -> list[str]:
    """nld through the ordinary generation path, each agent reading the other's greedy token ids
    (blank tokens at both ends dropped, as nld strips the text) instead of re-tokenised text."""
    answers: dict[str, list[int]] = {}
    transcript = []
    for r in range(rounds):
        previous = dict(answers)
        for agent, model, other in (("a", a, "b"), ("b", b, "a")):
            if r == 0:
                ids = encode(model, [question_prompt(item)]).input_ids
            else:
                pre, post = prompt_parts(model, debate_prompt(item, "{message}"), "")
                said = previous[other]
                blank = [not model.tokenizer.decode([i], skip_special_tokens=True).strip() for i in said]
                while said and blank[0]:
                    said, blank = said[1:], blank[1:]
                while said and blank[-1]:
                    said, blank = said[:-1], blank[:-1]
                ids = torch.cat([pre, torch.tensor(said, dtype=torch.long), post])[None]
            gen = get_backend(model).generate(
                Batch(ids, torch.ones_like(ids)), None, Decoding(max_new_tokens=tokens)
            )
            answers[agent] = until_eos(gen.token_ids[0].tolist(), model)
            transcript.append(model.tokenizer.decode(answers[agent], skip_special_tokens=True))
    return transcript


def test_cold_cipher_debate_is_the_debate_on_exact_tokens(tiny: Model, tiny_wide: Model) -> None:
    cfg = ReasoningConfig(rounds=3, max_new_tokens=8)
    cold = cipher_debate((0.0, 0.0))(ITEM, tiny, tiny_wide, cfg)
    assert cold.transcript == token_debate(tiny, tiny_wide, ITEM, 3, 8)
    assert cold.text == cold.transcript[-1] or cold.text == cold.transcript[-2]  # B's, or A's when B has none
    text = nld(ITEM, tiny, tiny_wide, cfg)
    assert cold.transcript[:2] == text.transcript[:2]  # the first round reads the same text prompt
    warm = cipher_debate((0.0, 1.0))(ITEM, tiny, tiny_wide, cfg)
    assert warm.transcript[0] == cold.transcript[0]  # A's first answer: T_A = 0 in both


def test_cipher_debate_is_registered_and_checks_its_settings(tiny: Model) -> None:
    out = run_reasoning_method("cipher-debate", ITEM, tiny, tiny, ReasoningConfig(rounds=2, max_new_tokens=3))
    assert len(out.transcript) == 4 and out.prompt_a == encode(tiny, [question_prompt(ITEM)]).length
    assert 0 < out.message <= 3 and 0 < out.answer <= 3
    with pytest.raises(CommlibError, match="rounds"):
        run_reasoning_method("cipher-debate", ITEM, tiny, tiny, ReasoningConfig(rounds=0))


@pytest.mark.integration
def test_cipher_debate_checks_the_overlap_both_ways_before_any_work(tiny: Model, smol: Model) -> None:
    """A's byte tokens all reach SmolLM2, but SmolLM2's words do not reach A: refused from B's side."""
    with pytest.raises(CommlibError, match=f"^{smol.name} and {tiny.name} share .* typical text"):
        run_reasoning_method("cipher-debate", ITEM, tiny, smol, ReasoningConfig(rounds=1, max_new_tokens=2))


@pytest.mark.integration
def test_cold_cipher_debate_equals_nld_on_smollm2(smol: Model) -> None:
    from commlib.tasks.reasoning import load_task

    item = load_task("gsm8k", n=2, seed=0)[1]  # its answers end in a newline, which nld strips
    cfg = ReasoningConfig(rounds=2, max_new_tokens=24)
    cold, text = cipher_debate((0.0, 0.0))(item, smol, smol, cfg), nld(item, smol, smol, cfg)
    assert cold.transcript == text.transcript and cold.text == text.text
