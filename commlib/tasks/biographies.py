"""Biographies (Du et al., 2023): bullet-point biographies of computer scientists, judged per fact.

The ground truth is Du et al.'s ``article.json`` (524 people, each a string of
``- `` bullet facts). It is read at run time, never copied into the project:
from ``$COMMLIB_BIOGRAPHIES`` when set, else from the project's
``../shared/data/biographies/article.json``, else from the commlib cache
where ``source="hub"`` (``commlib fetch biographies``) put the upstream file
(pinned commit, sha256 checked); the network is used only when asked.

A model answers :data:`BIOGRAPHY_PROMPT`. A judge model then reads the
biography (its bullets joined by spaces, as Du et al.'s evaluation does)
against each ground-truth fact with :data:`JUDGE_PROMPT` and answers yes, no
or uncertain (:func:`parse_verdict`). Uncertain (and unparsable) answers are
dropped; an item's score is the fraction of yes among the facts judged yes or
no (:func:`fact_score`). The paper's Table 3 grades supported 1 / partial
0.5 / not 0; the judge here is Du et al.'s three-way one, as the project's
issue asks.

Example:
    >>> parse_bullets("Here it is:\\n- Born in 1940.\\n\\n2. Won the Turing Award")
    ['Here it is:', 'Born in 1940.', 'Won the Turing Award']
    >>> [parse_verdict(t) for t in ("Yes.", "**No**", "Uncertain", "Yes, but the date differs")]
    ['yes', 'no', 'uncertain', 'yes']
    >>> fact_score(["yes", "uncertain", "no", "yes"])
    0.6666666666666666
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from commlib.config import DEFAULT_JUDGE as DEFAULT_JUDGE
from commlib.errors import CommlibError, ModelUnavailableError
from commlib.models import Model, cache_dir
from commlib.tasks.items import ReasoningItem, sample_items

TASK = "biographies"
PATH_ENV = "COMMLIB_BIOGRAPHIES"
"""Environment variable naming an ``article.json`` to read instead of the default places."""
SHARED_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "biographies" / "article.json"
"""The project's shared copy (``../shared`` next to the repository)."""
UPSTREAM_COMMIT = "9846749"  # as SOURCE.md of the shared copy names it
UPSTREAM_URL = (
    "https://raw.githubusercontent.com/composable-models/llm_multiagent_debate/"
    f"{UPSTREAM_COMMIT}/biography/article.json"
)
UPSTREAM_SHA256 = "b444dbd9af5992177a4365bdec94c07e40098a7e270fecdce13e078aa5833436"

BIOGRAPHY_PROMPT = (
    "Give a bullet point biography of {person} highlighting their contributions and achievements as a "
    "computer scientist, with each fact separated with a new line character."
)
"""Du et al.'s question (their gen_conversation.py)."""
DEBATE_PROMPT = (
    "Here are some bullet point biographies of {person} given by other agents: \n\n Agent response: "
    "```{other}```\n\n Using these other biographies of {person} as additional advice, what is your updated "
    "bullet point biography of the computer scientist {person}?"
)
"""Du et al.'s debate turn (the wording of their middle rounds, which needs no history of one's own)."""
JUDGE_PROMPT = (
    "Consider the following biography of {person}: \n {biography} \n\n Is the above biography above "
    "consistent with the fact below? \n\n {fact} \n Give a single word answer, yes, no, or uncertain. "
    "Carefully check the precise dates and locations between the fact and the above biography."
)
"""Du et al.'s judge prompt (their eval_conversation.py), verbatim."""
JUDGE_MAX_NEW_TOKENS = 12

Verdict = Literal["yes", "no", "uncertain", "unparsed"]


def article_path(path: str | Path | None = None) -> Path:
    """Where ``article.json`` is read from: ``path``, ``$COMMLIB_BIOGRAPHIES``, the shared copy, the cache.

    Raises:
        CommlibError: none of them exists, naming how to provide one.
    """
    env = os.environ.get(PATH_ENV)
    candidates = [Path(path)] if path else [*([Path(env)] if env else []), SHARED_PATH, _cache_path()]
    for candidate in candidates:
        if candidate.expanduser().exists():
            return candidate.expanduser()
    raise CommlibError(
        f"no biographies data at {', '.join(map(str, candidates))}: set ${PATH_ENV} to Du et al.'s "
        "article.json, or fetch the upstream file with `commlib fetch biographies` (needs a network)"
    )


def _cache_path() -> Path:
    return cache_dir() / "data" / "biographies_article.json"


