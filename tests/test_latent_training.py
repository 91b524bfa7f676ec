"""Interlat training beyond cross-entropy: the KL alignment option and compression to K latents."""

from __future__ import annotations

import pytest
import torch

from commlib.channels.interlat import (
    InterlatAdapter,
    LatentCompressor,
    adapter_loss,
    answer_kl,
    answer_logits,
    compression_loss,
    embedding_norm,
    load_compressor,
    text_reference,
    train_adapter,
    train_compressor,
    trajectory_message,
)
from commlib.channels.slot import NL_INSTRUCTION, prompt_parts, slot_template
from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import format_prompt
from commlib.protocols.games import MethodConfig, interlat_compressed
from commlib.sweep import answer_ids
from commlib.tasks.games import countries

TRAIN = {"n_train": 2, "message_tokens": 5, "progress": False, "checkpoint_every": 10}


def _setup(model: Model) -> tuple:
    item = countries(1, seed=1000)[0]
    trajectory = trajectory_message(model, f"{item.sender}\n{NL_INSTRUCTION}", max_tokens=5)
    torch.manual_seed(0)
    adapter = InterlatAdapter(model.info.d_model, model.info.d_model, target_norm=embedding_norm(model))
    return item, trajectory, adapter


def _by_hand(model: Model, item, message: torch.Tensor | None = None, ids: list[int] | None = None):
    """B's answer logits with the message in the nl slot, built from token ids and embeddings here."""
    embed = model.hf.get_input_embeddings()
    pre, post = prompt_parts(model, slot_template(item), item.reply)
    target = answer_ids(model, item.answer, format_prompt(model, "x", reply=item.reply))
    if ids is not None:  # the ordinary token path
        full = torch.cat([pre, torch.tensor(ids, dtype=torch.long), post, target[:-1]])[None]
        return model.hf(input_ids=full).logits[0, -target.numel() :].float(), target
    embeds = torch.cat([embed(pre), message, embed(post), embed(target[:-1])])[None]
    return model.hf(inputs_embeds=embeds).logits[0, -target.numel() :].float(), target


def test_kl_weight_zero_is_the_cross_entropy_and_the_kl_is_zero_on_the_text_itself(tiny: Model) -> None:
    item, t, adapter = _setup(tiny)
    embed = tiny.hf.get_input_embeddings()
    m = round(0.5 * len(t.token_ids))
    assert 0 < m < len(t.token_ids)
    mix = torch.cat(
        [
            adapter.boundaries[:1],
            adapter(t.hidden[:m]),
            adapter.boundaries[1:],
            embed(torch.tensor(t.token_ids[m:])),
        ]
    )
    logits, target = _by_hand(tiny, item, mix)
    plain = adapter_loss(adapter, tiny, item, t, 0.5)
    assert torch.equal(adapter_loss(adapter, tiny, item, t, 0.5, kl_weight=0.0), plain)
    assert torch.equal(plain, torch.nn.functional.cross_entropy(logits, target))
    # the reference is B reading A's tokens through the ordinary path
    token_logits, _ = _by_hand(tiny, item, ids=t.token_ids)
    reference = text_reference(tiny, item, t)
    assert torch.allclose(reference, torch.log_softmax(token_logits, -1), atol=1e-5)
    kl = answer_kl(reference, logits)
    assert float(kl) > 1e-5  # the mix is not the text (random weights: flat distributions, small KL)
    weighted = adapter_loss(adapter, tiny, item, t, 0.5, kl_weight=0.7)
    assert float(weighted) == pytest.approx(float(plain) + 0.7 * float(kl), rel=1e-5)
    # the latent message is the text message's own embeddings: nothing to align
    own, _ = answer_logits(tiny, item, embed(torch.tensor(t.token_ids)))
    assert float(answer_kl(reference, own)) == pytest.approx(0.0, abs=1e-9)


