"""Across tokenizers (commlib.channels.vocab): CIPHER and AVP's rosetta through shared tokens.

The receiver with a permuted vocabulary is the tiny model itself with its byte tokens renumbered and its
embedding rows moved with them: it reads token t at t's new id exactly as the original reads t, so every
projected message has an answer computed from the original model alone.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from commlib.channels.cipher import soft_message, soft_messages
from commlib.channels.slot import embed, embedding_table, message_prompt
from commlib.channels.vocab import (
    MIN_SHARED_TOKENS,
    embedding_norm,
    rosetta_vectors,
    shared_vocabulary,
    token_embeddings,
    token_keys,
    vocab_projection,
)
from commlib.errors import CommlibError
from commlib.experiments import run_n_sweep, run_reasoning
from commlib.experiments.games import run_games
from commlib.models import Model, byte_tokenizer
from commlib.protocols.debate import cipher_debate
from commlib.protocols.questions import ReasoningConfig
from commlib.protocols.readings import Condition, SideNeeds, read, sender_side
from commlib.tasks.games import countries
from commlib.tasks.items import ReasoningItem

PROMPTS = ["Alice is at the Eiffel Tower.", "Bob is visiting the Colosseum in Rome today.", "Hi"]
SPECIALS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>"}


def _byte_level(vocab: dict[str, int]) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    tok.add_special_tokens(dict(SPECIALS, additional_special_tokens=["<|im_start|>"]))
    tok.chat_template = byte_tokenizer().chat_template
    return tok


@pytest.fixture(scope="module")
def perm() -> torch.Tensor:
    """New id of each of the 256 byte tokens."""
    return torch.randperm(256, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def permuted(tiny: Model, perm: torch.Tensor) -> Model:
    """The tiny model with its byte tokens renumbered by ``perm`` (specials keep their ids)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = _byte_level({ch: int(perm[i]) for i, ch in enumerate(alphabet)})
    tok.padding_side = "left"
    hf = copy.deepcopy(tiny.hf)
    full = torch.cat([perm, torch.arange(256, 260)])
    for layer in (hf.get_input_embeddings(), hf.get_output_embeddings()):
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        moved = weight.detach().clone()
        moved[full] = weight.detach()
        weight.data.copy_(moved)
    info = dataclasses.replace(tiny.info, name="tiny-permuted")
    return Model(info=info, hf=hf, tokenizer=tok)


@pytest.fixture(scope="module")
def letters(tiny: Model) -> Model:
    """The tiny model behind a tokenizer of ten letters: too small an overlap with any other."""
    tok = _byte_level({ch: i for i, ch in enumerate("abcdefghij")})
    return Model(info=dataclasses.replace(tiny.info, name="tiny-letters"), hf=tiny.hf, tokenizer=tok)


def _renormalised_reference(model: Model, probs: torch.Tensor) -> torch.Tensor:
    """Expected byte-token embedding of ``model`` under ``probs`` with the specials' mass taken out."""
    shared = probs[:, :256]
    return (shared / shared.sum(-1, keepdim=True)) @ embedding_table(model)[:256]


# --------------------------------------------------------------------------- #
# The index
# --------------------------------------------------------------------------- #


def test_a_shared_tokenizer_is_the_identity_and_gives_todays_cipher(tiny: Model, tiny_wide: Model) -> None:
    for receiver in (tiny, tiny_wide):
        v = vocab_projection(tiny, receiver)
        assert v.identical and v.record()["projection"].startswith("identity")
        for msg in soft_messages(tiny, receiver, PROMPTS, temperature=0.7, max_tokens=5):
            table = embedding_table(receiver)
            assert torch.equal(msg.vectors, msg.probs.to(table.dtype) @ table)  # CIPHER's p @ E_B
            assert msg.outside is not None and not msg.outside.any()


def test_a_permuted_vocabulary_maps_each_token_to_its_new_id(tiny: Model, permuted: Model, perm) -> None:
    v = vocab_projection(tiny, permuted)
    assert not v.identical and v.n_shared == 256
    assert torch.equal(v.target_ids, perm[v.source_ids])
    assert sorted(v.source_ids.tolist()) == list(range(256))  # specials are not shared
    ids = tiny.tokenizer("Eiffel", add_special_tokens=False)["input_ids"]
    assert torch.equal(token_embeddings(permuted, v, ids), embed(tiny, torch.tensor(ids)))


