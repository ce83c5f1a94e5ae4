"""Engine logprobs -> the two OpenAI logprobs shapes (chat `content[]` and completions' columns)."""

from __future__ import annotations

from typing import Any

from llmserve.engine.request import TokenLogprob


def token_text(tokenizer: Any, token_id: int) -> str:
    """The text of one token, as a client would see it on its own."""
    return tokenizer.decode([token_id], skip_special_tokens=False)


def _entry(tokenizer: Any, token_id: int, logprob: float) -> dict:
    text = token_text(tokenizer, token_id)
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8"))}


def _finite(value: float) -> float:
    return max(value, -9999.0)  # -inf is not valid JSON


def chat_logprobs(tokenizer: Any, logprobs: list[TokenLogprob]) -> dict:
    """`choices[].logprobs` of a chat completion (or of one streamed chunk)."""
    content = []
    for item in logprobs:
        entry = _entry(tokenizer, item.token_id, item.logprob)
        entry["top_logprobs"] = [_entry(tokenizer, tid, lp) for tid, lp in item.top]
        content.append(entry)
    return {"content": content, "refusal": None}


def completion_logprobs(tokenizer: Any, logprobs: list[TokenLogprob], text_start: int) -> dict:
    """`choices[].logprobs` of a text completion; offsets count from `text_start`."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = text_start
    for item in logprobs:
        text = token_text(tokenizer, item.token_id)
        tokens.append(text)
        token_logprobs.append(_finite(item.logprob))
        top_logprobs.append({token_text(tokenizer, tid): _finite(lp) for tid, lp in item.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": offsets}


def prompt_completion_logprobs(tokenizer: Any, prompt_ids: list[int],
                               prompt_logprobs: list[TokenLogprob | None]) -> dict:
    """The echoed prompt's part of a text completion's logprobs (the first token has none)."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = 0
    for token_id, item in zip(prompt_ids, prompt_logprobs, strict=True):
        text = token_text(tokenizer, token_id)
        tokens.append(text)
        token_logprobs.append(None if item is None else _finite(item.logprob))
        top_logprobs.append(None if item is None else {token_text(tokenizer, t): _finite(lp) for t, lp in item.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": offsets}


def join_logprobs(first: dict, second: dict) -> dict:
    """Two logprob column sets, one after the other."""
    return {key: first[key] + second[key] for key in first}
