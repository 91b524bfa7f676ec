"""The interactive explorer: sliders for k, j, f and alpha over one prompt pair.

Two layers, so that the logic is testable without a browser:

* :class:`Explorer` computes what the UI shows for one setting (a
  :class:`View`): B's answer under the graft next to silent and skyline, the
  top next tokens before and after, the answer's log-probability, and how far
  the grafted state sits from B's own activations (percentiles, see
  :mod:`commlib.distance`). It caches per prompt pair: A's residual at the
  message position for every layer (one forward pass), B's prefix KV cache
  (:class:`~commlib.sweep.ReceiverItem`), the silent and skyline answers, and
  B's reference manifold per layer, so moving a slider recomputes only B's
  positions from the message position on.
* :func:`explore` builds the ipywidgets UI over an :class:`Explorer`. Sliders
  report on release (``continuous_update=False``: a drag is one update, not
  dozens), changes that move several widgets at once (a new model resizes the
  layer sliders) are coalesced into one update, and a status line shows while
  the kernel computes. Errors (a layer out of range, a map fitted for other
  layers) are shown in the status line, not raised into the notebook.

Example:
    >>> from commlib.tasks.games import countries
    >>> ex = Explorer("tiny-llama-random", "tiny-llama-random", n_reference=0, max_new_tokens=3)
    >>> view = ex.view(countries(1)[0], k=1, j=1, f="replace")
    >>> view.config.f, len(view.top_after)
    ('replace', 5)
    >>> ui = explore("tiny-llama-random", "tiny-llama-random", n_reference=0, max_new_tokens=3)
    >>> ui.j.value = 2
    >>> ui.view.config.j
    2
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from commlib.backends import get_backend
from commlib.backends.base import check_layer
from commlib.combine import COMBINE_FNS, LinearMap, combine
from commlib.config import ReferenceSpec
from commlib.errors import CommlibError
from commlib.graft import GraftConfig
from commlib.models import Model, known_models, load_model
from commlib.prompts import Batch, Position, encode, message_positions
from commlib.protocols.games import MethodConfig, silent, skyline
from commlib.sweep import ReceiverItem
from commlib.tasks.games import GameItem, load_game

W_F = "W"
"""The dropdown entry for the learned map (``replace`` of ``W a``)."""

FREE_TEXT = "free text"
"""The task entry that lets the user type both prompts."""


@dataclass(frozen=True)
class View:
    """What the explorer shows for one setting.

    Attributes:
        item: The prompt pair (and answer, if any).
        config: k, j, f, alpha, position.
        grafted: B's greedy answer under the graft.
        silent: B alone.
        skyline: B given both prompts.
        top_before: B's top next tokens without the graft, ``(token, probability)``.
        top_after: The same under the graft.
        answer_logprob: log p(answer) under the graft (``None`` without an answer).
        silent_logprob: log p(answer) for B alone.
        distance: Percentile of the grafted state per metric against B's own
            held-out activations at layer j (``None`` when switched off).
        uses_map: Whether A's state went through the learned map W.
    """

    item: GameItem
    config: GraftConfig
    grafted: str
    silent: str
    skyline: str
    top_before: list[tuple[str, float]]
    top_after: list[tuple[str, float]]
    answer_logprob: float | None
    silent_logprob: float | None
    distance: dict[str, float] | None
    uses_map: bool = False


def _top(model: Model, logits: Tensor, top: int) -> list[tuple[str, float]]:
    probs = torch.softmax(logits.float(), dim=-1)
    values, ids = probs.topk(top)
    return [(str(model.tokenizer.decode([int(i)])), float(v)) for i, v in zip(ids, values, strict=True)]


class Explorer:
    """Cached computation behind the explorer UI, one sender and one receiver.

    Args:
        sender: Model A (a loaded :class:`Model` or a name for :func:`load_model`).
        receiver: Model B (may be the same).
        backend: ``"nnsight"`` or ``"transformer-lens"``.
        max_new_tokens: Length of each shown answer (greedy).
        top: How many next tokens to list.
        n_reference: Corpus sentences of B's reference per layer (fitted once
            and cached on disk, see :func:`~commlib.distance.manifold_for`);
            ``0`` switches the distance off.
        map: A learned map W for this pair, or the directory ``commlib fit-map``
            wrote it to (offered as f = ``"W"``, at the k and j it was fitted for).
    """

    def __init__(
        self,
        sender: Model | str,
        receiver: Model | str,
        *,
        backend: str = "nnsight",
        max_new_tokens: int = 16,
        top: int = 5,
        n_reference: int = 512,
        map: LinearMap | str | Path | None = None,
    ) -> None:
        if isinstance(map, str | Path):
            map = LinearMap.load(map)
        self.sender = load_model(sender) if isinstance(sender, str) else sender
        self.receiver = (
            self.sender
            if receiver == self.sender.name
            else (load_model(receiver) if isinstance(receiver, str) else receiver)
        )
        self.backend, self.max_new_tokens, self.top = backend, max_new_tokens, top
        self.n_reference, self.map = n_reference, map
        if map is not None:
            map.check_pair(self.sender.name, self.receiver.name, map.info.k, map.info.j)
        self._sender_states: dict[tuple[str, str], Tensor] = {}
        self._receivers: dict[tuple[GameItem, str], ReceiverItem] = {}
        self._alone: dict[GameItem, tuple[str, str]] = {}
        self._manifolds: dict[int, Any] = {}
        self._views: dict[tuple[Any, ...], View] = {}

    @property
    def f_options(self) -> list[str]:
        """The combining functions on offer (``"W"`` only with a map)."""
        return [*COMBINE_FNS, *([W_F] if self.map is not None else [])]

    def sender_states(self, text: str, position: Position) -> Tensor:
        """A's residual at the message position after every block, ``[n_layers, d_A]`` (cached)."""
        key = (text, position)
        if key not in self._sender_states:
            sb = get_backend(self.sender, self.backend)
            batch: Batch = encode(self.sender, [text])
            pos = int(message_positions(self.sender, [text], batch, position)[0])
            layers = list(range(self.sender.info.n_layers))
            acts = sb.residuals(batch, layers)
            # under a device map A's blocks sit on several devices: one device for the stack
            self._sender_states[key] = torch.stack([acts[k][0, pos].to(self.sender.device) for k in layers])
        return self._sender_states[key]

    def receiver_item(self, item: GameItem, position: Position) -> ReceiverItem:
        """B's side of the pair: prefix KV cache, answer tokens, B-alone scores (cached)."""
        key = (item, position)
        if key not in self._receivers:
            self._receivers[key] = ReceiverItem(self.receiver, item, position=position, backend=self.backend)
        return self._receivers[key]

    def alone(self, item: GameItem) -> tuple[str, str]:
        """B's silent and skyline answers, as the games' methods give them (cached)."""
        if item not in self._alone:
            cfg = MethodConfig(k=0, j=0, max_new_tokens=self.max_new_tokens, backend=self.backend)
            self._alone[item] = (
                silent([item], self.sender, self.receiver, cfg)[0].text,
                skyline([item], self.sender, self.receiver, cfg)[0].text,
            )
        return self._alone[item]

    def manifold(self, j: int) -> Any:
        """B's :class:`~commlib.distance.Manifold` at block ``j``.

        The first call captures B's reference at every layer in one pass over
        the corpus (cached on disk, see
        :func:`~commlib.distance.cache_corpus_activations`); each layer's fit
        is then about a second, and kept.
        """
        from commlib.distance import cache_corpus_activations, manifold_for

        if j not in self._manifolds:
            ref = ReferenceSpec(n=self.n_reference)
            cache_corpus_activations(self.receiver, ref=ref, backend=self.backend)
            self._manifolds[j] = manifold_for(self.receiver, j, ref, backend=self.backend)
        return self._manifolds[j]

    def view(
        self,
        item: GameItem,
        *,
        k: int,
        j: int,
        f: str = "replace",
        alpha: float = 1.0,
        position: Position = "last",
    ) -> View:
        """Everything the UI shows for one setting.

        ``f="W"`` uses the learned map (``replace`` of ``W a``) at the map's own k and j.

        Raises:
            CommlibError: empty prompts, layers out of range, ``"W"`` without a
                map or at other layers than it was fitted for, an unknown f.
        """
        key = (item, k, j, f, alpha, position)
        if key not in self._views:
            self._views[key] = self._view(item, k=k, j=j, f=f, alpha=alpha, position=position)
        return self._views[key]

    def _view(self, item: GameItem, *, k: int, j: int, f: str, alpha: float, position: Position) -> View:
        if not item.sender.strip() or not item.receiver.strip():
            raise CommlibError("both prompts need text: type something for A and for B")
        check_layer(self.sender, k, "k")
        check_layer(self.receiver, j, "j")
        use_map = f == W_F
        if use_map:
            if self.map is None:
                raise CommlibError("f = W needs a learned map: pass map= (fit one with `commlib fit-map`)")
            self.map.check_pair(self.sender.name, self.receiver.name, k, j)
        config = GraftConfig(k=k, j=j, f="replace" if use_map else f, alpha=alpha, position=position)
        a = self.sender_states(item.sender, position)[k][None, None, :]
        rx = self.receiver_item(item, position)
        grafted: dict[str, Tensor] = {}

        def graft(b: Tensor) -> Tensor:
            x = combine(a, b, config.f, map=self.map if use_map else None, alpha=alpha)
            grafted["x"] = x[:, 0]
            return x

        scores = rx.score(j, graft, rows=1)
        texts, _ = rx.generate(j, graft, rows=1, max_new_tokens=self.max_new_tokens)
        silent_text, skyline_text = self.alone(item)
        distance = None
        if self.n_reference > 0:
            pct = self.manifold(j).percentiles(grafted["x"].float())
            distance = {m: float(v[0]) for m, v in pct.items()}
        has_answer = bool(item.answer.strip())
        return View(
            item=item,
            config=config,
            grafted=texts[0],
            silent=silent_text,
            skyline=skyline_text,
            top_before=_top(self.receiver, rx.silent_next_logits[0], self.top),
            top_after=_top(self.receiver, scores.next_logits[0], self.top),
            answer_logprob=float(scores.answer_logprob[0]) if has_answer else None,
            silent_logprob=rx.silent_logprob if has_answer else None,
            distance=distance,
            uses_map=use_map,
        )


