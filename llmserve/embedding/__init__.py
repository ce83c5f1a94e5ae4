"""Embedding core: pooling specs, the synchronous `Embedder`, the worker's `EmbeddingEngine`
(batches inputs of concurrent requests), and OpenAI wire encoding.

The worker thread calls `Embedder.embed` with already-tokenized batches; nothing here is async.
"""

from __future__ import annotations
