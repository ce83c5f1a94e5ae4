"""A Responses API answer built as it streams: output items (reasoning, message, function_call)
opened and closed in order, each step's typed events (`response.output_text.delta`,
`response.function_call_arguments.delta`, ...), and the final response object. A non-streamed
answer is the same builder fed once, its events unused."""

from __future__ import annotations

import json
import uuid
from typing import Any

from llmserve.api.answer import AnswerDelta, AnswerSplitter
from llmserve.api.streaming import escape_line_breaks


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_object(response_id: str, created: int, echo: dict[str, Any], status: str, output: list[dict[str, Any]],
                    usage: dict[str, Any] | None, incomplete: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "created_at": created, "status": status,
            "incomplete_details": incomplete, "output": output, "usage": usage, **echo}


class ResponseEvents:
    """The output items of one response and the events that build them."""

    def __init__(self, response_id: str, created: int, echo: dict[str, Any], splitter: AnswerSplitter) -> None:
        self.response_id = response_id
        self.created = created
        self.echo = echo
        self.items: list[dict[str, Any]] = []
        self._splitter = splitter
        self._open: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}
        self._sequence = 0
        self.finish_reason: str | None = None

    def opening(self) -> list[bytes]:
        snapshot = response_object(self.response_id, self.created, self.echo, "in_progress", [], None)
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def take(self, text: str, finish_reason: str | None) -> list[bytes]:
        """One engine event's text; the finish reason once the answer ended."""
        delta = self._splitter.feed(text)
        if finish_reason is not None:
            last = self._splitter.finish()
            delta = AnswerDelta(delta.reasoning + last.reasoning, delta.content + last.content,
                                delta.tool_calls + last.tool_calls)
            self.finish_reason = finish_reason
        events: list[bytes] = []
        if delta.reasoning:
            item = self._ensure("reasoning", events)
            item["content"][0]["text"] += delta.reasoning
            events.append(self._event("response.reasoning_text.delta", item_id=item["id"],
                                      output_index=self._index(item), content_index=0, delta=delta.reasoning))
        if delta.content:
            item = self._ensure("message", events)
            item["content"][0]["text"] += delta.content
            events.append(self._event("response.output_text.delta", item_id=item["id"], output_index=self._index(item),
                                      content_index=0, delta=delta.content, logprobs=[]))
        for part in delta.tool_calls:
            if part.id is not None:
                self._close(events)
                item = {"id": _id("fc"), "type": "function_call", "status": "in_progress", "call_id": part.id,
                        "name": part.name, "arguments": ""}
                self._add(item, events)
                self._calls[part.index] = item
            item = self._calls[part.index]
            if part.arguments:
                item["arguments"] += part.arguments
                events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                          output_index=self._index(item), delta=part.arguments))
        if finish_reason is not None:
            self._close(events)
        return events

    def final(self, num_prompt: int, num_output: int) -> dict[str, Any]:
        """The finished response object."""
        incomplete = {"reason": "max_output_tokens"} if self.finish_reason == "length" else None
        usage = {"input_tokens": num_prompt, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": num_output, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": num_prompt + num_output}
        return response_object(self.response_id, self.created, self.echo,
                               "incomplete" if incomplete else "completed", self.items, usage, incomplete)

    def closing(self, num_prompt: int, num_output: int) -> bytes:
        response = self.final(num_prompt, num_output)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return self._event(kind, response=response)

    def _ensure(self, kind: str, events: list[bytes]) -> dict[str, Any]:
        if self._open is not None and self._open["type"] == kind:
            return self._open
        self._close(events)
        item: dict[str, Any]
        if kind == "message":
            item = {"id": _id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                    "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]}
        else:
            item = {"id": _id("rs"), "type": "reasoning", "summary": [],
                    "content": [{"type": "reasoning_text", "text": ""}]}
        self._add(item, events)
        if kind == "message":
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=self._index(item),
                                      content_index=0, part={**item["content"][0], "text": ""}))
        return item

    def _add(self, item: dict[str, Any], events: list[bytes]) -> None:
        self.items.append(item)
        self._open = item
        shown = {**item, "content": []} if item["type"] in ("message", "reasoning") else dict(item)
        events.append(self._event("response.output_item.added", output_index=self._index(item), item=shown))

    def _close(self, events: list[bytes]) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        index = self._index(item)
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                      content_index=0, text=part["text"], logprobs=[]))
            events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=part))
        elif item["type"] == "reasoning":
            events.append(self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                      content_index=0, text=item["content"][0]["text"]))
        else:
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, arguments=item["arguments"], name=item["name"]))
        if "status" in item:
            item["status"] = "incomplete" if self.finish_reason == "length" else "completed"
        events.append(self._event("response.output_item.done", output_index=index, item=item))

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, other in enumerate(self.items) if other is item)

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {escape_line_breaks(json.dumps(data, ensure_ascii=False))}\n\n".encode()