def test_kl_training_records_its_weight_and_refuses_another(tiny: Model, tmp_path) -> None:
    from commlib.channels.interlat import load_adapter
    from commlib.cli import main

    out = tmp_path / "kl"
    train_adapter(tiny, tiny, "countries", out, steps=3, kl_weight=0.5, **TRAIN)
    assert load_adapter(out)[1].kl_weight == 0.5 and len(load_adapter(out)[1].losses) == 3
    with pytest.raises(CommlibError, match="kl_weight"):
        train_adapter(tiny, tiny, "countries", out, steps=3, kl_weight=0.0, **TRAIN)
    args = [
        "train-adapter",
        "--game",
        "countries",
        "--sender",
        tiny.name,
        "--receiver",
        tiny.name,
        "--n-train",
        "2",
        "--steps",
        "4",
        "--message-tokens",
        "5",
        "--kl-weight",
        "0.5",
        "--out",
        str(out),
    ]
    assert main(args) == 0 and len(load_adapter(out)[1].losses) == 4  # the CLI resumes the same run


def test_compressor_sends_k_vectors_of_the_receivers_width(tiny: Model, tiny_wide: Model) -> None:
    t = trajectory_message(tiny, "Alice is at the Eiffel Tower.", max_tokens=5)
    adapter = InterlatAdapter(
        tiny.info.d_model, tiny_wide.info.d_model, target_norm=embedding_norm(tiny_wide)
    )
    full = adapter.message(t.hidden)
    for k in (1, 3, 8):
        c = LatentCompressor(tiny_wide.info.d_model, k, target_norm=embedding_norm(tiny_wide))
        msg = c.message(full)
        assert c(full[1:-1]).shape == (k, tiny_wide.info.d_model) and msg.shape == (
            k + 2,
            tiny_wide.info.d_model,
        )
        assert torch.equal(msg[0], full[0]) and torch.equal(msg[-1], full[-1])  # the adapter's boundaries
        assert torch.allclose(msg[1:-1].norm(dim=-1), c.scale.expand(k))
    empty = adapter.message(t.hidden[:0])  # A wrote nothing
    assert torch.isfinite(c.message(empty)).all()
    with pytest.raises(CommlibError, match="at least one"):
        train_compressor(tiny, tiny_wide, "unused", "unused", k=0)


def test_compressor_training_lowers_the_kl_resumes_and_round_trips(
    tiny: Model, tiny_wide: Model, tmp_path
) -> None:
    from commlib.cli import main

    base, out = tmp_path / "adapter", tmp_path / "k2"
    train_adapter(tiny, tiny_wide, "countries", base, steps=5, lr=3e-3, **TRAIN)
    kwargs = {"k": 2, "lr": 3e-3, "progress": False, "checkpoint_every": 10}
    before = train_compressor(tiny, tiny_wide, base, out, steps=0, **kwargs)
    _, adapter, _ = load_compressor(out)
    items = countries(2, seed=1000)
    fulls = [
        adapter.message(trajectory_message(tiny, f"{it.sender}\n{NL_INSTRUCTION}", max_tokens=5).hidden)
        for it in items
    ]

    def loss(c: LatentCompressor) -> float:
        return sum(float(compression_loss(c, tiny_wide, it, f)) for it, f in zip(items, fulls, strict=True))

    start = loss(before)
    train_compressor(tiny, tiny_wide, base, out, steps=30, **kwargs)
    first = load_compressor(out)[2]
    after = train_compressor(tiny, tiny_wide, base, out, steps=60, **kwargs)
    loaded, _, info = load_compressor(out)
    assert info.losses[:30] == first.losses and len(info.losses) == 60  # resumed, not restarted
    assert (info.k, info.adapter, info.sender, info.receiver) == (2, str(base), tiny.name, tiny_wide.name)
    assert loss(after) < 0.5 * start  # overfits two items
    assert torch.equal(loaded.message(fulls[0]), after.message(fulls[0]))  # saved = trained
    with pytest.raises(CommlibError, match="trained for"):
        train_compressor(tiny, tiny, base, tmp_path / "wrong", steps=1, **kwargs)
    method, cfg = interlat_compressed(str(out)), MethodConfig(k=None, j=None, max_new_tokens=3)
    outs = method(items, tiny, tiny_wide, cfg)
    assert len(outs) == 2 and all(o.message is not None for o in outs)  # the K vectors' nearest tokens
    with pytest.raises(CommlibError, match="trained for"):
        method(items, tiny, tiny, cfg)  # a compressor for another pair is refused
    pair, latent = ["--sender", tiny.name, "--receiver", tiny_wide.name], ["latent", "--game", "countries"]
    compress = ["--compress", "2", "--adapter", str(base), "--lr", "0.003", "--out", str(out)]
    assert main(["train-adapter", *pair, "--steps", "61", *compress]) == 0  # resumes one step
    assert len(load_compressor(out)[2].losses) == 61
    assert main(["train-adapter", *pair, "--game", "countries", *compress]) == 2  # the base adapter's items
    run = [
        *latent,
        *pair,
        "--method",
        "interlat-compressed",
        "--n",
        "1",
        "--baselines",
        "",
        "--max-new-tokens",
        "3",
        "--out",
    ]
    assert main([*run, str(tmp_path / "run")]) == 2  # no --adapter
    assert main([*run[:-1], "--adapter", str(out), "--out", str(tmp_path / "run")]) == 0
    train_adapter(tiny, tiny_wide, "countries", base, steps=6, lr=3e-3, **TRAIN)
    with pytest.raises(CommlibError, match="retrain the compressor"):
        load_compressor(out)


