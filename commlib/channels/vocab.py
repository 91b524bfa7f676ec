"""Across tokenizers: token-space messages projected through the tokens two vocabularies share.

CIPHER sends a distribution over A's vocabulary each step and B reads
``p @ E_B``; that needs the two vocabularies to be the same. Between models
that tokenize differently (SmolLM2, Gemma, Qwen) this module maps A's
distribution onto B's vocabulary through their *shared tokens*, with no
training: the tokens whose strings are identical once normalised
(:func:`token_keys`). B then reads the expected embedding over the shared
tokens, the shared part of ``p_A`` renormalised:

    ``e_B = sum_{t shared} p_A(t) E_B(t) / sum_{t shared} p_A(t)``

and the probability mass that fell outside the overlap is reported per step
(:meth:`SharedVocabulary.project`). A pair that shares a tokenizer gets the
identity (today's CIPHER, bit for bit). A pair whose overlap is too small
(:data:`MIN_SHARED_TOKENS`, :data:`MIN_TEXT_COVERAGE`) is refused with the
overlap measured.

Normalisation: every token becomes the bytes it stands for. Byte-level BPE
pieces (SmolLM2, Qwen: ``Ġ`` for a space) go back through GPT-2's byte-to-
unicode table; SentencePiece pieces (Gemma: ``▁`` for a space) have ``▁``
replaced by a space and byte-fallback tokens ``<0xNN>`` become that byte. So
``Ġthe`` and ``▁the`` are both `` the``. Special tokens (``<|im_start|>``,
``<eos>``, ``<start_of_turn>``, Qwen's fill-in-the-middle tokens) are never
shared: their mass is outside the overlap; an added token that is not special
(Gemma's newline runs) stands for its text. Several
of A's tokens may map onto one of B's (then their mass adds up); of B's tokens
with one string, B reads a regular token over a byte-fallback one, then the
lowest id.

:func:`rosetta_vectors` is the one-vector projection of AVP's "rosetta"
(``avp.rosetta.project.vocab_overlap_projection``): A's last-position
distribution on its prompt, through the shared tokens, into B's embedding
space, rescaled to the mean norm of B's input embeddings.

Example:
    >>> from commlib.models import load_model
    >>> m = load_model("tiny-llama-random")
    >>> v = vocab_projection(m, m)
    >>> v.identical, v.outside(torch.softmax(torch.randn(2, 260), -1)).tolist()
    (True, [0.0, 0.0])
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.channels.slot import embed, embedding_scale, embedding_table, prefill_rows
from commlib.errors import CommlibError
from commlib.models import Model
from commlib.prompts import encode

MIN_SHARED_TOKENS = 200
"""Fewest shared tokens a projected pair may have (a byte alphabet's worth)."""
MIN_TEXT_COVERAGE = 0.5
"""Least fraction of A's tokens on :data:`TYPICAL_TEXT` that must be shared tokens (the one-hot, T = 0,
share of A's probability mass on typical text that reaches B)."""
TYPICAL_TEXT = (
    "Alice is at the Eiffel Tower and Bob is visiting the Colosseum. Which country is Alice located in? "
    "Write a short message to your partner that tells them the information above. The answer is France. "
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
    "clips did Natalia sell altogether in April and May? The museum opened in 1889, and its collection of "
    "paintings, sculptures and old maps draws millions of visitors every year."
)
"""English text the coverage of A's tokenization is measured on (game, reasoning and plain prose)."""

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character that stands for each byte, inverted (char -> byte)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


_UNICODE_TO_BYTE = _bytes_to_unicode()


def _scheme(tokenizer: Any) -> str:
    """How the tokenizer writes pieces: ``byte-level`` (GPT-2), ``sentencepiece`` (``▁``) or ``plain``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None and '"ByteLevel"' in str(decoder.__getstate__()):
        return "byte-level"
    if any("\u2581" in piece for piece in list(tokenizer.get_vocab())[:5000]):
        return "sentencepiece"
    return "plain"


def token_key(piece: str, scheme: str) -> bytes | None:
    """The bytes one vocabulary piece stands for under ``scheme``; ``None`` if it stands for none.

    Example:
        >>> token_key("Ġthe", "byte-level"), token_key("▁the", "sentencepiece")
        (b' the', b' the')
        >>> token_key("<0x0A>", "sentencepiece"), token_key("Ċ", "byte-level"), token_key("中", "byte-level")
        (b'\\n', b'\\n', None)
    """
    if scheme == "byte-level":
        try:
            return bytes([_UNICODE_TO_BYTE[ch] for ch in piece]) or None
        except KeyError:  # a character outside the byte alphabet: an added token's text
            return None
    if scheme == "sentencepiece" and (m := _BYTE_FALLBACK.fullmatch(piece)):
        return bytes([int(m.group(1), 16)])
    text = piece.replace("\u2581", " ") if scheme == "sentencepiece" else piece
    return text.encode("utf-8") or None


def token_keys(tokenizer: Any) -> dict[int, bytes]:
    """Every token id of ``tokenizer`` that may be shared, with the bytes it stands for.

    Special tokens are left out. An added token that is not special (Gemma's
    ``\\n`` and whitespace runs, Qwen's ``<tool_call>``) stands for its text.
    """
    scheme = _scheme(tokenizer)
    added = dict(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    special = {int(i) for i, a in added.items() if getattr(a, "special", True)} | set(
        tokenizer.all_special_ids
    )
    literal = "plain" if scheme == "byte-level" else scheme  # an added token's content is text, not a piece
    out: dict[int, bytes] = {}
    for piece, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        key = token_key(str(added[i].content), literal) if i in added else token_key(piece, scheme)
        if key is not None:
            out[int(i)] = key
    return out


@dataclass(frozen=True)
class SharedVocabulary:
    """A's vocabulary onto B's through their shared tokens (:func:`shared_vocabulary`).

    Attributes:
        sender: A's tokenizer (name or path).
        receiver: B's tokenizer.
        source_ids: ``[N]`` A's shared token ids.
        target_ids: ``[N]`` the B token each maps to (several A tokens may map to one).
        sender_size: Width of A's distributions (its embedding rows).
        receiver_size: Width of B's.
        sender_tokens: A's tokens that could be shared (its vocabulary less added tokens).
        receiver_tokens: B's.
        coverage: Fraction of A's tokens on :data:`TYPICAL_TEXT` that are shared.
        identical: The two share a tokenizer: the projection is the identity.
    """

    sender: str
    receiver: str
    source_ids: Tensor
    target_ids: Tensor
    sender_size: int
    receiver_size: int
    sender_tokens: int
    receiver_tokens: int
    coverage: float
    identical: bool = False

    @property
    def n_shared(self) -> int:
        """Shared tokens: B tokens that some A token maps onto."""
        return int(self.target_ids.unique().numel())

    def project(self, probs: Float[Tensor, "... va"]) -> Float[Tensor, "... vb"]:
        """A's distributions as B's: the shared part, renormalised, on B's ids (a row with none is all zeros).

        Example:
            >>> v = _toy()
            >>> v.project(torch.tensor([[0.5, 0.25, 0.25]])).tolist()
            [[0.0, 0.0, 0.5, 0.5]]
        """
        if self.identical:
            return probs
        self._check_width(probs)
        shared = probs[..., self.source_ids.to(probs.device)]
        out = probs.new_zeros(*probs.shape[:-1], self.receiver_size)
        out.index_add_(-1, self.target_ids.to(probs.device), shared)
        mass = shared.sum(-1, keepdim=True)
        return out / torch.where(mass > 0, mass, torch.ones_like(mass))

    def outside(self, probs: Float[Tensor, "... va"]) -> Float[Tensor, ...]:
        """The probability mass of each distribution that falls outside the shared tokens (0 when identical).

        Example:
            >>> _toy().outside(torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])).tolist()
            [0.5, 1.0]
        """
        if self.identical:
            return probs.new_zeros(probs.shape[:-1])
        self._check_width(probs)
        return (1 - probs[..., self.source_ids.to(probs.device)].sum(-1)).clamp(min=0)

    def _check_width(self, probs: Tensor) -> None:
        if probs.shape[-1] != self.sender_size:
            raise CommlibError(
                f"distributions over {probs.shape[-1]} tokens, but {self.sender} has {self.sender_size}: "
                "project the sender's own distributions"
            )

    def record(self) -> dict[str, Any]:
        """What a run records about the projection (in its settings)."""
        if self.identical:
            return {"projection": "identity (shared tokenizer)"}
        return {
            "projection": "shared tokens, renormalised",
            "sender_tokenizer": self.sender,
            "receiver_tokenizer": self.receiver,
            "shared_tokens": self.n_shared,
            "sender_fraction": round(self.n_shared / max(self.sender_tokens, 1), 4),
            "receiver_fraction": round(self.n_shared / max(self.receiver_tokens, 1), 4),
            "text_coverage": round(self.coverage, 4),
        }


def _fingerprint(tokenizer: Any) -> str:
    """Names a tokenizer by its vocabulary and added tokens (the cache key)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    added = sorted(int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}) or {})
    digest = hashlib.sha1(json.dumps([vocab, added], ensure_ascii=False).encode()).hexdigest()[:16]
    return f"{getattr(tokenizer, 'name_or_path', '')}:{digest}"


