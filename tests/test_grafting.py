"""What must be true of grafting, on tiny random models and on real SmolLM2.

The reference for every check is plain HuggingFace (``output_hidden_states``,
``generate``) or the other backend; no expected value is hard-coded.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from commlib.backends import Decoding, Edit, get_backend
from commlib.backends.base import Backend
from commlib.combine import LinearMap, MapInfo
from commlib.errors import (
    CommlibError,
    EmptyPromptError,
    LayerOutOfRangeError,
    NonFiniteActivationError,
    UnknownBackendError,
)
from commlib.graft import GraftConfig, capture_sender, communicate, graft_edit
from commlib.models import Model
from commlib.prompts import Batch, encode, message_positions, span_available, split_shared_prefix

BACKENDS = ["nnsight", "transformer-lens"]
SENDER = ["Alice is at the Eiffel Tower.", "Bob is at the Colosseum in Rome."]
RECEIVER = ["Which country is Alice located in?", "Which country is Bob located in?"]


def mid(model: Model) -> int:
    return (2 * model.info.n_layers) // 3


def hf_hidden(model: Model, batch: Batch) -> tuple[torch.Tensor, ...]:
    out = model.hf(
        batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        output_hidden_states=True,
    )
    return out.hidden_states


@pytest.mark.parametrize("backend", BACKENDS)
def test_capture_equals_hf_hidden_states(
    any_model: Model, backend: str, eager_twin: Callable[[Model], Model]
) -> None:
    if backend == "transformer-lens":  # its bridge runs eager attention: compare with HF's eager
        any_model = eager_twin(any_model)
    be = get_backend(any_model, backend)
    batch = encode(any_model, SENDER)
    hidden = hf_hidden(any_model, batch)
    for k in (0, mid(any_model), any_model.info.n_layers - 2):
        got = be.capture(batch, k)
        assert torch.equal(got, hidden[k + 1][:, -1]), f"layer {k}"
    # HF applies the final norm to its last hidden state; commlib keeps the block output.
    last = be.capture(batch, any_model.info.n_layers - 1)
    assert torch.equal(any_model.hf.model.norm(last), hidden[-1][:, -1])
    all_pos = be.residuals(batch, [1])[1]
    real = batch.attention_mask.bool()
    assert torch.equal(all_pos[real], hidden[2][real])


def test_backends_agree_on_grafted_logits_and_tokens(any_model: Model) -> None:
    k = j = mid(any_model)
    for f in ("sum", "mean", "replace"):
        cfg = GraftConfig(k=k, j=j, f=f)
        outs = {
            b: communicate(
                any_model, any_model, SENDER, RECEIVER, cfg, backend=b, decoding=Decoding(max_new_tokens=6)
            )
            for b in BACKENDS
        }
        nn, tl = outs["nnsight"], outs["transformer-lens"]
        assert (nn.first_logits - tl.first_logits).abs().max().item() <= 1e-4, f
        assert torch.equal(nn.token_ids, tl.token_ids), f


def test_backends_agree_across_widths(tiny: Model, tiny_wide: Model) -> None:
    cfg = GraftConfig(k=2, j=1, f="sum")
    nn = communicate(
        tiny, tiny_wide, SENDER, RECEIVER, cfg, backend="nnsight", decoding=Decoding(max_new_tokens=5)
    )
    tl = communicate(
        tiny,
        tiny_wide,
        SENDER,
        RECEIVER,
        cfg,
        backend="transformer-lens",
        decoding=Decoding(max_new_tokens=5),
    )
    assert (nn.first_logits - tl.first_logits).abs().max().item() <= 1e-4
    assert torch.equal(nn.token_ids, tl.token_ids)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("f", ["replace", "mean"])
def test_identity_graft_leaves_output_unchanged(any_model: Model, backend: str, f: str) -> None:
    """A = B, same prompt, k = j: f(b, b) = b, so nothing may change."""
    k = mid(any_model)
    plain = communicate(
        any_model,
        any_model,
        RECEIVER,
        RECEIVER,
        GraftConfig(k=k, j=k, f="none"),
        backend=backend,
        decoding=Decoding(max_new_tokens=8),
    )
    graft = communicate(
        any_model,
        any_model,
        RECEIVER,
        RECEIVER,
        GraftConfig(k=k, j=k, f=f),
        backend=backend,
        decoding=Decoding(max_new_tokens=8),
    )
    assert torch.equal(graft.first_logits, plain.first_logits)
    assert torch.equal(graft.token_ids, plain.token_ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_token_replace_of_b_by_itself_leaves_output_unchanged(tiny: Model, backend: str) -> None:
    """The all-token ablation with A = B on the same prompt writes B's own states back: nothing changes."""
    batch = encode(tiny, RECEIVER)
    n_all = span_available(batch, message_positions(tiny, RECEIVER, batch))
    assert n_all > 3

    def run(f: str, n: int) -> torch.Tensor:
        cfg, dec = GraftConfig(k=1, j=1, f=f, n_positions=n), Decoding(max_new_tokens=4)
        return communicate(tiny, tiny, RECEIVER, RECEIVER, cfg, backend=backend, decoding=dec).first_logits

    assert torch.equal(run("replace", n_all), run("none", 1))
    assert not torch.allclose(run("sum", 3), run("sum", 1))  # more grafted positions, another state
    with pytest.raises(CommlibError, match=f"n_positions <= {n_all}"):
        run("replace", n_all + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_graft_equals_plain_hf_generate(any_model: Model, backend: str) -> None:
    out = communicate(
        any_model,
        any_model,
        SENDER,
        RECEIVER,
        GraftConfig(k=0, j=0, f="none"),
        backend=backend,
        decoding=Decoding(max_new_tokens=10),
    )
    batch = encode(any_model, RECEIVER)
    ref = any_model.hf.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=10,
        do_sample=False,
        pad_token_id=any_model.tokenizer.pad_token_id,
    )
    assert torch.equal(out.token_ids, ref[:, batch.length :])


