"""The in-process backend: an engine (either path) stepped in the foreground, one answer at a time."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

from llmserve.builtin_templates import BUILTIN_TEMPLATES, template_stop_strings, template_stop_token_ids
from llmserve.chat.backends import ChatError, ContextTooLongError, GenerationParams, Message, ReplyStats
from llmserve.config import WorkerConfig
from llmserve.engine.engine import LLMEngine, SequenceOutput
from llmserve.engine.request import SamplingParams
from llmserve.errors import InvalidRequestError
from llmserve.generic.engine import GenericEngine
from llmserve.templates import encode_chat, render_chat_prompt


class LocalBackend:
    """Chats with a model loaded in this process; `abort()` frees the sequence between two steps."""

    def __init__(self, engine: LLMEngine | GenericEngine, template_name: str, stop: tuple[str, ...] = (),
                 stop_token_ids: tuple[int, ...] = ()) -> None:
        self.engine = engine
        self._template_name = template_name
        # A built-in template's stop strings and tokens, added to each answer as the server adds them.
        self._stop = stop
        self._stop_token_ids = stop_token_ids
        self._seq_ids = itertools.count()
        self._active: int | None = None
        self._last_stats: ReplyStats | None = None

    @classmethod
    def load(cls, config: WorkerConfig) -> LocalBackend:
        """Load the model of `config` and build its engine (the slow part of `llmserve chat`)."""
        from llmserve.engine.builder import build_engine

        engine = build_engine(config, 0)  # the fast or the generic path: the same engine interface
        if getattr(engine, "task", "generate") == "embed":  # an embedding model: nothing to chat with
            raise ChatError(f"{config.model_path} is an embedding model; it cannot chat")
        if not engine.tokenizer.chat_template:
            raise ChatError(f"{config.model_path} ships no chat template; pick one with --chat-template "
                            f"({', '.join(BUILTIN_TEMPLATES)}, a Jinja file or string)")
        name = describe_template(config.chat_template, engine.tokenizer.chat_template, config.model_path)
        return cls(engine, name, template_stop_strings(config.chat_template),
                   template_stop_token_ids(config.chat_template, engine.tokenizer))

    @property
    def template_name(self) -> str:
        return self._template_name

    @property
    def last_stats(self) -> ReplyStats | None:
        return self._last_stats

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def render_prompt(self, messages: list[Message]) -> str:
        return render_chat_prompt(self.engine.tokenizer, messages)

    def stream_reply(self, messages: list[Message], params: GenerationParams) -> Iterator[str]:
        """Encode and check the prompt now; the returned generator steps the engine."""
        try:
            prompt_ids = encode_chat(self.engine.tokenizer, messages)
        except InvalidRequestError as exc:
            raise ChatError(exc.message) from None
        num_needed = len(prompt_ids) + params.max_new_tokens
        if num_needed > self.engine.max_model_len:
            raise ContextTooLongError(
                f"{len(prompt_ids)} prompt tokens + {params.max_new_tokens} new tokens exceed the context "
                f"of {self.engine.max_model_len} tokens")
        seq_id = next(self._seq_ids)
        sampling = SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                  top_p=params.top_p, stop=self._stop, stop_token_ids=self._stop_token_ids)
        self.engine.add(seq_id, prompt_ids, sampling)
        self._active = seq_id
        return self._generate(seq_id)

    def abort(self) -> None:
        if self._active is not None:
            self.engine.abort(self._active)
            self._active = None

    def close(self) -> None:
        self.abort()

    def _generate(self, seq_id: int) -> Iterator[str]:
        """Step until the sequence finishes or is aborted; yields each step's text (maybe empty)."""
        started = time.perf_counter()
        first_token_s: float | None = None
        num_tokens = 0
        finish_reason: str | None = None
        try:
            while self._active == seq_id:
                for output in self._step():
                    if output.seq_id != seq_id:
                        continue
                    if output.error is not None:
                        raise ChatError(f"generation failed: {output.error}")
                    num_tokens = output.num_output_tokens
                    if first_token_s is None and num_tokens:
                        first_token_s = time.perf_counter() - started
                    if output.finish_reason is not None:
                        finish_reason = output.finish_reason
                        self._active = None
                    yield output.text
        finally:
            if self._active == seq_id:  # closed early or interrupted: free the sequence
                self.abort()
            self._last_stats = ReplyStats(num_tokens, time.perf_counter() - started, first_token_s,
                                          finish_reason or "abort")

    def _step(self) -> list[SequenceOutput]:
        try:
            return self.engine.step()
        except Exception as exc:  # a failed forward: end the sequence, keep the session
            self.engine.fail(self.engine.last_scheduled, str(exc))
            self._active = None
            raise ChatError(f"generation failed: {type(exc).__name__}: {exc}") from None


def describe_template(override: str, template: str | None, model_path: str) -> str:
    """A short name for the template in use: a built-in's name, the override's file, "inline" or the model's."""
    if override in BUILTIN_TEMPLATES:
        return f"{override} (built-in)"
    if override and "{" not in override and Path(override).is_file():
        return Path(override).name
    if override:
        return "inline"
    return f"{Path(model_path.rstrip('/')).name} (tokenizer)"