_CACHE: dict[tuple[str, str, int, int], SharedVocabulary] = {}


def shared_vocabulary(
    sender: Any, receiver: Any, *, sender_size: int | None = None, receiver_size: int | None = None
) -> SharedVocabulary:
    """The shared-token index of two tokenizers, cached per pair; no thresholds checked.

    Args:
        sender: A's tokenizer.
        receiver: B's tokenizer.
        sender_size: Width of A's distributions (default ``len(sender)``).
        receiver_size: Width of B's (default ``len(receiver)``).

    Example:
        >>> from commlib.models import byte_tokenizer
        >>> v = shared_vocabulary(byte_tokenizer(), byte_tokenizer())
        >>> v.n_shared, v.identical, v.coverage
        (256, False, 1.0)
    """
    size_a = len(sender) if sender_size is None else sender_size
    size_b = len(receiver) if receiver_size is None else receiver_size
    key = (_fingerprint(sender), _fingerprint(receiver), size_a, size_b)
    if key not in _CACHE:
        _CACHE[key] = _build(sender, receiver, size_a, size_b)
    return _CACHE[key]


def _build(sender: Any, receiver: Any, size_a: int, size_b: int) -> SharedVocabulary:
    keys_a = {i: k for i, k in token_keys(sender).items() if i < size_a}
    keys_b = {i: k for i, k in token_keys(receiver).items() if i < size_b}
    fallback = {int(i) for piece, i in receiver.get_vocab().items() if _BYTE_FALLBACK.fullmatch(piece)}
    by_key: dict[bytes, int] = {}
    for i in sorted(keys_b, key=lambda i: (i in fallback, i)):
        by_key.setdefault(keys_b[i], i)
    pairs = sorted((i, by_key[k]) for i, k in keys_a.items() if k in by_key)
    ids = sender(TYPICAL_TEXT, add_special_tokens=False)["input_ids"]
    shared_a = {i for i, _ in pairs}
    return SharedVocabulary(
        sender=str(getattr(sender, "name_or_path", "")) or "sender",
        receiver=str(getattr(receiver, "name_or_path", "")) or "receiver",
        source_ids=torch.tensor([i for i, _ in pairs], dtype=torch.long),
        target_ids=torch.tensor([j for _, j in pairs], dtype=torch.long),
        sender_size=size_a,
        receiver_size=size_b,
        sender_tokens=len(keys_a),
        receiver_tokens=len(keys_b),
        coverage=sum(i in shared_a for i in ids) / max(len(ids), 1),
    )


