"""Chat prompts: which template a worker uses and how messages become prompt token ids.

Templates render through the tokenizer's `apply_chat_template`, which uses transformers'
sandboxed Jinja environment; requests can never supply a template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmserve.errors import ConfigError, InvalidRequestError

# Used when neither the config nor the tokenizer has a template: role-prefixed turns.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def resolve_chat_template(override: str, tokenizer: Any) -> str:
    """The config's template (a file path or a Jinja string), else the tokenizer's, else the fallback."""
    if override:
        if is_template_text(override):
            return override
        return Path(override).expanduser().read_text(encoding="utf-8")
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    return FALLBACK_CHAT_TEMPLATE


def is_template_text(value: str) -> bool:
    """A Jinja template (it has tags or expressions) rather than the path of a template file."""
    return "{{" in value or "{%" in value


def check_chat_template(value: str, path: str) -> None:
    """A configured template must be Jinja text or an existing file (never a typo'd path used as text)."""
    if value and not is_template_text(value) and not Path(value).expanduser().is_file():
        raise ConfigError(f'{path} = "{value}": not a Jinja template and no such file')


def render_chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text for a conversation, ending with the assistant's turn header."""
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # a template's raise_exception() or a rendering error
        raise InvalidRequestError(f"the chat template rejected these messages: {_first_line(exc)}",
                                  param="messages") from None


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Prompt token ids; the template supplies the special tokens itself."""
    return list(tokenizer.encode(render_chat_prompt(tokenizer, messages), add_special_tokens=False))


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a plain completion prompt, with the tokenizer's usual special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=True))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
