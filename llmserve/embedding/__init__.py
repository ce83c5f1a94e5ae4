"""Embedding core: pooling specs, the synchronous `Embedder`, and OpenAI wire encoding.

The worker thread calls `Embedder.embed` with already-tokenized batches; nothing here is async.
"""

from __future__ import annotations
