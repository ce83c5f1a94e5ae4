"""Which engine path serves a worker's model, and why: set on the engine by the builder.

"fast" is `engine/` (the paged KV cache and our attention kernels inside the model), "generic" is
`generic/` (the model's own forward with its own transformers cache), "embedding" is an embedding
worker's engine. The reason is one line for the start-up log, `/ready` and `/v1/models`, e.g. why
the fast path was not taken and what the load-time probe measured.
"""

from __future__ import annotations

from dataclasses import dataclass

FAST = "fast"
GENERIC = "generic"
EMBEDDING = "embedding"


@dataclass(frozen=True)
class ServingPath:
    """The path a worker's engine takes ("fast", "generic" or "embedding") and one line saying why."""

    name: str
    reason: str

    def describe(self) -> str:
        """"the fast path (why)", for log lines."""
        return f"the {self.name} path ({self.reason})"
