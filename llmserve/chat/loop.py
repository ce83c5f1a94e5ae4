"""The chat loop: read a line, run a command or answer it, and show the answer as it streams."""

from __future__ import annotations

import json
from collections.abc import Iterator

from llmserve.chat.backends import ChatBackend, ChatError, ContextTooLongError, GenerationParams
from llmserve.chat.interrupt import InterruptGuard
from llmserve.chat.session import HELP_TEXT, Command, Conversation, parse_command
from llmserve.chat.ui import ChatUI


class _Reply:
    """The deltas of one answer, collected as the UI consumes them; stops at the first Ctrl-C."""

    def __init__(self, chunks: Iterator[str], guard: InterruptGuard, backend: ChatBackend) -> None:
        self._chunks = chunks
        self._guard = guard
        self._backend = backend
        self.parts: list[str] = []
        self.was_stopped = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._chunks:
                self.parts.append(chunk)
                yield chunk
                if self._guard.is_set:  # between two deltas: a safe point to stop the engine
                    self.was_stopped = True
                    self._backend.abort()
                    break
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()


class ChatLoop:
    """One terminal chat session over a backend and a UI."""

    def __init__(self, backend: ChatBackend, ui: ChatUI, conversation: Conversation,
                 params: GenerationParams, is_debug: bool = False) -> None:
        self.backend = backend
        self.ui = ui
        self.conversation = conversation
        self.params = params
        self.is_debug = is_debug

    def run(self) -> int:
        """Chat until `!!exit`, an empty line, end of input or Ctrl-C at the prompt; the exit code."""
        while True:
            try:
                line = self.ui.read_input()
            except KeyboardInterrupt:
                return 0
            if line is None or not line.strip():
                return 0
            try:
                command = parse_command(line)
            except ChatError as exc:
                self.ui.error(str(exc))
                continue
            if command is None:
                self.conversation.add_user(line)
                self.answer()
            elif not self.run_command(command):
                return 0

    def run_command(self, command: Command) -> bool:
        """Apply one `!!` command; False when the session should end."""
        conversation = self.conversation
        try:
            if command.name == "exit":
                return False
            if command.name == "reset":
                conversation.reset()
                self.ui.notice("history cleared")
            elif command.name == "remove":
                removed = conversation.remove_last_exchange()
                self.ui.notice("removed the last exchange" if removed else "nothing to remove")
            elif command.name == "regen":
                if conversation.prepare_regen():
                    self.answer()
                else:
                    self.ui.notice("nothing to regenerate")
            elif command.name == "save":
                count = conversation.save(command.argument)
                self.ui.notice(f"saved {count} messages to {command.argument}")
            elif command.name == "load":
                count = conversation.load(command.argument)
                self.ui.notice(f"loaded {count} messages from {command.argument}")
            elif command.name == "help":
                self.ui.notice(HELP_TEXT)
        except ChatError as exc:
            self.ui.error(str(exc))
        return True

    def answer(self) -> None:
        """Answer the last user message, dropping the oldest turns while the context is too small."""
        chunks = self._start()
        if chunks is None:
            return
        messages = self.conversation.messages
        with InterruptGuard() as guard:
            reply = _Reply(chunks, guard, self.backend)
            try:
                self.ui.stream_output(reply)
            except KeyboardInterrupt:  # a second Ctrl-C: the stream was stuck
                self.backend.abort()
                reply.was_stopped = True
            except ChatError as exc:
                self.ui.error(str(exc))
                self._keep(reply.text)
                return
        if reply.was_stopped:
            self.ui.notice("answer stopped")
        self._keep(reply.text)
        if self.is_debug:
            self.ui.debug(self._debug_line(messages, reply.text))

    def _start(self) -> Iterator[str] | None:
        """Send the conversation; None (user message dropped, error shown) when it cannot be answered."""
        num_dropped = 0
        while True:
            try:
                chunks = self.backend.stream_reply(self.conversation.messages, self.params)
                break
            except ContextTooLongError as exc:
                if self.conversation.drop_oldest_turn():
                    num_dropped += 1
                    continue
                self.ui.error(f"the message does not fit the context and was not kept: {exc}")
                self.conversation.remove_last_exchange()
                return None
            except ChatError as exc:
                self.ui.error(str(exc))
                self.conversation.remove_last_exchange()
                return None
        if num_dropped:
            turns = "turn" if num_dropped == 1 else f"{num_dropped} turns"
            self.ui.notice(f"the conversation no longer fits the context: dropped the oldest {turns}")
        return chunks

    def _keep(self, text: str) -> None:
        """Record the answer; an answer stopped before any text leaves no trace of the turn."""
        if text:
            self.conversation.add_assistant(text)
        else:
            self.conversation.remove_last_exchange()

    def _debug_line(self, messages: list[dict[str, str]], output: str) -> str:
        """FastChat's debug line: template, full prompt, output and speed over the generation."""
        stats = self.backend.last_stats
        speed = round(stats.tokens_per_s, 2) if stats is not None else 0.0
        return json.dumps({"conv_template": self.backend.template_name,
                           "prompt": self.backend.render_prompt(messages),
                           "outputs": output, "speed (token/s)": speed}, ensure_ascii=False)