@pytest.mark.integration
def test_real_graft_changes_the_answer(smol: Model) -> None:
    """A's residual from another prompt at a mid layer must move B's logits and its greedy answer."""
    k = mid(smol)
    plain = communicate(
        smol, smol, SENDER, RECEIVER, GraftConfig(k=k, j=k, f="none"), decoding=Decoding(max_new_tokens=12)
    )
    graft = communicate(
        smol, smol, SENDER, RECEIVER, GraftConfig(k=k, j=k, f="replace"), decoding=Decoding(max_new_tokens=12)
    )
    assert (graft.first_logits - plain.first_logits).abs().max().item() > 1.0
    assert not torch.equal(graft.token_ids, plain.token_ids)


def test_graft_changes_logits_on_tiny(tiny: Model) -> None:
    for f in ("sum", "mean", "replace"):
        plain = communicate(
            tiny, tiny, SENDER, RECEIVER, GraftConfig(k=1, j=1, f="none"), decoding=Decoding(max_new_tokens=1)
        )
        graft = communicate(
            tiny, tiny, SENDER, RECEIVER, GraftConfig(k=1, j=1, f=f), decoding=Decoding(max_new_tokens=1)
        )
        assert (graft.first_logits - plain.first_logits).abs().max().item() > 1e-3, f


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_generation_equals_recomputing_with_the_edit(any_model: Model, backend: str) -> None:
    """The KV cache carries the prefill edit: same tokens as re-running the full sequence each step."""
    be: Backend = get_backend(any_model, backend)
    k = mid(any_model)
    a = capture_sender(be, SENDER, k)
    batch = encode(any_model, RECEIVER)
    edit = graft_edit(a, message_positions(any_model, RECEIVER, batch), GraftConfig(k=k, j=k, f="sum"))
    n = 6
    cached = be.generate(batch, edit, Decoding(max_new_tokens=n, stop_at_eos=False))
    ids, mask = batch.input_ids, batch.attention_mask
    for step in range(n):
        logits = be.logits(Batch(ids, mask), edit)[:, -1]
        nxt = logits.argmax(-1)
        assert torch.equal(nxt, cached.token_ids[:, step]), f"step {step}"
        if step == 0:
            assert (logits - cached.first_logits).abs().max().item() <= 1e-4
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_one_by_one(any_model: Model, backend: str) -> None:
    cfg = GraftConfig(k=mid(any_model), j=mid(any_model), f="mean")
    batched = communicate(
        any_model, any_model, SENDER, RECEIVER, cfg, backend=backend, decoding=Decoding(max_new_tokens=8)
    )
    assert (
        encode(any_model, RECEIVER).attention_mask.min() == 0
        or encode(any_model, SENDER).attention_mask.min() == 0
    )
    for i in range(len(SENDER)):
        single = communicate(
            any_model,
            any_model,
            SENDER[i : i + 1],
            RECEIVER[i : i + 1],
            cfg,
            backend=backend,
            decoding=Decoding(max_new_tokens=8),
        )
        assert (single.first_logits[0] - batched.first_logits[i]).abs().max().item() <= 1e-4
        n = single.token_ids.shape[1]
        assert torch.equal(single.token_ids[0], batched.token_ids[i, :n])


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_that_end_leave_the_batch_and_the_others_decode_as_alone(
    tiny: Model, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    be = get_backend(tiny, backend)
    prompts = ["The cat sat on the mat.", "Numbers: 1 2 3 4 5 6"]  # two lengths, two continuations
    free = [
        be.generate(encode(tiny, [p]), None, Decoding(max_new_tokens=8, stop_at_eos=False)).token_ids[0]
        for p in prompts
    ]
    step = next(i for i in range(1, 6) if int(free[0][i]) not in free[1].tolist())
    monkeypatch.setattr(Model, "eos_token_ids", lambda self: [int(free[0][step])])  # row 0 ends there
    decoding = Decoding(max_new_tokens=8)
    batched = be.generate(encode(tiny, prompts), None, decoding).token_ids
    alone = [be.generate(encode(tiny, [p]), None, decoding).token_ids[0] for p in prompts]
    assert len(alone[0]) == step + 1 and len(alone[1]) == 8 == batched.shape[1]
    assert torch.equal(batched[0, : step + 1], alone[0]) and torch.equal(batched[1], alone[1])
    assert (batched[0, step + 1 :] == tiny.tokenizer.pad_token_id).all()


def test_content_position_is_inside_the_user_text(smol: Model) -> None:
    batch = encode(smol, RECEIVER)
    pos = message_positions(smol, RECEIVER, batch, "content")
    for row, p in enumerate(pos.tolist()):
        token = smol.tokenizer.decode(batch.input_ids[row, p])
        assert token.strip() and token.strip() in RECEIVER[row]
        assert smol.tokenizer.decode(batch.input_ids[row, : p + 1]).endswith(RECEIVER[row])


def test_sampling_is_seeded(tiny: Model) -> None:
    cfg = GraftConfig(k=1, j=1, f="sum")
    runs = [
        communicate(
            tiny,
            tiny,
            SENDER,
            RECEIVER,
            cfg,
            decoding=Decoding(max_new_tokens=8, do_sample=True, top_p=0.9, seed=s),
        )
        for s in (1, 1, 2)
    ]
    assert torch.equal(runs[0].token_ids, runs[1].token_ids)
    assert not torch.equal(runs[0].token_ids, runs[2].token_ids)


# ---- bad input ------------------------------------------------------------------


def test_layer_out_of_range_says_the_range(tiny: Model) -> None:
    with pytest.raises(LayerOutOfRangeError, match=r"k=4 .* use 0\.\.3"):
        communicate(tiny, tiny, SENDER, RECEIVER, GraftConfig(k=4, j=0))
    with pytest.raises(LayerOutOfRangeError, match=r"j=-1"):
        communicate(tiny, tiny, SENDER, RECEIVER, GraftConfig(k=0, j=-1))


def test_empty_prompt_and_unpaired_prompts(tiny: Model) -> None:
    with pytest.raises(EmptyPromptError, match="prompt 1 is empty"):
        communicate(tiny, tiny, SENDER, ["ok", "  "], GraftConfig(k=0, j=0))
    with pytest.raises(CommlibError, match="pair them up"):
        communicate(tiny, tiny, SENDER, RECEIVER[:1], GraftConfig(k=0, j=0))


def test_non_finite_activations_are_refused(tiny: Model, tiny_wide: Model) -> None:
    info = MapInfo(
        sender=tiny.name,
        receiver=tiny_wide.name,
        k=1,
        j=1,
        d_sender=64,
        d_receiver=96,
        corpus="toy",
        n=1,
        seed=0,
        epochs=1,
        batch_size=1,
        lr=1e-3,
        train_mse=0.0,
        val_mse=0.0,
        val_baseline_mse=1.0,
    )
    bad = LinearMap(torch.full((96, 64), float("nan")), info)
    with pytest.raises(NonFiniteActivationError, match="NaN"):
        communicate(tiny, tiny_wide, SENDER, RECEIVER, GraftConfig(k=1, j=1, f="replace"), map=bad)


def test_edit_applies_only_at_its_positions(tiny: Model) -> None:
    be = get_backend(tiny, "nnsight")
    batch = encode(tiny, RECEIVER)
    last = batch.length - 1
    edit = Edit(layer=1, positions=torch.full((2, 1), last), fn=lambda h: h * 0)
    hidden = be.residuals(batch, [1])[1]
    edited = edit.apply(hidden)
    assert torch.equal(edited[:, :last], hidden[:, :last])
    assert edited[:, last].abs().max() == 0


def test_unknown_backend(tiny: Model) -> None:
    with pytest.raises(UnknownBackendError, match="nnsight, transformer-lens"):
        get_backend(tiny, "pyvene")


def test_backends_leave_the_users_model_plain_and_share_its_weights() -> None:
    from commlib.models import load_model

    model = load_model("tiny-llama-random")
    before = [(name, type(mod), mod.forward) for name, mod in model.hf.named_modules()]
    nn, tl = get_backend(model, "nnsight"), get_backend(model, "transformer-lens")
    after = [(name, type(mod), mod.forward) for name, mod in model.hf.named_modules()]
    assert after == before
    ptrs = {p.data_ptr() for p in model.hf.parameters()}
    assert all(p.data_ptr() in ptrs for p in nn.lm.parameters())
    assert all(p.data_ptr() in ptrs for p in tl.bridge.original_model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shared_prefix_prefilled_once_decodes_as_the_whole_prompts(any_model: Model, backend: str) -> None:
    # One document, several questions of different lengths: the judge's layout.
    doc = "Ada Lovelace wrote the first published algorithm for Babbage's Analytical Engine in 1843."
    questions = ["Was she born in 1815?", "Did she work with Charles Babbage on the engine?", "Navy?"]
    batch = encode(any_model, [f"{doc}\n{q}" for q in questions])
    be = get_backend(any_model, backend)
    decoding = Decoding(max_new_tokens=6, stop_at_eos=False)
    whole = be.generate(batch, None, decoding)
    shared = be.generate_shared_prefix(batch, decoding)
    assert torch.equal(shared.token_ids, whole.token_ids)
    assert (shared.first_logits - whole.first_logits).abs().max().item() <= 1e-4
    prefix, rest = split_shared_prefix(batch, any_model.tokenizer.pad_token_id)
    assert prefix.shape[1] > 10  # the document is shared, so it really ran once
    assert torch.equal(rest.attention_mask.sum(-1), batch.attention_mask.sum(-1))  # every token, once
    assert rest.attention_mask.shape[1] == prefix.shape[1] + rest.length == batch.length
    apart = encode(any_model, ["Cats purr.", "Dogs bark at night."], raw=True)  # little or nothing shared
    assert torch.equal(
        be.generate_shared_prefix(apart, decoding).token_ids, be.generate(apart, None, decoding).token_ids
    )
