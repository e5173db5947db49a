from __future__ import annotations

import pytest

from dynamo.frontend.postprocess import Detokenizer, StopMatcher
from dynamo.frontend.preprocess import load_preprocessor
from dynamo.mocker.config import DEFAULT_MODEL_PATH


@pytest.fixture(scope="module")
def pre():  # type: ignore[no-untyped-def]
    return load_preprocessor(DEFAULT_MODEL_PATH)


@pytest.mark.parametrize("text", ["Hello, world!", "naïve café — 你好 🙂 done", "a  b\n\tc"])
def test_incremental_detokenization_reassembles_text(pre, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = pre.encode(text)
    detok = Detokenizer(pre.tokenizer)
    pieces = [detok.feed([i]) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # a multi-byte character is never split


def test_multibyte_character_waits_for_all_its_bytes(pre) -> None:  # type: ignore[no-untyped-def]
    ids = pre.encode("🙂")
    assert len(ids) > 1  # byte-level BPE spreads the emoji over several tokens
    detok = Detokenizer(pre.tokenizer)
    assert [detok.feed([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.feed([ids[-1]]) == "🙂"


def test_several_tokens_at_once(pre) -> None:  # type: ignore[no-untyped-def]
    ids = pre.encode("streaming in batches of tokens")
    detok = Detokenizer(pre.tokenizer)
    assert detok.feed(ids[:3]) + detok.feed(ids[3:]) == "streaming in batches of tokens"


def test_special_tokens_are_skipped(pre) -> None:  # type: ignore[no-untyped-def]
    eos = pre.eos_token_ids[0]
    detok = Detokenizer(pre.tokenizer)
    assert detok.feed(pre.encode("hi") + [eos]) == "hi"


def test_stop_string_inside_one_piece() -> None:
    m = StopMatcher(["END"])
    assert m.feed("abc END def") == ("abc ", True)


def test_stop_string_split_across_pieces_is_held_back() -> None:
    m = StopMatcher(["</s>"])
    assert m.feed("hello <") == ("hello ", False)
    assert m.feed("/") == ("", False)
    assert m.feed("s> tail") == ("", True)


def test_held_back_text_released_when_it_is_not_a_stop() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("ST") == ("", False)
    assert m.feed("AR") == ("STAR", False)
    assert m.feed("S") == ("", False)
    assert m.flush() == "S"


def test_earliest_of_several_stops_wins() -> None:
    m = StopMatcher(["world", "lo w"])
    assert m.feed("hello world") == ("hel", True)


def test_no_stops_passes_text_through() -> None:
    m = StopMatcher([])
    assert m.feed("anything") == ("anything", False)
    assert m.flush() == ""
