"""The official `openai` SDK, unchanged but for base_url, against a live server."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

MODEL = "tiny-llama"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def test_models_list(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model" and models.data[0].owned_by
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_non_streaming_has_exact_usage(client: OpenAI) -> None:
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    choice = out.choices[0]
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.usage.completion_tokens <= 12 and out.usage.prompt_tokens > 0


def test_streamed_text_equals_non_streamed_for_the_same_seed(client: OpenAI) -> None:
    args = {"model": MODEL, "messages": MESSAGES, "max_tokens": 40, "temperature": 0.9, "seed": 7}
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_option_has_no_usage_chunk(client: OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, stream=True))
    assert all(c.choices for c in chunks)


def test_n_choices_stream_and_not(client: OpenAI) -> None:
    args = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 1.0, "seed": 3, "n": 3}
    whole = client.chat.completions.create(**args)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    texts = {0: "", 1: "", 2: ""}
    for chunk in client.chat.completions.create(stream=True, **args):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole.choices]
    assert 3 <= whole.usage.completion_tokens <= 24  # every choice generated, within max_tokens each
    assert len({c.message.content for c in whole.choices}) > 1  # per-choice seeds differ


def test_stop_string_cuts_the_text(client: OpenAI) -> None:
    base = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0)
    text = base.choices[0].message.content
    stop = text[8:11]
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0, stop=[stop])
    assert out.choices[0].message.content == text[: text.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == out.choices[0].message.content


def test_chat_logprobs(client: OpenAI) -> None:
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0 and entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy picks the best
        assert bytes(entry.bytes).decode() == entry.token


def test_streamed_logprobs_equal_the_whole_answer(client: OpenAI) -> None:
    """Streamed chunks with logprobs (the templated path) parse in the SDK and carry the same
    tokens and logprobs as the non-streamed answer, for chat and for completions."""
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = [c.choices[0] for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    entries = [e for c in chunks if c.logprobs is not None for e in c.logprobs.content]
    assert [(e.token, e.logprob, len(e.top_logprobs)) for e in entries] == \
        [(e.token, e.logprob, 2) for e in whole.logprobs.content]
    assert "".join(c.delta.content or "" for c in chunks) == whole.message.content
    text_kwargs = dict(model=MODEL, prompt="Hello", max_tokens=8, temperature=0, logprobs=1)
    text_whole = client.completions.create(**text_kwargs).choices[0].logprobs
    streamed = [c.choices[0].logprobs for c in client.completions.create(**text_kwargs, stream=True)
                if c.choices and c.choices[0].logprobs is not None]
    assert [t for lp in streamed for t in lp.tokens] == text_whole.tokens
    assert [o for lp in streamed for o in lp.text_offset] == text_whole.text_offset


def test_completions_echo_and_token_prompts(client: OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="def main():", max_tokens=5, temperature=0, echo=True)
    assert out.choices[0].text.startswith("def main():")
    ids = client.completions.create(model=MODEL, prompt=[[1, 2, 3], [4, 5]], max_tokens=4, temperature=0)
    assert [c.index for c in ids.choices] == [0, 1]
    assert ids.usage.prompt_tokens == 5
    assert 2 <= ids.usage.completion_tokens <= 8


def test_completions_default_max_tokens_is_16(client: OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="Once", temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 16 and out.choices[0].finish_reason == "length"


def test_completions_logprobs_and_streaming(client: OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0, logprobs=2)
    lp = whole.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == whole.usage.completion_tokens
    assert "".join(lp.tokens) == whole.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == whole.choices[0].text


def test_errors_map_to_sdk_exceptions(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert "tiny-llama" in not_found.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10**6)
    assert too_long.value.code == "context_length_exceeded" and "4096" in too_long.value.message


def test_auth_errors(keyed_base_url: str) -> None:
    from tests.api.conftest import API_KEY

    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=keyed_base_url, api_key="sk-wrong-key-000", max_retries=0).models.list()
    ok = OpenAI(base_url=keyed_base_url, api_key=API_KEY, max_retries=0)
    assert [m.id for m in ok.models.list().data] == [MODEL]


def test_logit_bias_forces_and_bans_tokens(client: OpenAI, tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    forced = client.completions.create(model=MODEL, prompt="x", max_tokens=4, temperature=0,
                                       logit_bias={"65": 100}, extra_body={"ignore_eos": True})
    assert forced.choices[0].text == tokenizer.decode([65] * 4)
    plain = client.completions.create(model=MODEL, prompt="x", max_tokens=1, temperature=0,
                                      extra_body={"ignore_eos": True})
    greedy_id = tokenizer.encode(plain.choices[0].text, add_special_tokens=False)[0]
    banned = client.completions.create(model=MODEL, prompt="x", max_tokens=1, temperature=0,
                                       logit_bias={str(greedy_id): -100}, extra_body={"ignore_eos": True})
    assert banned.choices[0].text != plain.choices[0].text
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="x", logit_bias={"99999999": 5})
    assert bad.value.body["param"] == "logit_bias"


def test_echo_with_logprobs_scores_the_prompt(client: OpenAI, tiny_model_dir) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompt = "The quick brown fox jumps over the lazy dog"
    ids = tokenizer.encode(prompt)
    with torch.inference_mode():
        expected = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    # The lm-eval-harness request: echo the prompt, no new tokens, logprobs of every prompt token.
    scored = client.completions.create(model=MODEL, prompt=prompt, echo=True, max_tokens=0, logprobs=1)
    choice = scored.choices[0]
    assert choice.text == prompt and scored.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.tokens) == len(ids)
    for p in range(1, len(ids)):
        assert lp.token_logprobs[p] == pytest.approx(expected[p - 1, ids[p]].item(), abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    # With new tokens too: prompt columns first, then the generated ones; streaming gives the same.
    both = client.completions.create(model=MODEL, prompt=prompt, echo=True, max_tokens=3, logprobs=1,
                                     temperature=0, extra_body={"ignore_eos": True})
    assert len(both.choices[0].logprobs.tokens) == len(ids) + 3
    assert both.choices[0].logprobs.token_logprobs[1: len(ids)] == pytest.approx(lp.token_logprobs[1:])
    streamed_text, streamed_lps = "", []
    for chunk in client.completions.create(model=MODEL, prompt=prompt, echo=True, max_tokens=3, logprobs=1,
                                           temperature=0, stream=True, extra_body={"ignore_eos": True}):
        for c in chunk.choices:
            streamed_text += c.text
            if c.logprobs:
                streamed_lps += c.logprobs.token_logprobs
    assert streamed_text == both.choices[0].text
    assert streamed_lps[1:] == pytest.approx(both.choices[0].logprobs.token_logprobs[1:])
