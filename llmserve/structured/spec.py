"""What a request constrains its output to: a small hashable value shared by the API and the engine.

The API turns `response_format` / `structured_outputs` into a `GrammarSpec`; the engine compiles it
(through a cache keyed by the spec itself) and masks each step's logits with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

GrammarKind = Literal["json_object", "json_schema", "regex", "choice", "grammar", "structural_tag"]


@dataclass(frozen=True)
class GrammarSpec:
    """One output constraint. `source` is canonical text, so equal constraints are equal specs.

    json_object: "" (any JSON object); json_schema: the schema as compact JSON;
    regex: the pattern; choice: a JSON list of the allowed strings; grammar: EBNF (GBNF) text;
    structural_tag: xgrammar's structural-tag JSON (tool calls forced by `tool_choice`).
    """

    kind: GrammarKind
    source: str = ""

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> GrammarSpec:
        # Key order is kept: it is the order the grammar makes the properties appear in.
        return cls("json_schema", json.dumps(schema, separators=(",", ":")))

    @classmethod
    def choice(cls, options: list[str]) -> GrammarSpec:
        return cls("choice", json.dumps(list(options), separators=(",", ":")))

    @property
    def forbids_control_bytes(self) -> bool:
        """JSON answers (and forced tool calls, JSON in tags) never hold a raw byte below 0x20."""
        return self.kind in ("json_object", "json_schema", "structural_tag")

    @property
    def choices(self) -> list[str]:
        """The allowed strings of a `choice` spec."""
        return list(json.loads(self.source)) if self.kind == "choice" else []
