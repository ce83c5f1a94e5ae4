"""What a chat request asks beyond plain text, resolved once per request against its worker:
structured output (`api/structured.py`), tools (`api/tools.py`), reasoning (`llmserve/reasoning/`)
and extra template variables; then the prompt rendered with them and each choice's answer split
into reasoning, content and tool calls, whole or as SSE chunks.

`api/chat.py` calls `chat_features` after choosing the worker, encodes the prompt with
`ChatFeatures.encode`, and formats answers with `ChatFeatures.message` / `ChatFeatures.chunks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llmserve.api.answer import AnswerSplitter, tool_call_chunks, whole_answer
from llmserve.api.logprobs import chat_logprobs
from llmserve.api.streaming import ChunkFormat
from llmserve.api.structured import compile_spec, output_constraint
from llmserve.api.tools import ToolPlan, plan_tools, template_kwargs
from llmserve.engine.outputs import SequenceOutput
from llmserve.errors import InvalidRequestError
from llmserve.reasoning import ReasoningParser, reasoning_parser_class
from llmserve.structured.spec import GrammarSpec
from llmserve.templates import encode_chat, render_chat_prompt


@dataclass
class ChatFeatures:
    grammar: GrammarSpec | None
    tools: ToolPlan
    reasoning: type[ReasoningParser] | None
    template_kwargs: dict[str, Any]
    prompt_tail: str = ""  # the prompt's last tokens as text: does the template open the reasoning?

    def encode(self, tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt token ids with the template variables; a template that ignores tools is a 400."""
        if self.tools.template_tools is not None:
            without = {k: v for k, v in self.template_kwargs.items() if k != "tools"}
            if render_chat_prompt(tokenizer, messages, **self.template_kwargs) == render_chat_prompt(
                    tokenizer, messages, **without):
                raise InvalidRequestError("this model's chat template does not render tools", param="tools")
        ids = encode_chat(tokenizer, messages, **self.template_kwargs)
        self.prompt_tail = str(tokenizer.decode(ids[-8:], skip_special_tokens=False))
        return ids

    def special_text_ids(self, tokenizer: Any) -> tuple[int, ...]:
        """Ids of the special tokens the tool and reasoning parsers read, which decoding would otherwise drop."""
        wanted = {*(self.tools.parser.special_tokens if self.tools.parser is not None else ()),
                  *(self.reasoning.special_tokens if self.reasoning is not None else ())}
        if not wanted:
            return ()
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        special = {str(token): i for i, token in added.items() if getattr(token, "special", False)}
        return tuple(sorted(special[token] for token in wanted if token in special))

    def splitter(self) -> AnswerSplitter:
        return AnswerSplitter(self.reasoning, self.tools.parser, self.prompt_tail, self.tools.parallel)

    def message(self, text: str, finish_reason: str | None) -> tuple[dict[str, Any], str | None]:
        """A finished choice's `message` and `finish_reason` ("tool_calls" when it called tools)."""
        reasoning, content, calls = whole_answer(self.splitter(), text)
        message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None,
                                   "tool_calls": calls or None}
        if self.reasoning is not None:
            message["reasoning_content"] = reasoning
        return message, _finish_reason(finish_reason, bool(calls))

    def chunks(self, chunk: ChunkFormat, splitter: AnswerSplitter, index: int, output: SequenceOutput,
               token_text: Callable[[int], str] | None) -> Iterator[bytes]:
        """The SSE chunks of one engine event of choice `index` (with logprobs when `token_text`)."""
        logprobs = chat_logprobs(token_text, output.logprobs) if token_text is not None and output.logprobs else None
        if splitter.is_plain:
            if output.text or logprobs:
                yield chunk.text(index, output.text, logprobs)
        else:
            delta = splitter.feed(output.text)
            if output.finish_reason is not None:
                last = splitter.finish()
                delta.reasoning += last.reasoning
                delta.content += last.content
                delta.tool_calls += last.tool_calls
            if delta.reasoning:
                yield chunk([{"index": index, "delta": {"reasoning_content": delta.reasoning}, "logprobs": None,
                              "finish_reason": None}])
            if delta.content or logprobs:
                yield chunk.text(index, delta.content, logprobs)
            if delta.tool_calls:
                yield chunk([{"index": index, "delta": {"tool_calls": tool_call_chunks(delta.tool_calls)},
                              "logprobs": None, "finish_reason": None}])
        if output.finish_reason is not None:
            reason = _finish_reason(output.finish_reason, splitter.num_calls > 0)
            yield chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}])


def _finish_reason(reason: str | None, has_calls: bool) -> str | None:
    return "tool_calls" if has_calls and reason == "stop" else reason


async def chat_features(body: Any, worker: Any) -> ChatFeatures:
    """Resolve and check the request's features for `worker` (grammars compiled here: 400s now)."""
    constraint = output_constraint(body, body.ignore_eos)
    config = worker.config
    template = getattr(worker.tokenizer, "chat_template", None) or ""
    plan = plan_tools(body, getattr(config, "tool_parser", ""), template if isinstance(template, str) else "")
    if plan.grammar is not None and constraint is not None:
        raise InvalidRequestError("a required or named tool_choice cannot be combined with response_format or "
                                  "structured_outputs", param="tool_choice")
    if constraint is None and plan.grammar is not None:
        constraint = (plan.grammar, "tool_choice")
    if constraint is not None:
        await compile_spec(worker.engine, *constraint)
    reasoning = reasoning_parser_class(getattr(config, "reasoning_parser", ""),
                                       template if isinstance(template, str) else "")
    return ChatFeatures(constraint[0] if constraint is not None else None, plan, reasoning,
                        template_kwargs(body, plan))
