"""Latent channels: CIPHER (T -> 0 is the greedy text, B answers as with it) and zero-shot Interlat."""

from __future__ import annotations

import pytest
import torch

from commlib.backends import Decoding, get_backend
from commlib.channels.cipher import soft_message
from commlib.channels.interlat import as_receiver_inputs, embedding_norm, trajectory_message
from commlib.channels.slot import NL_INSTRUCTION, NL_TEMPLATE, prompt_parts, receive
from commlib.config import ReferenceSpec
from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import Batch, encode
from commlib.protocols.games import MethodConfig, run_method
from commlib.tasks.games import countries

TOKENS = 6


def greedy_ids(model: Model, prompt: str, n: int) -> list[int]:
    """A's greedy message through the ordinary generation path, up to EOS."""
    gen = get_backend(model).generate(encode(model, [prompt]), None, Decoding(max_new_tokens=n))
    eos = set(model.eos_token_ids())
    ids = []
    for i in gen.token_ids[0].tolist():
        if i in eos:
            break
        ids.append(i)
    return ids


def test_zero_temperature_message_is_the_greedy_text(tiny: Model) -> None:
    prompt = f"{countries(1)[0].sender}\n{NL_INSTRUCTION}"
    msg = soft_message(tiny, tiny, prompt, temperature=0.0, max_tokens=TOKENS)
    assert msg.nearest_ids == greedy_ids(tiny, prompt, TOKENS)
    table = tiny.hf.get_input_embeddings()(torch.tensor(msg.nearest_ids))
    assert torch.equal(msg.vectors, table)


def test_zero_temperature_receiver_answers_as_with_the_text(tiny: Model) -> None:
    item = countries(2)[1]
    msg = soft_message(tiny, tiny, f"{item.sender}\n{NL_INSTRUCTION}", temperature=0.0, max_tokens=TOKENS)
    template = NL_TEMPLATE.format(message="{message}", receiver=item.receiver)
    soft = receive(tiny, template, vectors=msg.vectors, reply=item.reply, max_new_tokens=TOKENS)
    # the ordinary token path: B's prompt ids with A's greedy message ids in the slot
    pre, post = prompt_parts(tiny, template, item.reply)
    ids = torch.cat([pre, torch.tensor(msg.nearest_ids, dtype=torch.long), post])[None]
    gen = get_backend(tiny).generate(Batch(ids, torch.ones_like(ids)), None, Decoding(max_new_tokens=TOKENS))
    assert soft == receive(tiny, template, token_ids=msg.nearest_ids, reply=item.reply, max_new_tokens=TOKENS)
    assert soft == tiny.tokenizer.decode(
        [i for i in gen.token_ids[0].tolist() if i not in tiny.eos_token_ids()], skip_special_tokens=True
    )


def test_temperature_mixes_embeddings(tiny: Model) -> None:
    prompt = "Alice is at the Eiffel Tower.\nTell your partner."
    cold = soft_message(tiny, tiny, prompt, temperature=0.0, max_tokens=3)
    warm = soft_message(tiny, tiny, prompt, temperature=1.0, max_tokens=3)
    assert warm.vectors.shape[-1] == tiny.info.d_model
    assert not torch.allclose(warm.vectors[:1], cold.vectors[:1])  # a mixture, not one row of E
    assert torch.allclose(warm.probs.sum(-1), torch.ones(len(warm.probs)))


def test_cipher_method_and_errors(tiny: Model, tiny_wide: Model) -> None:
    items = countries(2)
    cfg = MethodConfig(k=0, j=0, max_new_tokens=3, message_tokens=4)
    outs = run_method("cipher-t0.5", items, tiny, tiny_wide, cfg)  # same tokenizer, other width: p @ E_B
    assert len(outs) == 2 and all(o.message is not None for o in outs)
    with pytest.raises(CommlibError, match="unknown method"):
        run_method("cipher-tx", items, tiny, tiny, cfg)
    with pytest.raises(CommlibError, match="not both"):
        receive(tiny, "{message}", reply="")


@pytest.mark.integration
def test_cipher_refuses_a_pair_whose_vocabularies_overlap_too_little(tiny: Model, smol: Model) -> None:
    # a byte tokenizer shares a few hundred single-character tokens with SmolLM2's: too few to project through
    with pytest.raises(CommlibError, match=r"share \d+ tokens .*overlap more"):
        soft_message(smol, tiny, "Hello", temperature=1.0, max_tokens=2)


@pytest.mark.integration
def test_zero_temperature_cipher_equals_nl_on_smollm2(smol: Model) -> None:
    items = countries(3, seed=2)
    cfg = MethodConfig(k=0, j=0, max_new_tokens=8, message_tokens=24)
    nl = run_method("nl", items, smol, smol, cfg)
    cipher = run_method("cipher-t0", items, smol, smol, cfg)
    assert [o.message.strip() for o in cipher] == [o.message.strip() for o in nl]  # type: ignore[union-attr]
    assert [o.text for o in cipher] == [o.text for o in nl]


