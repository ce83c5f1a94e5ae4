"""What the chat loop talks to: one interface for the in-process engine and a remote server.

A backend turns a list of OpenAI-style messages into a stream of text deltas:

    chunks = backend.stream_reply(messages, params)   # raises ContextTooLongError / ChatError now
    for delta in chunks: ...                          # text as it is generated
    backend.abort()                                   # between two deltas: stop this answer
    backend.last_stats                                # token count and timings of the last answer

`stream_reply` checks and sends the request before returning, so a prompt that does not fit the
context fails at the call (the loop then drops the oldest turn and retries), never mid-answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

Message = dict[str, str]
"""One chat message in the OpenAI format: {"role": ..., "content": ...}."""


class ChatError(Exception):
    """Something the user should read in one line: a server down, a bad file, a failed step."""


class ContextTooLongError(ChatError):
    """The conversation plus max_new_tokens does not fit the model's context."""


@dataclass(frozen=True)
class GenerationParams:
    """How each answer is sampled; the same for the local and the remote backend."""

    temperature: float = 0.7
    """Sampling temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    max_new_tokens: int = 512
    """Longest answer, in tokens."""

    def validate(self) -> None:
        """Raise ChatError naming the flag of a value out of bounds."""
        if self.temperature < 0:
            raise ChatError(f"--temperature {self.temperature}: expected >= 0")
        if not 0 < self.top_p <= 1:
            raise ChatError(f"--top-p {self.top_p}: expected a number in (0, 1]")
        if self.max_new_tokens < 1:
            raise ChatError(f"--max-new-tokens {self.max_new_tokens}: expected >= 1")


@dataclass(frozen=True)
class ReplyStats:
    """Size and timing of one answer, measured from the request to its last token."""

    num_output_tokens: int
    elapsed_s: float
    time_to_first_token_s: float | None
    finish_reason: str | None

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second over the whole generation (prefill included)."""
        return self.num_output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


class ChatBackend(Protocol):
    """A model to chat with: in-process (`LocalBackend`) or over HTTP (`RemoteBackend`)."""

    @property
    def template_name(self) -> str:
        """Which chat template renders the prompt (for --debug)."""
        ...

    @property
    def last_stats(self) -> ReplyStats | None:
        """Stats of the latest answer, complete once its stream has ended or been aborted."""
        ...

    def render_prompt(self, messages: list[Message]) -> str:
        """The full prompt the model sees for `messages` (for --debug)."""
        ...

    def stream_reply(self, messages: list[Message], params: GenerationParams) -> Iterator[str]:
        """Start an answer to `messages`; iterate for its text deltas (some may be empty)."""
        ...

    def abort(self) -> None:
        """Stop the answer being streamed; the stream then ends. A no-op when none runs."""
        ...

    def close(self) -> None:
        """Release the model or the connection."""
        ...
