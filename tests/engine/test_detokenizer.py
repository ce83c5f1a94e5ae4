"""Incremental detokenisation: deltas concatenate to the full decode; stop strings never leak."""

from __future__ import annotations

from transformers import AutoTokenizer

from llmserve.engine.detokenizer import IncrementalDetokenizer


def _run(tokenizer, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, [tokenizer.bos_token_id], stop)
    deltas = []
    for i, token_id in enumerate(ids):
        detok.push(token_id)
        deltas.append(detok.release(is_final=i == len(ids) - 1 or detok.stopped))
        if detok.stopped:
            break
    return deltas, detok


def test_deltas_concatenate_to_full_decode(tiny_model_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Grüße, 世界! naïve café — ok 🙂 done"
    ids = tok.encode(text, add_special_tokens=False)
    deltas, _ = _run(tok, ids)
    assert "".join(deltas) == tok.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_is_cut_and_never_streamed(tiny_model_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok.encode("alpha beta STOP gamma", add_special_tokens=False)
    deltas, detok = _run(tok, ids, stop=("STOP",))
    assert detok.stopped
    assert "".join(deltas) == "alpha beta "
    assert not any("S" in d for d in deltas)


def test_partial_stop_prefix_is_released_when_it_does_not_complete(tiny_model_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok.encode("a STO b", add_special_tokens=False)
    deltas, detok = _run(tok, ids, stop=("STOP",))
    assert not detok.stopped
    assert "".join(deltas) == "a STO b"


def test_earliest_of_several_stop_strings_wins(tiny_model_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok.encode("one two three four", add_special_tokens=False)
    deltas, _ = _run(tok, ids, stop=("four", "two"))
    assert "".join(deltas) == "one "


def test_tokenizers_that_clean_up_spaces_decode_through_transformers(tiny_model_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.clean_up_tokenization_spaces = True
    text = "Hello , world ! It 's fine ."
    ids = tok.encode(text, add_special_tokens=False)
    deltas, _ = _run(tok, ids)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True)