def test_compression_over_k_trains_each_k_once_and_compares_with_the_whole_trajectory(
    tiny: Model, tiny_wide: Model, tmp_path
) -> None:
    import pandas as pd

    from commlib.experiments import run_compression

    base, out = tmp_path / "adapter", tmp_path / "compression"
    train_adapter(tiny, tiny_wide, "countries", base, steps=3, **TRAIN)
    run = {
        "out_dir": out,
        "n": 3,
        "seed": 1,
        "steps": 3,
        "max_new_tokens": 3,
        "n_reference": 64,
        "progress": False,
    }
    table = run_compression("countries", tiny, tiny_wide, base, [1, 2], **run).set_index("method")
    assert list(table.index) == ["interlat-trained", "interlat-compressed-k1", "interlat-compressed-k2"]
    distances = pd.read_csv(out / "distance" / "latent_distances.csv")
    assert (
        distances.groupby("method")["length"].min()[["interlat-compressed-k1", "interlat-compressed-k2"]]
        == [3, 4]
    ).all()  # <bop>, K vectors, <eop>
    assert table.loc["interlat-compressed-k2", "K"] == 2 and table.loc["interlat-trained", "K"] > 2
    assert table.loc["interlat-trained", ["gain", "gain_ci_low", "gain_ci_high"]].tolist() == [0.0, 0.0, 0.0]
    rows = pd.read_csv(out / "eval" / "items.csv")
    acc = rows.assign(correct=rows["correct"].astype(str) == "True").groupby("method")["correct"].mean()
    assert table["accuracy"].to_dict() == pytest.approx(acc.to_dict())
    assert table.loc["interlat-compressed-k1", "gain"] == pytest.approx(
        acc["interlat-compressed-k1"] - acc["interlat-trained"]
    )
    k1 = load_compressor(out / "compressor_k1")[2].losses
    again = run_compression("countries", tiny, tiny_wide, base, [1, 2, 4], **run)  # adds K = 4 only
    assert load_compressor(out / "compressor_k1")[2].losses == k1
    assert len(pd.read_csv(out / "eval" / "items.csv")) == len(rows) + 3
    assert again["method"].iloc[-1] == "interlat-compressed-k4"
    with pytest.raises(CommlibError, match="at least one vector"):
        run_compression("countries", tiny, tiny_wide, base, [0], **run)
