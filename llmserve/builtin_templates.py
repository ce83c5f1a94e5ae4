"""Named chat templates for checkpoints that ship none: FastChat's conversation formats as Jinja.

`chat_template = "vicuna_v1.1"` (FastChat's `--conv-template vicuna_v1.1`) picks one. Each renders
the prompt FastChat 0.2.36's `Conversation.get_prompt()` builds for the same messages through its
OpenAI API server: a system message replaces the template's default one (the last one wins),
user and assistant turns are laid out by their position as FastChat does, and the generation
prompt is the assistant's tag. The templates are written here as Jinja and render in
transformers' sandboxed environment like any tokenizer's template.

FastChat tokenizes its prompt with the tokenizer's own special tokens (Llama's `<s>`, ChatGLM's
`[gMASK]sop`), while llmserve's chat prompts carry theirs in the template; so a built-in template
starts with whatever the tokenizer adds in front of a text by default. Stop conditions FastChat
attaches to a template (zero_shot's "###", ChatML's `<|im_end|>`) come with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# The system message, as FastChat takes it: the template's default unless the messages carry one.
_SYSTEM = (
    "{%- set ns = namespace(system=DEFAULT) -%}"
    "{%- for m in messages if m['role'] == 'system' -%}{%- set ns.system = m['content'] -%}{%- endfor -%}"
    "{%- set turns = messages | rejectattr('role', 'equalto', 'system') | list -%}"
    "{%- for m in turns if m['role'] not in ('user', 'assistant') -%}"
    "{{- raise_exception('unknown role: ' ~ m['role']) -}}"
    "{%- endfor -%}"
)


def _system(default: str) -> str:
    return _SYSTEM.replace("DEFAULT", json.dumps(default))


def _colon_template(default_system: str, roles: tuple[str, str], seps: tuple[str, str]) -> str:
    """FastChat's ADD_COLON_SINGLE / ADD_COLON_TWO: `system SEP` then `ROLE: text SEP` per turn,
    the separator alternating by position, and `ASSISTANT:` as the generation prompt."""
    user, assistant = (json.dumps(r) for r in roles)
    sep_even, sep_odd = (json.dumps(s) for s in seps)
    return (
        _system(default_system)
        + f"{{{{- ns.system ~ {sep_even} -}}}}"
        + "{%- for m in turns -%}"
        + f"{{{{- ({user} if m['role'] == 'user' else {assistant}) ~ ': ' ~ m['content'] -}}}}"
        + f"{{{{- {sep_even} if loop.index0 % 2 == 0 else {sep_odd} -}}}}"
        + "{%- endfor -%}"
        + f"{{%- if add_generation_prompt -%}}{{{{- {assistant} ~ ':' -}}}}{{%- endif -%}}"
    )


# FastChat's LLAMA2 style: the first user turn shares the [INST] of the system block.
_LLAMA2 = (
    _system("")
    + "{%- if ns.system -%}{{- '[INST] <<SYS>>\\n' ~ ns.system ~ '\\n<</SYS>>\\n\\n' -}}"
    + "{%- else -%}{{- '[INST] ' -}}{%- endif -%}"
    + "{%- for m in turns -%}"
    + "{%- if loop.first -%}{{- m['content'] ~ ' ' -}}"
    + "{%- elif loop.index0 % 2 == 1 -%}{{- '[/INST] ' ~ m['content'] ~ ' </s><s>' -}}"
    + "{%- else -%}{{- '[INST] ' ~ m['content'] ~ ' ' -}}{%- endif -%}"
    + "{%- endfor -%}"
    + "{%- if add_generation_prompt -%}{{- '[/INST]' if turns | length % 2 == 1 else '[INST]' -}}{%- endif -%}"
)

# FastChat's CHATGLM style as named "chatglm2": rounds counted from 1 by position, full-width colons.
_CHATGLM2 = (
    _system("")
    + "{%- if ns.system -%}{{- ns.system ~ '\\n\\n' -}}{%- endif -%}"
    + "{%- for m in turns -%}"
    + "{%- if loop.index0 % 2 == 0 -%}{{- '[Round ' ~ (loop.index0 // 2 + 1) ~ ']\\n\\n' -}}{%- endif -%}"
    + "{{- ('问' if m['role'] == 'user' else '答') ~ '：' ~ m['content'] ~ '\\n\\n' -}}"
    + "{%- endfor -%}"
    + "{%- if add_generation_prompt -%}"
    + "{%- if turns | length % 2 == 0 -%}{{- '[Round ' ~ (turns | length // 2 + 1) ~ ']\\n\\n' -}}{%- endif -%}"
    + "{{- '答：' -}}"
    + "{%- endif -%}"
)

# FastChat's CHATML style (its MPT, OpenOrca and Qwen-like templates) with no default system message.
_CHATML = (
    _system("")
    + "{%- if ns.system -%}{{- '<|im_start|>system\\n' ~ ns.system ~ '<|im_end|>\\n' -}}{%- endif -%}"
    + "{%- for m in turns -%}"
    + "{{- '<|im_start|>' ~ m['role'] ~ '\\n' ~ m['content'] ~ '<|im_end|>\\n' -}}"
    + "{%- endfor -%}"
    + "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_ZERO_SHOT_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                     "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                  "Write a response that appropriately completes the request.")


@dataclass(frozen=True)
class BuiltinTemplate:
    """A named conversation format: its Jinja text and the stops FastChat attaches to it."""

    name: str
    jinja: str
    stop: tuple[str, ...] = ()
    """Stop strings added to every chat request served with this template."""
    stop_tokens: tuple[str, ...] = ()
    """Tokens that end the answer when the tokenizer has them as single tokens."""


BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {t.name: t for t in (
    BuiltinTemplate("vicuna_v1.1", _colon_template(_VICUNA_SYSTEM, ("USER", "ASSISTANT"), (" ", "</s>"))),
    BuiltinTemplate("alpaca", _colon_template(_ALPACA_SYSTEM, ("### Instruction", "### Response"), ("\n\n", "</s>"))),
    BuiltinTemplate("zero_shot", _colon_template(_ZERO_SHOT_SYSTEM, ("Human", "Assistant"), ("\n### ", "\n### ")),
                    stop=("###",)),
    BuiltinTemplate("llama-2", _LLAMA2),
    BuiltinTemplate("chatglm2", _CHATGLM2),
    BuiltinTemplate("chatml", _CHATML, stop=("<|im_end|>",), stop_tokens=("<|im_end|>",)),
)}


def builtin_template_text(name: str, tokenizer: Any) -> str:
    """The Jinja of template `name`, led by the special tokens the tokenizer puts before a text."""
    prefix = default_prefix(tokenizer)
    lead = "{% raw %}" + prefix + "{% endraw %}" if prefix else ""
    return lead + BUILTIN_TEMPLATES[name].jinja


def default_prefix(tokenizer: Any) -> str:
    """The text of the special tokens `tokenizer` adds in front of a text by default ("" if none)."""
    plain = list(tokenizer.encode("a", add_special_tokens=False))
    full = list(tokenizer.encode("a", add_special_tokens=True))
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return str(tokenizer.decode(full[:start])) if start else ""
    return ""


def template_stop_token_ids(name: str, tokenizer: Any) -> tuple[int, ...]:
    """Ids of template `name`'s stop tokens that the tokenizer has as single tokens."""
    template = BUILTIN_TEMPLATES.get(name)
    if template is None:
        return ()
    ids = []
    for token in template.stop_tokens:
        encoded = list(tokenizer.encode(token, add_special_tokens=False))
        if len(encoded) == 1:
            ids.append(int(encoded[0]))
    return tuple(ids)


def template_stop_strings(name: str) -> tuple[str, ...]:
    """Stop strings of template `name` (none for a template that is not built in)."""
    template = BUILTIN_TEMPLATES.get(name)
    return template.stop if template is not None else ()
