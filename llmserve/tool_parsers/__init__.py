"""Tool-call parsers: one module per model output format, chosen by name (worker `tool_parser`)
or from the chat template. Adding a format is one module and one line here."""

from __future__ import annotations

from llmserve.tool_parsers.base import FunctionTool, ParseDelta, ToolCallDelta, ToolParser, collect
from llmserve.tool_parsers.harmony import HarmonyToolParser
from llmserve.tool_parsers.hermes import HermesToolParser
from llmserve.tool_parsers.llama3_json import Llama3JsonToolParser
from llmserve.tool_parsers.mistral import MistralToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    HermesToolParser.name: HermesToolParser,
    MistralToolParser.name: MistralToolParser,  # before llama3_json: its marker is the surer sign
    HarmonyToolParser.name: HarmonyToolParser,
    Llama3JsonToolParser.name: Llama3JsonToolParser,
}


def tool_parser_class(name: str, chat_template: str) -> type[ToolParser] | None:
    """The parser named `name`, else ("") the first whose format the template teaches, else None."""
    if name:
        return TOOL_PARSERS[name]
    return next((cls for cls in TOOL_PARSERS.values() if cls.detect(chat_template)), None)


__all__ = ["TOOL_PARSERS", "FunctionTool", "ParseDelta", "ToolCallDelta", "ToolParser", "collect",
           "tool_parser_class"]
