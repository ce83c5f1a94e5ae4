"""Chat templates: override by file or string, the tokenizer's own, a fallback, and template errors as 400."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llmserve.errors import InvalidRequestError
from llmserve.templates import FALLBACK_CHAT_TEMPLATE, encode_chat, render_chat_prompt, resolve_chat_template

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.fixture()
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_tokenizer_template_is_used_and_ends_with_the_assistant_header(tokenizer) -> None:
    tokenizer.chat_template = resolve_chat_template("", tokenizer)
    prompt = render_chat_prompt(tokenizer, MESSAGES)
    assert prompt.startswith("<|begin_of_text|>") and prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = encode_chat(tokenizer, MESSAGES)
    assert ids.count(tokenizer.bos_token_id) == 1  # the template's BOS only, no second one


def test_override_from_a_file_and_from_a_string(tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "template.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    assert resolve_chat_template(str(path), tokenizer) == path.read_text()
    inline = "{{ messages[-1]['content'] }}"
    assert resolve_chat_template(inline, tokenizer) == inline


def test_fallback_when_the_tokenizer_has_none(tokenizer) -> None:
    tokenizer.chat_template = None
    tokenizer.chat_template = resolve_chat_template("", tokenizer)
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert render_chat_prompt(tokenizer, MESSAGES) == "System: Be brief.\n\nUser: Hi\n\nAssistant:"


def test_template_errors_are_400_not_500(tokenizer) -> None:
    tokenizer.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    with pytest.raises(InvalidRequestError, match="first must be user") as err:
        render_chat_prompt(tokenizer, MESSAGES)
    assert err.value.status_code == 400 and err.value.param == "messages"


def test_templates_render_sandboxed(tokenizer) -> None:
    tokenizer.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(InvalidRequestError):
        render_chat_prompt(tokenizer, MESSAGES)


def test_a_template_path_that_does_not_exist_fails_at_start_up(tmp_path: Path) -> None:
    from llmserve.errors import ConfigError
    from llmserve.templates import check_chat_template

    check_chat_template("", "workers[0].chat_template")
    check_chat_template("{{ messages }}", "workers[0].chat_template")
    real = tmp_path / "t.jinja"
    real.write_text("{{ messages }}")
    check_chat_template(str(real), "workers[0].chat_template")
    with pytest.raises(ConfigError, match=r'workers\[0\]\.chat_template = "templates/typo.jinja": not a Jinja'):
        check_chat_template("templates/typo.jinja", "workers[0].chat_template")
