"""Tests of llmserve/chat/loop.py over a scripted backend: trimming, errors, Ctrl-C, commands."""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Iterator

from llmserve.chat.backends import ChatError, ContextTooLongError, GenerationParams, Message, ReplyStats
from llmserve.chat.loop import ChatLoop
from llmserve.chat.session import Conversation
from llmserve.chat.ui import SimpleUI


class ScriptedBackend:
    """Answers "<n>:<last message>" piece by piece; refuses conversations longer than `max_messages`."""

    template_name = "scripted"

    def __init__(self, max_messages: int = 100, interrupt_after: int | None = None,
                 fail_with: str | None = None) -> None:
        self.max_messages = max_messages
        self.interrupt_after = interrupt_after
        self.fail_with = fail_with
        self.sent: list[list[Message]] = []
        self.num_aborts = 0
        self.last_stats: ReplyStats | None = None

    def render_prompt(self, messages: list[Message]) -> str:
        return "|".join(m["content"] for m in messages)

    def stream_reply(self, messages: list[Message], params: GenerationParams) -> Iterator[str]:
        if len(messages) > self.max_messages:
            raise ContextTooLongError(f"{len(messages)} messages")
        if self.fail_with:
            raise ChatError(self.fail_with)
        self.sent.append(messages)
        return self._words(f"{len(self.sent)}:{messages[-1]['content']}")

    def _words(self, text: str) -> Iterator[str]:
        for i, word in enumerate(text.split(":")):
            if i == self.interrupt_after and len(self.sent) == 1:
                os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C now
            yield word if i == 0 else ":" + word
        self.last_stats = ReplyStats(2, 0.5, 0.1, "stop")

    def abort(self) -> None:
        self.num_aborts += 1

    def close(self) -> None:
        pass


def run(backend: ScriptedBackend, text: str, conversation: Conversation | None = None,
        is_debug: bool = False) -> tuple[str, str, Conversation]:
    stdout, stderr = io.StringIO(), io.StringIO()
    ui = SimpleUI(is_interactive=False, stdin=io.StringIO(text), stdout=stdout, stderr=stderr)
    conversation = conversation or Conversation()
    assert ChatLoop(backend, ui, conversation, GenerationParams(), is_debug).run() == 0
    return stdout.getvalue(), stderr.getvalue(), conversation


def test_answers_each_line_until_an_empty_one() -> None:
    out, err, conversation = run(ScriptedBackend(), "a\nb\n\nnever\n")
    assert out == "1:a\n2:b\n" and err == ""
    assert [m["content"] for m in conversation.messages] == ["a", "1:a", "b", "2:b"]


def test_oldest_turns_go_when_the_context_is_full() -> None:
    backend = ScriptedBackend(max_messages=3)
    out, err, conversation = run(backend, "a\nb\nc\nd\n")
    assert out == "1:a\n2:b\n3:c\n4:d\n"
    assert err.count("[the conversation no longer fits the context: dropped the oldest turn]") == 2
    assert [m["content"] for m in backend.sent[-1]] == ["c", "3:c", "d"]


def test_a_message_too_long_alone_is_refused_and_the_session_goes_on() -> None:
    conversation = Conversation(system="s")
    out, err, _ = run(ScriptedBackend(max_messages=1), "a\n", conversation)
    assert out == "" and "error: the message does not fit the context and was not kept: 2 messages" in err
    assert conversation.history == []


def test_backend_errors_are_shown_and_the_message_dropped() -> None:
    out, err, conversation = run(ScriptedBackend(fail_with="server down"), "a\n!!regen\n")
    assert err == "error: server down\n[nothing to regenerate]\n" and conversation.history == []


def test_ctrl_c_stops_the_answer_at_the_next_delta() -> None:
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a run started with `&`
    backend = ScriptedBackend(interrupt_after=0)
    out, err, conversation = run(backend, "a:b:c\nd\n")
    assert out == "1\n2:d\n" and err == "[answer stopped]\n" and backend.num_aborts == 1
    assert [m["content"] for m in conversation.messages] == ["a:b:c", "1", "d", "2:d"]
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_unknown_commands_and_debug_line() -> None:
    out, err, _ = run(ScriptedBackend(), "!!bogus\n!!help\nx\n", is_debug=True)
    assert err.startswith("error: unknown command '!!bogus'") and "[commands: !!exit" in err
    assert out == '1:x\n{"conv_template": "scripted", "prompt": "x", "outputs": "1:x", "speed (token/s)": 4.0}\n'
