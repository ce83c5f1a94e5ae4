"""Incremental detokenisation: deltas concatenate to the full decode; stop strings never leak."""

from __future__ import annotations

import random

import pytest
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


def _text(detok: IncrementalDetokenizer, ids: list[int]) -> str:
    for token_id in ids:
        detok.push(token_id)
    return detok.release(is_final=True)


def test_rust_stream_and_python_decodes_give_the_same_text(tiny_model_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rng = random.Random(0)
    specials = tok.all_special_ids
    prompt = tok.encode("Once upon a time", add_special_tokens=False)
    for _ in range(20):
        ids = [rng.choice(specials) if rng.random() < 0.05 else rng.randrange(len(tok)) for _ in range(64)]
        fast = IncrementalDetokenizer(tok, prompt, ())
        assert fast._rust is not None
        slow = IncrementalDetokenizer(tok, prompt, ())
        slow._rust = None
        assert _text(fast, ids) == _text(slow, ids)


def test_a_failing_rust_stream_hands_over_to_python_decodes(tiny_model_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Grüße, 世界! naïve café"
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, [tok.bos_token_id], ())
    for token_id in ids[:5]:
        detok.push(token_id)

    class _Broken:
        def step(self, *_):
            raise RuntimeError("invalid prefix")

    detok._rust = (None, _Broken())
    assert _text(detok, ids[5:]) == text
    assert detok._rust is None


def _sentencepiece_style_tokenizer():
    """A byte-fallback BPE with Llama-2/Mistral's metaspace decoding (the first token of a decode loses
    its leading space), trained offline; its byte tokens are special, so skipping them matters."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    text = "def f(x):\n    return x + 1  # one more than x, for every x in the list of values\n"
    tok.train_from_iterator([text * 20, "Grüße, 世界! naïve café 🙂"] * 10,
                            trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.clean_up_tokenization_spaces = False
    return fast


@pytest.mark.parametrize("path", ["rust", "python"])
def test_text_equals_the_full_decode_with_metaspace_and_skipped_specials(path: str) -> None:
    tok = _sentencepiece_style_tokenizer()
    rng = random.Random(1)
    for trial in range(50):
        prompt = tok.encode("Hello world", add_special_tokens=False) + [tok.eos_token_id] * (trial % 2)
        ids = [rng.randrange(len(tok)) for _ in range(30)]
        detok = IncrementalDetokenizer(tok, prompt, ())
        if path == "python":
            detok._rust = None
        full = tok.decode(prompt + ids, skip_special_tokens=True)
        context = tok.decode(prompt, skip_special_tokens=True)
        assert _text(detok, ids) == full[len(context):]


def _texts_and_counts(tok, prompt, ids):
    """The text with the engine's token-text table, the text without, and how many tokens the
    table answered."""
    from llmserve.engine.detokenizer import TokenTexts

    texts = TokenTexts(tok)
    looked_up = 0
    real_get = texts.get

    def counting(token_id):
        nonlocal looked_up
        text = real_get(token_id)
        looked_up += text is not None
        return text

    texts.get = counting
    with_table = _text(IncrementalDetokenizer(tok, prompt, (), texts=texts), ids)
    without = _text(IncrementalDetokenizer(tok, prompt, ()), ids)
    return with_table, without, looked_up


def test_token_texts_give_the_streams_text_byte_level(tiny_model_dir) -> None:
    """Byte-level BPE: whole-UTF-8 tokens are looked up, partial ones go through the stream (re-primed
    after looked-up ones); the text is the stream's, the full decode's, on random ids and on text with
    multi-byte characters."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rng = random.Random(2)
    prompt = tok.encode("Once upon a time", add_special_tokens=False)
    total_looked_up = 0
    for _ in range(30):
        ids = [rng.choice(tok.all_special_ids) if rng.random() < 0.03 else rng.randrange(len(tok)) for _ in range(64)]
        with_table, without, looked_up = _texts_and_counts(tok, prompt, ids)
        assert with_table == without
        total_looked_up += looked_up
    assert total_looked_up > 30 * 64 // 2  # the table answers most tokens
    ids = tok.encode("Grüße, 世界! naïve café 🙂 done", add_special_tokens=False)
    with_table, without, _ = _texts_and_counts(tok, prompt, ids)
    assert with_table == without == "Grüße, 世界! naïve café 🙂 done"


def test_token_texts_give_the_full_decode_with_metaspace() -> None:
    """Metaspace decoding with byte fallback: a word's leading space depends on a token before it
    (the first token of a decode loses it), so the table only answers after one."""
    tok = _sentencepiece_style_tokenizer()
    rng = random.Random(3)
    looked_up_total = 0
    for trial in range(50):
        prompt = tok.encode("Hello world", add_special_tokens=False) if trial % 3 else [tok.bos_token_id]
        ids = [rng.randrange(len(tok)) for _ in range(30)]
        with_table, without, looked_up = _texts_and_counts(tok, prompt, ids)
        full = tok.decode(prompt + ids, skip_special_tokens=True)
        context = tok.decode(prompt, skip_special_tokens=True)
        assert with_table == without == full[len(context):]
        looked_up_total += looked_up
    assert looked_up_total > 0