def same_vocabulary(sender: Model, receiver: Model) -> bool:
    """Whether A and B tokenize identically and have as many embedding rows (CIPHER needs no projection)."""
    if sender is receiver:
        return True
    return sender.tokenizer.get_vocab() == receiver.tokenizer.get_vocab() and (
        embedding_table(sender).shape[0] == embedding_table(receiver).shape[0]
    )


def vocab_projection(
    sender: Model,
    receiver: Model,
    *,
    min_shared: int = MIN_SHARED_TOKENS,
    min_coverage: float = MIN_TEXT_COVERAGE,
) -> SharedVocabulary:
    """How A's token distributions reach B: the identity for a shared tokenizer, else through shared tokens.

    Raises:
        CommlibError: too small an overlap, with what was measured.
    """
    size_a, size_b = embedding_table(sender).shape[0], embedding_table(receiver).shape[0]
    if same_vocabulary(sender, receiver):
        empty = torch.zeros(0, dtype=torch.long)
        return SharedVocabulary(
            sender.name, receiver.name, empty, empty, size_a, size_b, size_a, size_b, 1.0, True
        )
    v = shared_vocabulary(sender.tokenizer, receiver.tokenizer, sender_size=size_a, receiver_size=size_b)
    if v.n_shared < min_shared or v.coverage < min_coverage:
        raise CommlibError(
            f"{sender.name} and {receiver.name} share {v.n_shared} tokens "
            f"({v.n_shared / max(v.sender_tokens, 1):.1%} of {sender.name}'s vocabulary), covering "
            f"{v.coverage:.1%} of {sender.name}'s tokens on typical text; projecting needs >= {min_shared} "
            f"tokens and >= {min_coverage:.0%}: use a pair whose tokenizers overlap more"
        )
    return v


PROJECTED_METHODS = ("cipher", "rosetta")
"""Name prefixes of the methods that send A's token distributions, projected across tokenizers: ``cipher``,
``cipher-t<T>``, ``cipher-debate`` and ``rosetta``."""
BOTH_WAYS_METHODS = ("cipher-debate",)
"""Of those, the methods whose messages also go from B to A (the debate): projected in both directions."""