def test_renamed_pieces_match_by_the_text_they_stand_for() -> None:
    """SentencePiece's ▁ and byte fallback against byte-level's Ġ and Ċ; special tokens never match, a
    non-special added token matches by its text (and is read over a byte-fallback twin)."""
    a = _byte_level({"Ġthe": 0, "the": 1, "Ċ": 2, "Ġcat": 3, "ĠMUSEUM": 4, "!": 5, "ĊĊ": 6})
    core = Tokenizer(
        models.WordLevel({"<unk>": 0, "▁cat": 1, "the": 2, "▁the": 3, "<0x0A>": 4, "▁!": 5}, "<unk>")
    )
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    b = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    b.add_special_tokens({"eos_token": "<eos>"})
    b.add_tokens(["\n\n", "\n"])  # not special: Gemma's newline tokens
    v = shared_vocabulary(a, b)
    expected = {"Ġthe": "▁the", "the": "the", "Ċ": "\n", "Ġcat": "▁cat", "ĊĊ": "\n\n"}  # "!" is not " !"
    got = {
        a.convert_ids_to_tokens(int(i)): b.convert_ids_to_tokens(int(j))
        for i, j in zip(v.source_ids, v.target_ids, strict=True)
    }
    assert got == expected
    assert b.convert_tokens_to_ids("<eos>") not in token_keys(b)


def test_the_index_is_cached_per_pair(tiny: Model, permuted: Model) -> None:
    first = shared_vocabulary(tiny.tokenizer, permuted.tokenizer, sender_size=260, receiver_size=260)
    assert shared_vocabulary(tiny.tokenizer, permuted.tokenizer, sender_size=260, receiver_size=260) is first
    assert (
        shared_vocabulary(permuted.tokenizer, tiny.tokenizer, sender_size=260, receiver_size=260) is not first
    )


# --------------------------------------------------------------------------- #
# Mass outside the overlap
# --------------------------------------------------------------------------- #


def test_mass_outside_the_overlap_on_a_constructed_pair() -> None:
    a = _byte_level({"a": 0, "b": 1, "c": 2, "Ġd": 3})
    b = _byte_level({"Ġd": 0, "x": 1, "a": 2})
    v = shared_vocabulary(a, b, sender_size=8, receiver_size=8)
    pieces_a = [a.convert_ids_to_tokens(i) for i in range(8)]
    pieces_b = set(b.convert_ids_to_tokens(i) for i in range(3))
    probs = torch.softmax(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), -1)
    inside = torch.tensor([p in pieces_b for p in pieces_a])  # the specials' pieces are never shared
    inside[4:] = False
    assert torch.allclose(v.outside(probs), probs[:, ~inside].sum(-1))
    q = v.project(probs)
    assert torch.allclose(q.sum(-1), torch.ones(5))
    assert torch.allclose(q[:, b.convert_tokens_to_ids("a")], probs[:, 0] / probs[:, inside].sum(-1))
    assert torch.allclose(q[:, b.convert_tokens_to_ids("Ġd")], probs[:, 3] / probs[:, inside].sum(-1))
    nothing = torch.zeros(1, 8)
    nothing[0, 1] = 1.0  # all of it on "b", which B lacks
    assert v.outside(nothing).item() == 1.0 and not v.project(nothing).any()


def test_cipher_across_a_permuted_vocabulary_reads_the_renormalised_byte_tokens(
    tiny: Model, permuted: Model
) -> None:
    for t in (0.0, 1.0):
        msg = soft_message(tiny, permuted, PROMPTS[0], temperature=t, max_tokens=6)
        assert torch.allclose(msg.vectors, _renormalised_reference(tiny, msg.probs), atol=1e-6)
        assert msg.outside is not None
        assert torch.allclose(msg.outside, msg.probs[:, 256:].sum(-1), atol=1e-6)


# --------------------------------------------------------------------------- #
# Refusal
# --------------------------------------------------------------------------- #


def test_too_small_an_overlap_is_refused_in_one_line_with_what_was_measured(
    tiny: Model, letters: Model
) -> None:
    measured = shared_vocabulary(tiny.tokenizer, letters.tokenizer, sender_size=260, receiver_size=260)
    assert measured.n_shared < MIN_SHARED_TOKENS
    with pytest.raises(CommlibError) as err:
        soft_message(tiny, letters, PROMPTS[0], temperature=1.0, max_tokens=2)
    text = str(err.value)
    assert "\n" not in text and f"share {measured.n_shared} tokens" in text and "typical text" in text
    with pytest.raises(CommlibError, match="share"):
        rosetta_vectors(tiny, letters, PROMPTS[:1])


