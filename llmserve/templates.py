"""Chat prompts: which template a worker uses and how messages become prompt token ids.

A worker's template is the config's `chat_template` (a built-in name from
llmserve/builtin_templates.py, a Jinja file or a Jinja string), else the tokenizer's own; a
generation worker with neither is refused at start-up unless `enable_chat = false`.
Templates render through the tokenizer's `apply_chat_template`, which uses transformers'
sandboxed Jinja environment; requests can never supply a template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmserve.builtin_templates import BUILTIN_TEMPLATES, builtin_template_text
from llmserve.config import WorkerConfig
from llmserve.errors import ConfigError, InvalidRequestError


def resolve_chat_template(override: str, tokenizer: Any) -> str | None:
    """The config's template (a built-in name, a file path or a Jinja string), else the tokenizer's;
    None when there is neither (the worker then serves completions only: `enable_chat = false`)."""
    if override in BUILTIN_TEMPLATES:
        return builtin_template_text(override, tokenizer)
    if override:
        if is_template_text(override):
            return override
        return Path(override).expanduser().read_text(encoding="utf-8")
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    return None


def is_template_text(value: str) -> bool:
    """A Jinja template (it has tags or expressions) rather than the path of a template file."""
    return "{{" in value or "{%" in value


def check_chat_template(value: str, path: str) -> None:
    """A configured template must be a built-in name, Jinja text or an existing file (never a typo'd
    name or path used as text)."""
    if value and value not in BUILTIN_TEMPLATES and not is_template_text(value) \
            and not Path(value).expanduser().is_file():
        raise ConfigError(f'{path} = "{value}": not a built-in template ({", ".join(BUILTIN_TEMPLATES)}), '
                          "not a Jinja template and no such file")


def tokenizer_has_chat_template(folder: Path) -> bool:
    """Whether a tokenizer folder ships a chat template, where transformers looks for one."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def check_chat_available(config: WorkerConfig, tokenizer_dir: Path, path: str) -> None:
    """A generation worker that serves chat needs a template: the config's or the tokenizer's."""
    if not config.enable_chat or config.chat_template or tokenizer_has_chat_template(tokenizer_dir):
        return
    raise ConfigError(f'{path}.chat_template: the tokenizer of "{tokenizer_dir}" ships no chat template; set '
                      f'chat_template to a built-in one ({", ".join(BUILTIN_TEMPLATES)}), a Jinja file or '
                      "string, or enable_chat = false to serve completions only")


def check_serves_chat(config: WorkerConfig, model: str) -> None:
    """400 for a chat request to a worker configured for completions only."""
    if not config.enable_chat:
        raise InvalidRequestError(f"model '{model}' serves completions only (it has no chat template); "
                                  "use /v1/completions", param="model")


def render_chat_prompt(tokenizer: Any, messages: list[dict[str, Any]], **template_kwargs: Any) -> str:
    """The prompt text for a conversation, ending with the assistant's turn header."""
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **template_kwargs)
    except Exception as exc:  # a template's raise_exception() or a rendering error
        raise InvalidRequestError(f"the chat template rejected these messages: {_first_line(exc)}",
                                  param="messages") from None


def encode_chat(tokenizer: Any, messages: list[dict[str, Any]], **template_kwargs: Any) -> list[int]:
    """Prompt token ids; the template supplies the special tokens itself."""
    return encode_texts(tokenizer, [render_chat_prompt(tokenizer, messages, **template_kwargs)], add_special_tokens=False)[0]


def encode_text(tokenizer: Any, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of a plain completion prompt, with the tokenizer's usual special tokens."""
    return encode_texts(tokenizer, [text], add_special_tokens)[0]


def encode_texts(tokenizer: Any, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids of each text, as `tokenizer.encode` gives them.

    Called as a batch, a fast tokenizer encodes in Rust with the GIL released (its single-text
    `encode` holds it throughout), so a huge prompt tokenized in a worker thread leaves the event
    loop free; only the id lists are built back under the GIL.
    """
    if not texts:
        return []
    backend = _plain_backend(tokenizer)
    if backend is not None:  # transformers' own call adds ~10x the GIL-held list building on top
        # `encode_batch_fast` skips the offsets: the same ids, and freeing a 4 MB prompt's encoding
        # (under the GIL) stalled the event loop ~40 ms instead of ~100.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [encoding.ids for encoding in encode(texts, add_special_tokens=add_special_tokens)]
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)
    return list(encoded["input_ids"])  # lists of ints already: not copied again


_TEXTS_PER_COUNT_BATCH = 1_024


def count_tokens(tokenizer: Any, texts: list[str], add_special_tokens: bool = True) -> list[int]:
    """`len(tokenizer.encode(text))` of each text. Where the Rust tokenizer encodes exactly so, its
    encodings are counted without building their id lists, a batch of texts at a time: 100k prompts
    in one call hold the GIL for tens of milliseconds while it builds and frees their encodings."""
    backend = _plain_backend(tokenizer)
    if backend is None:
        return [len(ids) for ids in encode_texts(tokenizer, texts, add_special_tokens)]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    counts: list[int] = []
    for start in range(0, len(texts), _TEXTS_PER_COUNT_BATCH):
        counts.extend(len(encoding) for encoding in encode(texts[start:start + _TEXTS_PER_COUNT_BATCH],
                                                           add_special_tokens=add_special_tokens))
    return counts


def _plain_backend(tokenizer: Any) -> Any:
    """The Rust tokenizer behind a fast tokenizer when calling it directly encodes exactly as
    `tokenizer.encode` does (no truncation or padding set, special tokens not split), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch"):
        return None
    splits = bool(getattr(tokenizer, "split_special_tokens", False))
    if backend.truncation is not None or backend.padding is not None or backend.encode_special_tokens != splits:
        return None
    return backend


def decode_ids(tokenizer: Any, ids: list[int]) -> str:
    """`tokenizer.decode(ids)`, through the Rust batch call (GIL released) where that is the same thing."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False) or not hasattr(
            backend, "decode_batch"):
        return str(tokenizer.decode(ids))
    return str(backend.decode_batch([ids], skip_special_tokens=False)[0])


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
