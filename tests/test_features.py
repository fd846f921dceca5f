"""Text normalization: the one function training and serving both run on every prompt."""

from __future__ import annotations

import pytest

from cascade.model.features import (
    ANCHORED_FEATURES,
    FEATURE_NAMES,
    FEATURE_VERSION,
    MAX_CHARS,
    normalize,
    prompt_features,
)
from cascade.training.train import PARITY_TEXTS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Hello\t\tWorld\n\n\nagain  ", "hello world again"),
        ("a\r\nb\u00a0c\u2003d\u2028e\x0bf\x0cg", "a b c d e f g"),
        ("", ""),
        (" \t\n\u3000 ", ""),
    ],
)
def test_whitespace_runs_become_one_space(raw: str, expected: str) -> None:
    """Every whitespace run, Unicode spaces included, becomes one space; the ends are stripped."""
    assert normalize(raw) == expected


def test_compatibility_forms_fold_and_case_folds() -> None:
    """Full-width letters, ligatures and decomposed accents fold to their plain lower-case form."""
    full_width = "\uff26\uff55\uff4c\uff4c \uff21\uff22\uff23 \uff11\uff12\uff13"
    assert normalize(full_width) == "full abc 123"
    assert normalize("\ufb01ne \u00c9COLE e\u0301t\u00e9") == "fine \u00e9cole \u00e9t\u00e9"
    assert normalize("\u041f\u0420\u0418") == "\u043f\u0440\u0438"  # Cyrillic ПРИ -> при


def test_long_text_is_cut_without_a_trailing_space() -> None:
    """Normalized text is at most MAX_CHARS long and never ends in the space the cut landed on."""
    cut_on_space = "abc " * 5_000  # character MAX_CHARS - 1 is a space
    assert len(normalize(cut_on_space)) == MAX_CHARS - 1
    assert not normalize(cut_on_space).endswith(" ")
    assert normalize("x" * 1_000_000) == "x" * MAX_CHARS


def test_normalizing_twice_changes_nothing() -> None:
    """A prompt normalized upstream scores the same: normalize is idempotent on messy text."""
    for text in PARITY_TEXTS:
        once = normalize(text)
        assert normalize(once) == once


def test_feature_version_follows_the_cut_length() -> None:
    """Changing MAX_CHARS without a new FEATURE_VERSION fails: old models would see other text."""
    assert FEATURE_VERSION.endswith(f"+{MAX_CHARS}")


def _column(text: str, name: str) -> float:
    return prompt_features(text)[FEATURE_NAMES.index(name)]


@pytest.mark.parametrize(
    "text", ["Hi!", "good morning :)", "Merci beaucoup", "Danke schön", "こんにちは", "Спасибо!"]
)
def test_greetings_and_thanks_are_small_talk(text: str) -> None:
    """Greetings and thanks in several languages and scripts are counted as small talk."""
    assert _column(text, "small_talk_share") >= 0.5
    assert _column(text, "expert_term_share") == 0.0


def test_expert_terms_count_words_and_word_pairs() -> None:
    """A proof or a lock-free queue is expert work; a pair like "lock-free" counts once."""
    assert _column("Prove that the square root of 2 is irrational.", "expert_term_share") > 0
    queue = "Write a lock-free queue in C++."
    assert _column(queue, "expert_term_share") == pytest.approx(1 / 7)  # write a lock free ...
    assert _column("What is the capital of France?", "expert_term_share") == 0.0


def test_short_chat_is_short_questions_and_small_talk() -> None:
    """``short_chat`` rises as a question or a chatty message gets shorter, and is 0 for a
    short instruction or anything of ten words or more."""
    assert _column("Why?", "short_chat") == pytest.approx(0.9)
    assert _column("Hi, I'm Ana.", "short_chat") == pytest.approx(0.6)
    assert _column("Tell me a joke.", "short_chat") == 0.0
    assert (
        _column("Is it true that the ten largest cities are all coastal ones?", "short_chat") == 0
    )


def test_new_columns_come_after_v1s() -> None:
    """v2 only appended columns, so a v1 model is v2's first 25 weights (see reexport)."""
    assert FEATURE_NAMES[-len(ANCHORED_FEATURES) :] == ANCHORED_FEATURES
    assert len(FEATURE_NAMES) == 25 + len(ANCHORED_FEATURES)
