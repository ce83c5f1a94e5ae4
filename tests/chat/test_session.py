"""Tests of llmserve/chat/session.py: commands, history edits, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmserve.chat.backends import ChatError
from llmserve.chat.session import Command, Conversation, parse_command


def chat(*turns: tuple[str, str], system: str | None = None) -> Conversation:
    conversation = Conversation(system)
    for user, assistant in turns:
        conversation.add_user(user)
        conversation.add_assistant(assistant)
    return conversation


def test_parse_command() -> None:
    assert parse_command("hello !!exit") is None
    assert parse_command("  !!exit ") == Command("exit")
    assert parse_command("!!save my chat.json") == Command("save", "my chat.json")
    with pytest.raises(ChatError, match="unknown command '!!nope'"):
        parse_command("!!nope")
    with pytest.raises(ChatError, match="!!load needs a file name"):
        parse_command("!!load")


def test_messages_put_the_system_message_first() -> None:
    conversation = chat(("hi", "hello"), system="be brief")
    assert conversation.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": "hello"}]
    conversation.reset()
    assert conversation.messages == [{"role": "system", "content": "be brief"}]


def test_remove_regen_and_drop_oldest() -> None:
    conversation = chat(("a", "A"), ("b", "B"), ("c", "C"))
    assert conversation.remove_last_exchange() and conversation.num_turns == 2
    assert conversation.prepare_regen()
    assert conversation.history[-1] == {"role": "user", "content": "b"}
    assert conversation.drop_oldest_turn()
    assert conversation.history == [{"role": "user", "content": "b"}]
    assert not conversation.drop_oldest_turn()  # the message being answered is never dropped
    assert Conversation().remove_last_exchange() is False
    assert Conversation().prepare_regen() is False


def test_no_history_keeps_only_the_last_exchange() -> None:
    conversation = Conversation(keep_history=False)
    for text in ("a", "b"):
        conversation.add_user(text)
        conversation.add_assistant(text.upper())
    conversation.add_user("c")
    assert conversation.history == [{"role": "user", "content": "c"}]


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    original = chat(("hi", "hello ✓"), system="sys")
    assert original.save(path) == 3
    loaded = Conversation(system="other")
    assert loaded.load(path) == 3
    assert loaded.messages == original.messages and loaded.system == "sys"


@pytest.mark.parametrize(("content", "error"), [
    ("not json", "is not JSON"),
    ('{"role": "user"}', "expected a JSON array"),
    ('[{"role": "robot", "content": "x"}]', "message 0 must be"),
    ('[{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]', "only the first message"),
])
def test_load_rejects_bad_files(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    conversation = chat(("keep", "me"))
    with pytest.raises(ChatError, match=error):
        conversation.load(path)
    assert conversation.num_turns == 1  # a failed load changes nothing
    with pytest.raises(ChatError, match="cannot read"):
        conversation.load(tmp_path / "missing.json")


def test_save_reports_unwritable_paths(tmp_path: Path) -> None:
    with pytest.raises(ChatError, match="cannot write"):
        chat(("a", "b")).save(tmp_path / "no-dir" / "chat.json")
    assert json.loads(json.dumps(chat().messages)) == []
