"""Engine logprobs -> the two OpenAI logprobs shapes (chat `content[]` and completions' columns).

Each function takes `token_text`, which gives one token's text as a client would see it on its
own (`Worker.token_text`, cached per worker: streams with logprobs ask it for every token).
"""

from __future__ import annotations

from collections.abc import Callable

from llmserve.engine.request import TokenLogprob

TokenText = Callable[[int], str]


def _entry(token_text: TokenText, token_id: int, logprob: float) -> dict:
    text = token_text(token_id)
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8"))}


def _finite(value: float) -> float:
    return max(value, -9999.0)  # -inf is not valid JSON


def chat_logprobs(token_text: TokenText, logprobs: list[TokenLogprob]) -> dict:
    """`choices[].logprobs` of a chat completion (or of one streamed chunk)."""
    content = []
    for item in logprobs:
        entry = _entry(token_text, item.token_id, item.logprob)
        entry["top_logprobs"] = [_entry(token_text, tid, lp) for tid, lp in item.top]
        content.append(entry)
    return {"content": content, "refusal": None}


def completion_logprobs(token_text: TokenText, logprobs: list[TokenLogprob], text_start: int) -> dict:
    """`choices[].logprobs` of a text completion; offsets count from `text_start`."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = text_start
    for item in logprobs:
        text = token_text(item.token_id)
        tokens.append(text)
        token_logprobs.append(_finite(item.logprob))
        top_logprobs.append({token_text(tid): _finite(lp) for tid, lp in item.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": offsets}


def prompt_completion_logprobs(token_text: TokenText, prompt_ids: list[int],
                               prompt_logprobs: list[TokenLogprob | None]) -> dict:
    """The echoed prompt's part of a text completion's logprobs (the first token has none)."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = 0
    for token_id, item in zip(prompt_ids, prompt_logprobs, strict=True):
        text = token_text(token_id)
        tokens.append(text)
        token_logprobs.append(None if item is None else _finite(item.logprob))
        top_logprobs.append(None if item is None else {token_text(t): _finite(lp) for t, lp in item.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": offsets}


def join_logprobs(first: dict, second: dict) -> dict:
    """Two logprob column sets, one after the other."""
    return {key: first[key] + second[key] for key in first}
