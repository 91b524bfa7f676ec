"""A receiver (and a sender) dispatched over a device map: the graft meets each block on its own device.

The map puts the embedding and the first half of the blocks in one group and the rest, the final norm and the
unembedding in another. On the CPU both groups sit on ``cpu``: accelerate still dispatches the model and its
hooks run in every pass (checked), so this is the dispatch code a model split over two GPUs runs. Where torch
sees two GPUs the same tests also run with the groups on ``cuda:0`` and ``cuda:1``, the sender on ``cuda:1``.
Every check is against the same model undispatched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from accelerate.hooks import AlignDevicesHook

from commlib.backends import Decoding, Edit, get_backend
from commlib.backends import decoding as fast_decoding
from commlib.combine import LinearMap, MapInfo, combine
from commlib.graft import GraftConfig, communicate
from commlib.models import RANDOM_MODELS, Model, dispatch, load_model
from commlib.prompts import encode
from commlib.protocols.games import MethodConfig, run_method
from commlib.sweep import sweep_item
from commlib.tasks.games import countries

NAME = "tiny-llama-random"
BACKENDS = ["nnsight", "transformer-lens"]
SENDER = ["Alice is at the Eiffel Tower.", "Bob is at the Colosseum, in the middle of Rome."]
RECEIVER = ["Which country is Alice located in?", "Where?"]
K, J = 1, 3  # J in the second group

PLACES = [("cpu", "cpu", "cpu")]
if torch.cuda.device_count() >= 2:
    PLACES.append(("cuda:0", "cuda:1", "cuda:1"))


def two_groups(name: str, first: str, second: str) -> dict[str, str]:
    """The embedding and the first half of the blocks on ``first``; the rest on ``second``."""
    n = RANDOM_MODELS[name].config().num_hidden_layers
    blocks = {f"model.layers.{i}": first if i < n // 2 else second for i in range(n)}
    return {"model.embed_tokens": first, "model.rotary_emb": first, **blocks, "model.norm": second} | {
        "lm_head": second
    }


class Placed:
    """The undispatched model, the same model dispatched in two groups, and a sender on its own device."""

    def __init__(self, first: str, second: str, sender: str) -> None:
        self.map = two_groups(NAME, first, second)
        self.plain, self.split, self.sender = (load_model(NAME) for _ in range(3))  # the same weights
        self.plain.hf.to(first)  # type: ignore[arg-type]
        dispatch(self.split.hf, self.map)
        self.sender.hf.to(sender)  # type: ignore[arg-type]
        self.one_device = len(set(self.map.values())) == 1


@pytest.fixture(scope="module", params=PLACES, ids=["+".join(p) for p in PLACES])
def placed(request: pytest.FixtureRequest) -> Placed:
    return Placed(*request.param)


@pytest.fixture
def hook_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts accelerate's hook calls by the class of the module they run for."""
    calls: Counter[str] = Counter()
    pre_forward = AlignDevicesHook.pre_forward

    def counted(self: AlignDevicesHook, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        calls[type(module).__name__] += 1
        return pre_forward(self, module, *args, **kwargs)

    monkeypatch.setattr(AlignDevicesHook, "pre_forward", counted)
    yield calls


def close(x: torch.Tensor, y: torch.Tensor) -> None:
    torch.testing.assert_close(x.cpu(), y.cpu(), rtol=1e-5, atol=1e-5)


def test_the_map_is_dispatched_and_no_backend_gathers_it(
    placed: Placed, monkeypatch: pytest.MonkeyPatch, hook_calls: Counter[str]
) -> None:
    split = placed.split
    assert split.hf.hf_device_map == placed.map
    for name, device in placed.map.items():
        module = split.hf.get_submodule(name)
        assert str(module._hf_hook.execution_device) == device
        assert {str(p.device) for p in module.parameters()} <= {device}
    moved: list[str] = []
    to = torch.nn.Module.to
    monkeypatch.setattr(
        torch.nn.Module, "to", lambda m, *a, **k: moved.append(type(m).__name__) or to(m, *a, **k)
    )
    batch = encode(split, RECEIVER)
    n_layers = split.info.n_layers
    for backend in BACKENDS:
        be = get_backend(split, backend)
        hook_calls.clear()
        be.forward(batch)
        assert hook_calls["LlamaDecoderLayer"] == n_layers, backend  # the backend's copy keeps the hooks
    assert moved == []  # neither backend moved a module to one device
    hook_calls.clear()
    get_backend(split, "nnsight").plain_forward(batch)  # the decode steps' model
    assert hook_calls["LlamaDecoderLayer"] == n_layers


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_graft_lands_on_block_j_with_the_undispatched_logits(placed: Placed, backend: str) -> None:
    split, plain = placed.split, placed.plain
    a = get_backend(placed.sender, backend).capture(encode(placed.sender, SENDER), K)
    seen: list[torch.Tensor] = []

    def graft(b: torch.Tensor) -> torch.Tensor:
        seen.append(b)
        return combine(a[:, None], b, "replace")  # a on the sender's device, b on block J's

    logits = {}
    for name, model in (("split", split), ("plain", plain)):
        batch = encode(model, RECEIVER)
        last = torch.full((batch.size, 1), batch.length - 1)
        be = get_backend(model, backend)
        logits[name] = be.logits(batch, Edit(J, last, graft))
        logits[name + "-alone"] = be.logits(batch)
    assert str(seen[0].device) == placed.map[f"model.layers.{J}"]  # the edit ran on block J's device
    close(seen[0], seen[1])  # the state it replaced was block J's output, as undispatched
    close(seen[0][:, 0], get_backend(plain, backend).capture(encode(plain, RECEIVER), J))
    close(logits["split"], logits["plain"])
    close(logits["split-alone"], logits["plain-alone"])
    assert not torch.allclose(logits["split"].cpu(), logits["split-alone"].cpu())  # the graft changed them


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_communicate_decodes_as_undispatched(placed: Placed, backend: str, fast: bool) -> None:
    cfg = GraftConfig(k=K, j=J, f="sum")
    dec = Decoding(max_new_tokens=12, stop_at_eos=False)
    fast_decoding.clear()
    fast_decoding.FAST = fast
    try:
        split = communicate(placed.sender, placed.split, SENDER, RECEIVER, cfg, backend=backend, decoding=dec)
        kept = placed.split.hf in fast_decoding._DECODERS
        plain = communicate(placed.sender, placed.plain, SENDER, RECEIVER, cfg, backend=backend, decoding=dec)
        alone = communicate(
            placed.sender,
            placed.split,
            SENDER,
            RECEIVER,
            GraftConfig(k=K, j=J, f="none"),
            backend=backend,
            decoding=dec,
        )
    finally:
        fast_decoding.FAST = None
    # the static cache takes over a split cache only on one device (several GPUs decode eagerly)
    assert kept == (fast and placed.one_device)
    assert torch.equal(split.token_ids.cpu(), plain.token_ids.cpu())
    close(split.first_logits, plain.first_logits)
    assert not torch.equal(split.first_logits, alone.first_logits)


def test_rows_leaving_the_batch_at_eos_on_a_split_cache(
    placed: Placed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The eager loop drops finished rows from a cache whose layers sit on several devices."""
    out = {}
    for name, model in (("split", placed.split), ("plain", placed.plain)):
        batch = encode(model, RECEIVER)
        be = get_backend(model, "nnsight")
        free = be.generate(batch, None, Decoding(max_new_tokens=20, stop_at_eos=False), fast=False).token_ids
        # an EOS id that row 0 reaches at least two steps before row 1 does
        eos = next(t for s, t in enumerate(free[0].tolist()) if t not in free[1, : s + 2].tolist())
        monkeypatch.setattr(model, "eos_token_ids", lambda eos=eos: [eos])
        out[name] = be.generate(batch, None, Decoding(max_new_tokens=20), fast=False).token_ids.cpu()
    assert torch.equal(out["split"], out["plain"])
    pad = placed.split.tokenizer.pad_token_id
    assert out["split"][0, -1] == pad and out["split"][1, -1] != pad  # row 1 decoded on after row 0 left


def test_the_sweep_on_a_dispatched_pair(placed: Placed) -> None:
    item = countries(1, seed=3)[0]
    kw: dict[str, Any] = {"ks": [0, 1, 2], "js": [1, J], "max_new_tokens": 4}
    split = sweep_item(placed.split, placed.split, item, **kw)  # A's states from several devices
    plain = sweep_item(placed.plain, placed.plain, item, **kw)
    for s, p in zip(split, plain, strict=True):
        assert (s["k"], s["j"], s["token_ids"]) == (p["k"], p["j"], p["token_ids"])
        assert s["answer_logprob"] == pytest.approx(p["answer_logprob"], abs=1e-4)
    assert len({round(c["answer_logprob"], 4) for c in split}) > 1  # the grafts differ


def _map(model: Model) -> LinearMap:
    d = model.info.d_model
    info = MapInfo(NAME, NAME, K, J, d, d, "test", 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)
    return LinearMap(torch.randn(d, d, generator=torch.Generator().manual_seed(0)) / d**0.5, info)


@pytest.mark.parametrize("method", ["silent", "nl", "ac-replace", "ac-w-mean", "cipher"])
def test_a_game_method_on_a_dispatched_receiver(placed: Placed, method: str) -> None:
    items = countries(2, seed=1)
    cfg = MethodConfig(k=K, j=J, max_new_tokens=6, message_tokens=6)
    w = _map(placed.plain)  # W on the CPU, B's block J wherever the map put it
    split = run_method(method, items, placed.sender, placed.split, cfg, w)
    plain = run_method(method, items, placed.sender, placed.plain, cfg, w)
    assert [o.text for o in split] == [o.text for o in plain]


@pytest.mark.parametrize("f", ["sum", "mean", "replace"])
@pytest.mark.parametrize("with_map", [False, True])
def test_combine_follows_the_receivers_device(f: str, with_map: bool) -> None:
    """A's state (and W) go to B's device: here B's state sits on ``meta``, A's and W on the CPU."""
    a, b = torch.randn(2, 1, 8), torch.empty(2, 1, 8, device="meta")
    w = LinearMap(torch.randn(8, 8), MapInfo("a", "b", 0, 0, 8, 8, "t", 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0))
    out = combine(a, b, f, map=w if with_map else None)
    assert out.device.type == "meta" and out.shape == b.shape


def test_a_random_model_loads_onto_a_map_with_its_weights_drawn_there() -> None:
    """``load_model(device_map=...)`` draws each group on its device (no CPU build), seeded."""
    first, second = PLACES[-1][:2]
    where = two_groups(NAME, first, second)
    model, again, plain = (
        load_model(NAME, device_map=where),
        load_model(NAME, device_map=where),
        load_model(NAME),
    )
    assert model.hf.hf_device_map == where
    for name, device in where.items():
        assert {str(p.device) for p in model.hf.get_submodule(name).parameters()} <= {device}
    params = zip(model.hf.named_parameters(), again.hf.parameters(), plain.hf.parameters(), strict=True)
    for (name, p), q, r in params:
        assert torch.equal(p.cpu(), q.cpu()), name  # the same seed and map, the same weights
        assert torch.isfinite(p).all() and p.std().item() == pytest.approx(r.std().item(), abs=3e-3), name
    for b, c in zip(model.hf.buffers(), plain.hf.buffers(), strict=True):
        close(b, c)  # the rotary frequencies as HF computes them
    batch = encode(model, RECEIVER)
    last = torch.full((batch.size, 1), batch.length - 1)
    logits = get_backend(model, "nnsight").logits(batch, Edit(J, last, lambda h: 2 * h))
    assert torch.isfinite(logits).all()


def test_device_and_device_map_together_are_refused() -> None:
    from commlib.errors import CommlibError

    with pytest.raises(CommlibError, match="pass one of them"):
        load_model(NAME, device="cuda", device_map={"": "cpu"})