def test_latent_command_writes_the_games_layout(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from commlib.cli import main

    out = tmp_path / "latent"
    tiny = "tiny-llama-random"
    args = [
        "latent",
        "--game",
        "countries",
        "--sender",
        tiny,
        "--receiver",
        tiny,
        "--temperature",
        "0,1",
        "--n",
        "3",
        "--max-new-tokens",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    result = json.loads((out / "results.json").read_text())
    assert list(result["methods"]) == ["silent", "nl", "cipher-t0", "cipher-t1"]
    assert result["config"]["k"] is None and all(r["n"] == 3 for r in result["methods"].values())
    assert main([*args[:-2], "--baselines", "ac-sum", "--out", str(tmp_path / "ac")]) == 2  # AC needs layers
    assert "--k" in capsys.readouterr().err


def test_trajectory_is_the_greedy_message_and_its_final_states(tiny: Model) -> None:
    prompt = f"{countries(1)[0].sender}\n{NL_INSTRUCTION}"
    t = trajectory_message(tiny, prompt, max_tokens=TOKENS)
    assert t.token_ids == greedy_ids(tiny, prompt, TOKENS)
    # cached generation equals one uncached pass over prompt + message
    ids = encode(tiny, [prompt]).input_ids
    full = torch.cat([ids, torch.tensor([t.token_ids])], dim=1)
    states = tiny.hf(input_ids=full, output_hidden_states=True).hidden_states[-1][0]
    start = ids.shape[1] - 1  # the state that chose the first message token
    assert torch.allclose(t.hidden, states[start : start + len(t.token_ids)], atol=1e-4)


def test_interlat_inputs_rescaled_and_widths_checked(tiny: Model, tiny_wide: Model) -> None:
    t = trajectory_message(tiny, "Alice is at the Eiffel Tower.", max_tokens=3)
    raw = as_receiver_inputs(t, tiny, rescale=False)
    scaled = as_receiver_inputs(t, tiny, rescale=True)
    assert torch.equal(raw, t.hidden)
    assert torch.allclose(scaled.norm(dim=-1), torch.full((len(raw),), embedding_norm(tiny)), rtol=1e-5)
    with pytest.raises(CommlibError, match="same width"):
        as_receiver_inputs(t, tiny_wide, rescale=True)
    cfg = MethodConfig(k=None, j=None, max_new_tokens=3)
    outs = run_method("interlat-norm", countries(2), tiny, tiny, cfg)
    assert len(outs) == 2 and all(o.message is not None for o in outs)


def test_trained_adapter_lowers_the_loss_resumes_and_runs(tiny: Model, tiny_wide: Model, tmp_path) -> None:
    from commlib.channels.interlat import adapter_loss, load_adapter, train_adapter
    from commlib.cli import main

    out = tmp_path / "adapter"
    kwargs = {"n_train": 2, "lr": 3e-3, "message_tokens": 5, "progress": False, "checkpoint_every": 10}
    items = countries(2, seed=1000)
    before = train_adapter(tiny, tiny_wide, "countries", out, steps=0, **kwargs)
    trajectories = [trajectory_message(tiny, f"{it.sender}\n{NL_INSTRUCTION}", max_tokens=5) for it in items]

    def loss(adapter) -> float:  # B reads all latents, as at test time
        with torch.no_grad():
            pairs = zip(items, trajectories, strict=True)
            return sum(float(adapter_loss(adapter, tiny_wide, it, t, 1.0)) for it, t in pairs)

    start = loss(before)
    train_adapter(tiny, tiny_wide, "countries", out, steps=30, **kwargs)
    _, first = load_adapter(out)
    after, info = train_adapter(tiny, tiny_wide, "countries", out, steps=60, **kwargs), load_adapter(out)[1]
    assert info.losses[:30] == first.losses and len(info.losses) == 60  # resumed, not restarted
    assert loss(after) < start
    args = [
        "latent",
        "--method",
        "interlat-trained",
        "--adapter",
        str(out),
        "--game",
        "countries",
        "--sender",
        tiny.name,
        "--receiver",
        tiny_wide.name,
        "--n",
        "2",
        "--baselines",
        "",
        "--max-new-tokens",
        "3",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    wrong = [a if a != tiny_wide.name else tiny.name for a in args[:-1]] + [str(tmp_path / "run2")]
    assert main(wrong) == 2  # an adapter for another pair is refused


def test_latent_distances_measure_what_b_reads(tiny: Model, tmp_path) -> None:
    from commlib.distance import Manifold, input_reference
    from commlib.experiments import run_latent_distance

    methods = ["cipher-t0", "interlat", "interlat-norm"]
    df = run_latent_distance(
        "countries",
        tiny,
        tiny,
        methods,
        out_dir=tmp_path,
        n=2,
        n_reference=300,
        message_tokens=4,
        progress=False,
    )
    assert len(df) == 6 and set(df["method"]) == set(methods)
    item = countries(2)[0]
    msg = soft_message(tiny, tiny, f"{item.sender}\n{NL_INSTRUCTION}", temperature=0.0, max_tokens=4)
    manifold = Manifold.fit(input_reference(tiny, ReferenceSpec(n=300, seed=0)))
    row = df[(df["item_id"] == item.id) & (df["method"] == "cipher-t0")].iloc[0]
    expected = manifold.table(msg.vectors.float()).mean()
    assert row["mahalanobis_pct"] == pytest.approx(expected["mahalanobis_pct"])
    # rescaled to B's median embedding norm: the norm sits mid-distribution, raw states do not
    norm = df.groupby("method")["log_norm_ratio_pct"].mean()
    assert 20 < norm["interlat-norm"] < 80 and norm["interlat"] > norm["interlat-norm"]
    with pytest.raises(CommlibError, match="sends no vectors"):
        run_latent_distance("countries", tiny, tiny, ["nl"], out_dir=tmp_path / "x", n=1, progress=False)