# --------------------------------------------------------------------------- #
# Batched equals one at a time
# --------------------------------------------------------------------------- #


def test_batched_cipher_across_tokenizers_equals_one_prompt_at_a_time(tiny: Model, permuted: Model) -> None:
    batched = soft_messages(tiny, permuted, PROMPTS, temperature=0.8, max_tokens=5, batch_size=3)
    for prompt, msg in zip(PROMPTS, batched, strict=True):
        single = soft_message(tiny, permuted, prompt, temperature=0.8, max_tokens=5)
        assert msg.nearest_ids == single.nearest_ids
        assert torch.allclose(msg.vectors, single.vectors, atol=1e-5)
        assert msg.outside is not None and single.outside is not None
        assert torch.allclose(msg.outside, single.outside, atol=1e-6)


def test_rosetta_is_one_vector_at_b_embedding_norm_and_batched_equals_single(
    tiny: Model, permuted: Model
) -> None:
    vectors, outside = rosetta_vectors(tiny, permuted, PROMPTS, batch_size=3)
    assert vectors.shape == (3, tiny.info.d_model)
    assert torch.allclose(vectors.norm(dim=-1), torch.full((3,), embedding_norm(permuted)), rtol=1e-4)
    for i, prompt in enumerate(PROMPTS):
        one, out_one = rosetta_vectors(tiny, permuted, [prompt])
        assert torch.allclose(vectors[i], one[0], atol=1e-5) and torch.allclose(
            outside[i], out_one[0], atol=1e-6
        )
        # the same direction as A's own vocabulary-mediated vector (renumbering changes nothing)
        same, _ = rosetta_vectors(tiny, tiny, [prompt])
        assert torch.nn.functional.cosine_similarity(one, same).item() > 0.9


# --------------------------------------------------------------------------- #
# Wired into the games and the controlled experiment
# --------------------------------------------------------------------------- #


def test_games_run_cipher_and_rosetta_across_tokenizers_and_record_it(
    tiny: Model, permuted: Model, tmp_path
) -> None:
    res = run_games(
        "countries", tiny, permuted, ["cipher", "rosetta"], k=None, j=None, n=2, out_dir=tmp_path,
        max_new_tokens=2, progress=False,
    )  # fmt: skip
    assert res["methods"]["cipher"]["n"] == 2 and res["methods"]["rosetta"]["n"] == 2
    settings = json.loads((tmp_path / "run.json").read_text())
    recorded = json.dumps(settings)
    assert "shared tokens, renormalised" in recorded and '"shared_tokens": 256' in recorded


def test_the_controlled_experiment_reads_projected_messages(tiny: Model, permuted: Model) -> None:
    items = countries(2)
    side = sender_side(tiny, permuted, items, SideNeeds.of([Condition("cipher-t0"), Condition("cipher-t1")]),
                       message_tokens=4)  # fmt: skip
    for name in ("cipher-t0", "cipher-t1", "rosetta"):
        readings = read(Condition(name), items, side, tiny, permuted, max_new_tokens=2)
        assert len(readings) == 2 and readings[0].final_state.shape == (tiny.info.d_model,)
    # cipher-t0 across tokenizers: A's greedy tokens as B's embeddings of their twins, the same as A's own
    ids = side.trajectories[0].token_ids
    v = vocab_projection(tiny, permuted)
    shared = [i for i in ids if i < 256]
    assert torch.equal(token_embeddings(permuted, v, shared), embed(tiny, torch.tensor(shared)))
    assert message_prompt(items[0]) in [message_prompt(it) for it in side.items]


# --------------------------------------------------------------------------- #
# Wired into the sweep over n and the CIPHER debate
# --------------------------------------------------------------------------- #

SWEEP = {"n": 2, "message_tokens": 4, "max_new_tokens": 2, "n_reference": 300, "progress": False}
ITEM = ReasoningItem("Tom has 3 apples and buys 4 more. How many apples does he have?", "7", id="t")


def _settings(out_dir) -> dict:
    return json.loads((out_dir / "run.json").read_text())