def vocabulary_settings(methods: Iterable[str], sender: Model, receiver: Model) -> dict[str, Any]:
    """What a run records in its settings about the projections its methods need, checked before any work.

    Nothing (``{}``) when no method sends token distributions or A and B
    share a tokenizer, so such runs record nothing new and resume as before.
    Else ``vocabulary``: A -> B's :meth:`SharedVocabulary.record`; and where a
    method also sends from B to A (:data:`BOTH_WAYS_METHODS`),
    ``vocabulary_receiver_to_sender``: B -> A's.

    Raises:
        CommlibError: too small an overlap in a direction the methods send (:func:`vocab_projection`).

    Example:
        >>> from commlib.models import load_model
        >>> m = load_model("tiny-llama-random")
        >>> vocabulary_settings(["nl", "cipher-t0", "cipher-debate"], m, m)
        {}
    """
    names = list(methods)
    if not any(m.startswith(PROJECTED_METHODS) for m in names) or same_vocabulary(sender, receiver):
        return {}
    settings = {"vocabulary": vocab_projection(sender, receiver).record()}
    if any(m in BOTH_WAYS_METHODS for m in names):
        settings["vocabulary_receiver_to_sender"] = vocab_projection(receiver, sender).record()
    return settings


def project_embed(
    receiver: Model, v: SharedVocabulary, probs: Float[Tensor, "... va"]
) -> Float[Tensor, "... d"]:
    """B's expected input embedding under A's distributions ``probs``, through ``v`` (B's scale included)."""
    table = embedding_table(receiver)
    q = v.project(probs.to(table.device))
    return (q.to(table.dtype) @ table) * embedding_scale(receiver)


def token_embeddings(receiver: Model, v: SharedVocabulary, token_ids: Sequence[int]) -> Float[Tensor, "L d"]:
    """A's tokens as B reads them: B's embedding of each one's shared twin (zeros outside the overlap).

    With a shared tokenizer this is B's embedding of the same ids.
    """
    ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=receiver.device)
    if v.identical:
        return embed(receiver, ids)
    one_hot = torch.nn.functional.one_hot(ids, v.sender_size).float()
    return project_embed(receiver, v, one_hot)


# --------------------------------------------------------------------------- #
# AVP's rosetta: one vector
# --------------------------------------------------------------------------- #


def embedding_norm(model: Model) -> float:
    """Mean norm of the model's input embeddings as it reads them (its scale included)."""
    table = embedding_table(model).float()
    return float(table.norm(dim=-1).mean() * embedding_scale(model).float())


@torch.no_grad()
def rosetta_vectors(
    sender: Model,
    receiver: Model,
    prompts: Sequence[str],
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
) -> tuple[Float[Tensor, "n d"], Float[Tensor, " n"]]:
    """AVP's rosetta projection: one vector per prompt, A's next-token distribution in B's embedding space.

    A reads each prompt; its logits at the last position (its last hidden
    state through its unembedding) go through ``softmax(. / T)``, onto the
    shared tokens (renormalised; all of them with a shared tokenizer), and
    into B's input embeddings; the vector is rescaled to the mean norm of
    B's input embeddings (:func:`embedding_norm`).

    Returns:
        The vectors ``[n, d_B]`` and the mass of each distribution outside the overlap ``[n]``.

    Raises:
        CommlibError: a non-positive temperature, or too small an overlap.

    Example:
        >>> from commlib.models import load_model
        >>> m = load_model("tiny-llama-random")
        >>> vectors, outside = rosetta_vectors(m, m, ["Alice is at the Eiffel Tower."])
        >>> vectors.shape, round(float(vectors.norm()), 3) == round(embedding_norm(m), 3)
        (torch.Size([1, 64]), True)
    """
    if temperature <= 0:
        raise CommlibError(f"the rosetta temperature must be > 0, got {temperature}")
    v = vocab_projection(sender, receiver)
    norm = embedding_norm(receiver)
    vectors, outside = [], []
    for start in range(0, len(prompts), batch_size):
        batch = encode(sender, list(prompts[start : start + batch_size]))
        rows = [
            embed(sender, ids[m.bool()]) for ids, m in zip(batch.input_ids, batch.attention_mask, strict=True)
        ]
        logits, _, _, _ = prefill_rows(sender, rows)
        probs = torch.softmax(logits / temperature, dim=-1)
        e = project_embed(receiver, v, probs).float()
        vectors.append(e * (norm / e.norm(dim=-1, keepdim=True).clamp(min=1e-6)))
        outside.append(v.outside(probs).cpu())
    d = receiver.info.d_model
    return (torch.cat(vectors) if vectors else torch.zeros(0, d)), (
        torch.cat(outside) if outside else torch.zeros(0)
    )


def _toy() -> SharedVocabulary:
    """A 3-token A onto a 4-token B: A's 1 -> B's 2, A's 2 -> B's 3, A's 0 unshared (doctests)."""
    return SharedVocabulary("a", "b", torch.tensor([1, 2]), torch.tensor([2, 3]), 3, 4, 3, 4, 1.0)
