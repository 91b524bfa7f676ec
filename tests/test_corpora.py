"""General-text corpus: sentence splitting and the offline LAMBADA sentences."""

from __future__ import annotations

import pytest

from commlib.corpora import MAX_WORDS, MIN_WORDS, load_sentences, split_sentences
from commlib.errors import CommlibError


def test_split_keeps_sentences_within_word_bounds() -> None:
    text = (
        "Tiny one. This sentence is long enough to be kept by the splitter! "
        '"Quoted speech also ends a sentence here," she said. What about this question right here?'
    )
    out = split_sentences(text)
    assert "Tiny one." not in out
    assert "This sentence is long enough to be kept by the splitter!" in out
    assert all(MIN_WORDS <= len(s.split()) <= MAX_WORDS for s in out)


@pytest.mark.integration
def test_lambada_sentences_are_seeded_and_distinct() -> None:
    a, b, c = (
        load_sentences("lambada", n=50, seed=0),
        load_sentences("lambada", n=50, seed=0),
        load_sentences("lambada", n=50, seed=1),
    )
    assert a == b and a != c and len(set(a)) == 50
    assert all(MIN_WORDS <= len(s.split()) <= MAX_WORDS for s in a)


def test_unknown_corpus() -> None:
    with pytest.raises(CommlibError, match="lambada, c4"):
        load_sentences("wikitext", n=1)
