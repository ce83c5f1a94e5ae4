"""Structured output: grammar-constrained decoding (JSON object / JSON schema / regex / choice / EBNF).

`spec.py` is the request's constraint as a value; `compiler.py` compiles it for a tokenizer (cached
by spec); `decoding.py` holds each sequence's matcher and builds the batch's token mask, the one
hook an engine calls (`StructuredDecoding.token_mask`, applied by the sampler before it picks).

Why xgrammar and not llguidance. Both compile JSON Schema, regexes and grammars to token masks
and both install from PyPI on this CPU box. Measured here (one core, OMP_NUM_THREADS=1) on the
tiny model's 4096-token byte-level BPE vocabulary, a nested schema ($defs, enum, bounded array
and integer, string pattern and maxLength), 49 steps of one compact JSON answer:

    xgrammar 0.2.9   tokenizer info 7.8 ms, schema compile 1.4 ms, mask per step mean 3 us, max 73 us
    llguidance 1.9.1 tokenizer info 20 ms,  grammar + matcher 5.0 ms, mask per step mean 42 us, max 1.1 ms

The mask is on every step's critical path (it must be ready before the token is drawn), while a
compile is paid once per distinct schema and cached; xgrammar is an order of magnitude cheaper on
the path that repeats. Its one extra dependency weight (torch, already ours) costs nothing here.
"""

from __future__ import annotations

from llmserve.structured.spec import GrammarSpec

__all__ = ["GrammarSpec"]
