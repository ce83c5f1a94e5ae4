"""After the workers load, what loading made is out of the garbage collector's reach (`gc.freeze`): a
full collection set off by any request that creates many containers then walks only what requests make."""

from __future__ import annotations

import asyncio
import gc

from llmserve.app import _start_workers


class _Worker:
    def __init__(self) -> None:
        self.loaded: list[object] | None = None

    async def start(self) -> None:
        self.loaded = [{"weight": i} for i in range(10_000)]  # what a model load leaves behind


def test_objects_made_while_loading_are_frozen_after_it() -> None:
    gc.unfreeze()
    try:
        worker = _Worker()
        asyncio.run(_start_workers([worker]))  # type: ignore[list-item]
        assert gc.get_freeze_count() >= 10_000
        assert not any(obj is worker.loaded for obj in gc.get_objects())  # frozen objects are not tracked
    finally:
        gc.unfreeze()