# --------------------------------------------------------------------------- #
# The ipywidgets UI
# --------------------------------------------------------------------------- #


TABLE_STYLE = "border-spacing:14px 2px"


def html_text(text: str) -> str:
    """Model output made safe and visible in HTML: escaped, newlines as ⏎, control bytes as ``\\xNN``."""
    visible = "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in text)
    return html.escape(visible).replace("\n", "⏎")


def answers_html(view: View) -> str:
    """B's three answers as an HTML table (the rendered answer has ``id``-like classes for tests)."""
    c = view.config
    graft = f"AC ({'W, ' if view.uses_map else ''}{c.f}, k={c.k}, j={c.j}, α={c.alpha:g}, {c.position})"
    rows = [("silent (B alone)", view.silent, "silent"), ("skyline (both prompts)", view.skyline, "skyline")]
    rows.append((graft, view.grafted, "grafted"))
    body = "".join(
        f"<tr><td>{html_text(label)}</td><td class='commlib-{cls}'><code>{html_text(text)}</code></td></tr>"
        for label, text, cls in rows
    )
    extra = ""
    if view.answer_logprob is not None and view.silent_logprob is not None:
        gain = view.answer_logprob - view.silent_logprob
        extra = (
            f"<p class='commlib-logprob'>log p({html_text(view.item.answer)}): B alone "
            f"{view.silent_logprob:.2f}, grafted {view.answer_logprob:.2f} (gain {gain:+.2f} nats)</p>"
        )
    head = f"<table class='commlib-answers' style='{TABLE_STYLE}'><tr><th>method</th><th>B says</th></tr>"
    return f"{head}{body}</table>{extra}"