def test_the_sweep_over_n_runs_cipher_across_tokenizers_records_it_and_resumes(
    tiny: Model, permuted: Model, tmp_path
) -> None:
    across, same = tmp_path / "across", tmp_path / "same"
    res = run_n_sweep("countries", tiny, permuted, ["cipher"], [0, "all"], out_dir=across, **SWEEP)
    points = res["methods"]["cipher"]["points"]
    assert points["0"]["n_items"] == points["all"]["n_items"] == 2 and points["all"]["n_sent"] > 0
    settings = _settings(across)
    assert settings["vocabulary"] == vocab_projection(tiny, permuted).record()
    assert settings["vocabulary"]["shared_tokens"] == 256 and "vocabulary_receiver_to_sender" not in settings
    # n = 0 is A's greedy tokens, read as their twins: the renumbered B answers as the original B does
    run_n_sweep("countries", tiny, tiny, ["cipher"], [0], out_dir=same, **SWEEP)
    rows = {d: pd.read_csv(d / "items.csv", dtype=str) for d in (across, same)}
    zero = rows[across][rows[across]["n"] == "0"].reset_index(drop=True)
    assert zero[["item_id", "message", "output"]].equals(rows[same][["item_id", "message", "output"]])
    again = run_n_sweep("countries", tiny, permuted, ["cipher"], [0, "all"], out_dir=across, **SWEEP)
    assert again["methods"] == res["methods"] and len(pd.read_csv(across / "items.csv")) == 4


def test_a_same_tokenizer_run_records_nothing_new(tiny: Model, tiny_wide: Model, tmp_path) -> None:
    run_n_sweep("countries", tiny, tiny_wide, ["cipher"], [0], out_dir=tmp_path / "sweep", **SWEEP)
    run_reasoning(
        "gsm8k", tiny, tiny_wide, ["cipher-debate"], out_dir=tmp_path / "debate", n=1, rounds=1,
        max_new_tokens=2, progress=False,
    )  # fmt: skip
    for run in ("sweep", "debate"):
        assert not [key for key in _settings(tmp_path / run) if key.startswith("vocabulary")]


def test_the_cipher_debate_runs_across_tokenizers_and_records_both_ways(
    tiny: Model, permuted: Model, tmp_path
) -> None:
    res = run_reasoning(
        "gsm8k", tiny, permuted, ["cipher-debate"], out_dir=tmp_path, n=2, rounds=2, max_new_tokens=3,
        progress=False,
    )  # fmt: skip
    assert res["methods"]["cipher-debate"]["n"] == 2
    settings = _settings(tmp_path)
    assert settings["vocabulary"] == vocab_projection(tiny, permuted).record()
    assert settings["vocabulary_receiver_to_sender"] == vocab_projection(permuted, tiny).record()
    # at T = 0 every message is the writer's greedy tokens, read by the other as their twins: the
    # renumbered B debates as the original B does
    cfg = ReasoningConfig(rounds=3, max_new_tokens=6)
    cold = cipher_debate((0.0, 0.0))
    assert cold(ITEM, tiny, permuted, cfg).transcript == cold(ITEM, tiny, tiny, cfg).transcript


def test_the_sweep_and_the_debate_refuse_too_small_an_overlap_before_any_work(
    tiny: Model, letters: Model, tmp_path
) -> None:
    with pytest.raises(CommlibError, match="share") as sweep:
        run_n_sweep("countries", tiny, letters, ["cipher"], [0], out_dir=tmp_path / "sweep", **SWEEP)
    with pytest.raises(CommlibError, match="share") as debate:
        run_reasoning(
            "gsm8k", tiny, letters, ["cipher-debate"], out_dir=tmp_path / "debate", n=1, rounds=1,
            max_new_tokens=2, progress=False,
        )  # fmt: skip
    for err in (sweep, debate):
        assert "\n" not in str(err.value) and "typical text" in str(err.value)
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "debate").exists()


def test_interlat_with_a_text_rest_refuses_a_pair_that_tokenizes_differently(
    tiny: Model, permuted: Model, tmp_path
) -> None:
    """The sweep over n and the adapter's curriculum read A's later tokens in B's table: meaningless here."""
    from commlib.channels.interlat import train_adapter

    with pytest.raises(CommlibError, match="must share a tokenizer") as sweep:
        run_n_sweep("countries", tiny, permuted, ["interlat"], [0], out_dir=tmp_path / "sweep", **SWEEP)
    with pytest.raises(CommlibError, match="must share a tokenizer") as train:
        train_adapter(tiny, permuted, "countries", tmp_path / "adapter", n_train=1, steps=1, progress=False)
    for err in (sweep, train):
        assert "\n" not in str(err.value)
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "adapter").exists()
    run_n_sweep("countries", tiny, tiny, ["interlat"], [0], out_dir=tmp_path / "same", **SWEEP)  # one vocab