def fetch_biographies(force: bool = False) -> Path:
    """Download the upstream ``article.json`` (pinned commit) into the cache once; sha256 checked.

    Raises:
        ModelUnavailableError: no network, or a file with another checksum.
    """
    path = _cache_path()
    if path.exists() and not force:
        return path
    try:
        with urllib.request.urlopen(UPSTREAM_URL, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        raise ModelUnavailableError(
            f"cannot download {UPSTREAM_URL} ({type(exc).__name__}); offline, set ${PATH_ENV} to a copy"
        ) from exc
    if hashlib.sha256(data).hexdigest() != UPSTREAM_SHA256:
        raise ModelUnavailableError(f"{UPSTREAM_URL} has another sha256 than {UPSTREAM_SHA256}; not used")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def person_name(key: str) -> str:
    """The name a prompt uses: the key without a disambiguator (``"Arvind (computer scientist)"``)."""
    return key.split("(")[0].strip()


def parse_bullets(text: str) -> list[str]:
    """The non-empty lines of ``text``, each from its first letter on (Du et al.'s parse_bullets)."""
    bullets = []
    for line in text.split("\n"):
        letters = [i for i, c in enumerate(line) if c.isalpha()]
        if letters:
            bullets.append(line[letters[0] :])
    return bullets


def biographies(
    n: int | None = 100, seed: int = 0, *, source: str = "offline", path: str | Path | None = None
) -> list[ReasoningItem]:
    """``n`` people drawn with ``seed`` (all with ``n=None``), as items whose answer is the fact list.

    Each item's ``question`` is the person's name, ``answer`` the ground-truth
    bullets (one per line) and ``id`` ``biographies-<key>``.

    Raises:
        CommlibError: no data (see :func:`article_path`), or a file that is not a person -> facts map.
    """
    file = fetch_biographies() if source == "hub" and path is None else article_path(path)
    data = json.loads(file.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise CommlibError(f"{file} is not a JSON object of person -> facts, as Du et al.'s article.json")
    items = [
        ReasoningItem(person_name(key), "\n".join(parse_bullets(data[key])), id=f"{TASK}-{key}", task=TASK)
        for key in sorted(data)
    ]
    return sample_items(items, n, seed)


def biography_text(output: str) -> str:
    """What the judge reads: the bullets of a model's biography joined by spaces (Du et al.)."""
    return " ".join(parse_bullets(output))


def judge_prompts(person: str, output: str, facts: Sequence[str]) -> list[str]:
    """One :data:`JUDGE_PROMPT` per ground-truth fact for a model's biography ``output``."""
    bio = biography_text(output)
    return [JUDGE_PROMPT.format(person=person, biography=bio, fact=fact) for fact in facts]


_WORD = re.compile(r"[a-z]+")
_VERDICTS: tuple[Verdict, ...] = ("yes", "no", "uncertain")


def parse_verdict(text: str) -> Verdict:
    """The judge's answer: its first word when that is yes/no/uncertain, else the only one of them named.

    ``"unparsed"`` when it names none, or several (e.g. "yes or no"); it is dropped like uncertain.
    """
    words = _WORD.findall(text.lower())
    if words and words[0] in _VERDICTS:
        return words[0]  # type: ignore[return-value]
    named = {w for w in words if w in _VERDICTS}
    return named.pop() if len(named) == 1 else "unparsed"  # type: ignore[return-value]


def fact_score(verdicts: Sequence[str]) -> float:
    """Fraction of yes among the facts judged yes or no (uncertain and unparsed dropped); NaN if none."""
    judged = [v for v in verdicts if v in ("yes", "no")]
    return sum(v == "yes" for v in judged) / len(judged) if judged else float("nan")


@dataclass(frozen=True)
class Judgement:
    """The judge on one fact of one biography: the prompt it read, its raw answer, the verdict.

    ``p_yes``, ``p_no`` and ``p_uncertain`` are the probabilities the judge
    gave each verdict word as its first answer token (every casing and
    leading-space variant summed; :func:`verdict_probabilities`), the judge's
    leaning even where it answered something else. ``None`` where not measured.
    """

    fact: str
    prompt: str
    answer: str
    verdict: Verdict
    p_yes: float | None = None
    p_no: float | None = None
    p_uncertain: float | None = None


def verdict_token_ids(tokenizer: Any) -> dict[str, list[int]]:
    """Each verdict word's first token ids over its spellings: yes, Yes, YES, with or without a space."""
    out: dict[str, list[int]] = {}
    for word in _VERDICTS:
        spellings = {v for w in (word, word.capitalize(), word.upper()) for v in (w, " " + w)}
        out[word] = sorted({tokenizer(s, add_special_tokens=False)["input_ids"][0] for s in spellings})
    return out


def verdict_probabilities(logits: Float[Tensor, "facts vocab"], tokenizer: Any) -> dict[str, list[float]]:
    """Per row of first-token ``logits``: the probability of each verdict word (:func:`verdict_token_ids`)."""
    probs = torch.softmax(logits.float(), dim=-1)
    return {word: probs[:, ids].sum(-1).tolist() for word, ids in verdict_token_ids(tokenizer).items()}


def judge_biography(
    judge: Model,
    item: ReasoningItem,
    output: str,
    *,
    backend: str = "nnsight",
    max_new_tokens: int = JUDGE_MAX_NEW_TOKENS,
) -> list[Judgement]:
    """Judge ``output`` (a biography of ``item.question``) against each of ``item``'s facts, greedily.

    All facts of one biography go through ``judge`` as one batch, and the
    prompt up to the fact (template, instruction and biography), the same for
    every fact, is prefilled once (:meth:`~commlib.backends.Backend.generate_shared_prefix`).
    """
    from commlib.backends import Decoding, get_backend
    from commlib.prompts import encode

    facts = item.answer.split("\n")
    prompts = judge_prompts(item.question, output, facts)
    gen = get_backend(judge, backend).generate_shared_prefix(
        encode(judge, prompts), Decoding(max_new_tokens=max_new_tokens)
    )
    p = verdict_probabilities(gen.first_logits, judge.tokenizer)
    return [
        Judgement(fact, prompt, answer, parse_verdict(answer), p["yes"][i], p["no"][i], p["uncertain"][i])
        for i, (fact, prompt, answer) in enumerate(zip(facts, prompts, gen.texts, strict=True))
    ]