def top_tokens_html(view: View) -> str:
    """B's top next tokens before and after the graft, side by side."""
    rows = "".join(
        f"<tr><td><code>{html_text(tb)}</code></td><td>{pb:.3f}</td>"
        f"<td><code>{html_text(ta)}</code></td><td>{pa:.3f}</td></tr>"
        for (tb, pb), (ta, pa) in zip(view.top_before, view.top_after, strict=True)
    )
    return (
        f"<table class='commlib-top' style='{TABLE_STYLE}'><tr><th colspan=2>next token, B alone</th>"
        f"<th colspan=2>next token, grafted</th></tr>{rows}</table>"
    )


def distance_html(view: View) -> str:
    """The grafted state's percentiles against B's own held-out activations."""
    if view.distance is None:
        return "<p>distance: off (n_reference=0)</p>"
    cells = " · ".join(f"{m} {v:.0f}" for m, v in view.distance.items())
    return (
        f"<p class='commlib-distance'>percentile vs B's own states (50 typical, 100 beyond all): {cells}</p>"
    )


def _items(task: str, n: int) -> list[GameItem]:
    return load_game(task, n=n, seed=0)


class ExplorerUI:
    """The widget tree of :func:`explore`; attributes are the widgets, ``view`` the last :class:`View`.

    Display it in a notebook as the last expression of a cell (``_repr_mimebundle_`` is the box's).
    """

    def __init__(
        self,
        sender: str,
        receiver: str,
        *,
        task: str = "countries",
        tasks: Sequence[str] = (),
        models: Sequence[str] | None = None,
        n_items: int = 20,
        k: int | None = None,
        j: int | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        **explorer_kwargs: Any,
    ) -> None:
        import ipywidgets as w

        self._kwargs = explorer_kwargs
        self._device, self._dtype = device, dtype
        self._models: dict[str, Model] = {}
        self._busy = 0
        self.view: View | None = None
        self.error: str | None = None
        options = list(models) if models is not None else known_models()
        self.sender = w.Combobox(value=sender, options=options, description="sender A", ensure_option=False)
        self.receiver = w.Combobox(
            value=receiver, options=options, description="receiver B", ensure_option=False
        )
        files = list(dict.fromkeys([*tasks, *([task] if task.endswith(".jsonl") else [])]))
        self.task = w.Dropdown(
            options=["countries", "tipsheets", *files, FREE_TEXT], value=task, description="task"
        )
        self.item = w.BoundedIntText(
            value=0, min=0, max=n_items - 1, description="item", layout={"width": "160px"}
        )
        self.sender_text = w.Textarea(description="A reads", layout={"width": "95%"}, continuous_update=False)
        self.receiver_text = w.Textarea(
            description="B reads", layout={"width": "95%"}, continuous_update=False
        )
        self.answer = w.Text(description="answer", continuous_update=False)
        self.reply = w.Text(description="B's reply", continuous_update=False)
        self.k = w.IntSlider(description="k (A)", continuous_update=False)
        self.j = w.IntSlider(description="j (B)", continuous_update=False)
        self.f = w.Dropdown(description="f")
        self.alpha = w.FloatSlider(
            value=1.0, min=0.0, max=2.0, step=0.05, description="alpha", continuous_update=False
        )
        self.position = w.ToggleButtons(options=["last", "content"], value="last", description="position")
        self.status = w.HTML()
        self.answers = w.HTML()
        self.top_tokens = w.HTML()
        self.progress = w.Output()  # model loading and reference fitting show their progress bars here
        self.gauge = w.FloatProgress(min=0, max=100, description="off-manifold", bar_style="info")
        self.gauge_label = w.HTML()
        self.distance = w.HTML()
        self._n_items = n_items
        self.box = w.VBox(
            [
                w.HBox([self.sender, self.receiver, self.task, self.item]),
                self.sender_text,
                self.receiver_text,
                w.HBox([self.answer, self.reply]),
                w.HBox([self.k, self.j, self.f, self.alpha]),
                self.position,
                self.status,
                self.progress,
                self.answers,
                self.top_tokens,
                w.HBox([self.gauge, self.gauge_label]),
                self.distance,
            ]
        )
        with self._hold():
            self._load_models()
            self._load_item()
            if k is not None:
                self.k.value = k
            if j is not None:
                self.j.value = j
        for widget in (self.sender, self.receiver):
            widget.observe(self._on_models, "value")
        self.task.observe(self._on_item, "value")
        self.item.observe(self._on_item, "value")
        for widget in (self.sender_text, self.receiver_text, self.answer, self.reply):
            widget.observe(self._on_text, "value")
        for widget in (self.k, self.j, self.f, self.alpha, self.position):
            widget.observe(lambda _: self.refresh(), "value")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.box._repr_mimebundle_(**kwargs)

    @contextmanager
    def _hold(self) -> Iterator[None]:
        """Coalesce the widget changes inside into one :meth:`refresh` at the end."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
        self.refresh()

    def _model(self, name: str) -> Model:
        if name not in self._models:
            self._models[name] = load_model(name, device=self._device, dtype=self._dtype)
        return self._models[name]

    def _load_models(self) -> None:
        """A new :class:`Explorer` for the chosen models; layer sliders follow their depths."""
        first = not hasattr(self, "explorer")
        self.status.value = "<i>⏳ loading models…</i>"
        with self.progress:
            sender, receiver = self._model(self.sender.value), self._model(self.receiver.value)
        self._clear_progress()
        self.explorer = Explorer(sender, receiver, **self._kwargs)
        self.k.max = self.explorer.sender.info.n_layers - 1
        self.j.max = self.explorer.receiver.info.n_layers - 1
        if first:  # start at two thirds of the depth, where the paper's layers sit
            self.k.value, self.j.value = (2 * self.k.max) // 3, (2 * self.j.max) // 3
        previous = self.f.value
        self.f.options = self.explorer.f_options
        self.f.value = previous if previous in self.f.options else "replace"

    def _load_item(self) -> None:
        free = self.task.value == FREE_TEXT
        self.item.disabled = free
        for widget in (self.sender_text, self.receiver_text, self.answer, self.reply):
            widget.disabled = not free
        if not free:
            items = _items(self.task.value, self._n_items)
            self.item.max = len(items) - 1  # clamps the index for a short custom file
            it = items[self.item.value]
            self.sender_text.value, self.receiver_text.value = it.sender, it.receiver
            self.answer.value, self.reply.value = it.answer, it.reply

    def _on_models(self, _: Any) -> None:
        try:
            with self._hold():
                self._load_models()
        except CommlibError as err:  # an unknown name or an offline hub id: say so, keep the old pair
            self._show_error(err)

    def _on_item(self, _: Any) -> None:
        with self._hold():
            self._load_item()

    def _on_text(self, _: Any) -> None:
        if not self._busy:
            self.refresh()

    def current_item(self) -> GameItem:
        """The prompt pair the widgets hold now."""
        return GameItem(
            sender=self.sender_text.value,
            receiver=self.receiver_text.value,
            answer=self.answer.value,
            reply=self.reply.value,
        )

    def _clear_progress(self) -> None:
        from IPython import get_ipython

        if get_ipython() is not None:  # outside a kernel clear_output only prints escape codes
            self.progress.clear_output()

    def _show_error(self, err: Exception) -> None:
        self.error = str(err)
        self.status.value = f"<span class='commlib-error' style='color:#b00'>⚠ {html_text(str(err))}</span>"

    def refresh(self) -> None:
        """Recompute the view for the current widget values (a no-op inside :meth:`_hold`)."""
        if self._busy:
            return
        self.status.value = "<i>⏳ computing…</i>"
        try:
            with self.progress:
                view = self.explorer.view(
                    self.current_item(),
                    k=self.k.value,
                    j=self.j.value,
                    f=self.f.value,
                    alpha=self.alpha.value,
                    position=self.position.value,
                )
        except CommlibError as err:
            self._show_error(err)
            return
        finally:
            self._clear_progress()
        self.view, self.error = view, None
        self.answers.value = answers_html(view)
        self.top_tokens.value = top_tokens_html(view)
        self.distance.value = distance_html(view)
        self.gauge.layout.visibility = "hidden" if view.distance is None else "visible"
        if view.distance is not None:
            self.gauge.value = view.distance["mahalanobis"]
            self.gauge.bar_style = "danger" if self.gauge.value > 95 else "info"
            self.gauge_label.value = f"Mahalanobis percentile {self.gauge.value:.0f} at j={view.config.j}"
        self.status.value = (
            f"<span class='commlib-ready'>ready: {self.explorer.receiver.name} answered</span>"
        )


def explore(sender: str = "smollm2-135m", receiver: str | None = None, **kwargs: Any) -> ExplorerUI:
    """Build the explorer UI; show it as the last expression of a notebook cell.

    Args:
        sender: Model A (offline short name, local directory, or hub id when online).
        receiver: Model B (default: the same as A).
        **kwargs: ``task`` (a game, a JSONL path, or ``"free text"``), ``tasks``
            (more JSONL paths to offer), ``models`` (the names offered), ``n_items``, ``k``,
            ``j``, ``device`` and ``dtype`` (of every model loaded, as :func:`load_model`'s),
            and :class:`Explorer`'s ``backend``, ``max_new_tokens``,
            ``top``, ``n_reference``, ``map``.

    Example:
        >>> ui = explore("tiny-llama-random", n_reference=0, max_new_tokens=2)
        >>> ui.f.value = "sum"
        >>> ui.view.config.f
        'sum'
    """
    return ExplorerUI(sender, receiver or sender, **kwargs)
