"""Engine text output: incremental detokenisation and stop-string hold-back (pure logic)."""

from __future__ import annotations

import pytest

from llm_service.engine.detokenizer import IncrementalDetokenizer
from llm_service.engine.stop import StopStringFilter
from tandem.testing.engine import byte_level_tokenizer

MULTIBYTE = "Héllo wörld 世界 🎉🚀 naïve €100 東京"


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return byte_level_tokenizer()


def test_deltas_concatenate_to_the_full_decode_and_never_split_a_character(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(MULTIBYTE, add_special_tokens=False)
    assert len(ids) > len(MULTIBYTE) // 2  # CJK and emoji really take several byte tokens here
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == MULTIBYTE
    assert all("\ufffd" not in d for d in deltas)
    assert deltas.count("") >= 3  # held back while a character was incomplete


def test_special_tokens_are_skipped(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode("the cat", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    text = "".join(detok.push(i) for i in [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id])
    assert text + detok.flush() == "the cat"


def test_flush_releases_an_incomplete_character(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode("ok 🎉", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    text = "".join(detok.push(i) for i in ids[:-1])
    assert text == "ok "
    assert detok.flush() == "\ufffd"


def test_metaspace_tokenizer_keeps_spaces_between_deltas() -> None:
    from tandem.testing.checkpoints import llama_tokenizer

    tok = llama_tokenizer([])
    sentence = "The cat sees the river today. 世界"
    ids = tok.encode(sentence, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok)
    streamed = "".join(detok.push(i) for i in ids) + detok.flush()
    assert streamed == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert "cat sees" in streamed


def _stream(stops: tuple[str, ...], deltas: list[str]) -> tuple[list[str], bool]:
    filt = StopStringFilter(stops)
    out = []
    for delta in deltas:
        text, matched = filt.push(delta)
        out.append(text)
        if matched:
            return out, True
    out.append(filt.flush())
    return out, False


def test_stop_string_across_deltas_is_cut_and_never_shown_partially() -> None:
    out, matched = _stream(("STOP",), ["hello S", "T", "O", "P and more"])
    assert matched
    assert out == ["hello ", "", "", ""]
    assert "".join(out) == "hello "


def test_held_back_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    out, matched = _stream(("STOP",), ["a ST", "ORE"])
    assert not matched
    assert out[0] == "a "
    assert "".join(out) == "a STORE"


def test_earliest_of_several_stop_strings_wins() -> None:
    out, matched = _stream(("world", "lo w"), ["hel", "lo world"])
    assert matched
    assert "".join(out) == "hel"


def test_no_stop_strings_passes_text_through() -> None:
    filt = StopStringFilter(())
    assert filt.push("abc") == ("abc", False)
    assert filt.flush() == ""
