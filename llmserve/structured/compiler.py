"""Grammar compilation for one tokenizer, with a bounded cache keyed by the spec.

Compiling turns a `GrammarSpec` into xgrammar's `CompiledGrammar`: the grammar plus, for each of
its states, which vocabulary tokens can follow. The cost is paid once per distinct schema (a
request repeating a schema, as every agent framework does, hits the cache). The API compiles a
request's spec before submitting it, so an invalid schema is a 400 and the engine's compile is a
cache hit. Thread-safe: the event loop's helper threads and the engine thread share one compiler.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

import torch

from llmserve.errors import InvalidRequestError
from llmserve.structured.spec import GrammarSpec

# JSON is produced compact (no optional whitespace): a weak or random model allowed free
# whitespace can pad forever inside an object and run out of tokens before closing it.
_SEPARATORS = (",", ":")


class GrammarCompiler:
    """Compiles specs against one tokenizer's vocabulary; xgrammar is imported on first use."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: frozenset[int],
                 max_cached: int = 256) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(stop_token_ids)
        self.max_cached = max_cached
        self._cache: OrderedDict[GrammarSpec, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._compiler: Any = None
        self._info: Any = None
        self._json_safe: torch.Tensor | None = None

    def compile(self, spec: GrammarSpec, param: str = "response_format") -> Any:
        """The compiled grammar of `spec` (cached); an invalid one is an `InvalidRequestError`."""
        with self._lock:
            compiled = self._cache.get(spec)
            if compiled is not None:
                self._cache.move_to_end(spec)
                return compiled
            compiler = self._xgrammar_compiler()
        compiled = _compile(compiler, spec, param)  # outside the lock: compiles may run in parallel
        with self._lock:
            self._cache[spec] = compiled
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return compiled

    @property
    def num_cached(self) -> int:
        return len(self._cache)

    def json_safe_words(self) -> torch.Tensor:
        """[W] int32 bitmask of the tokens JSON output may use at all: none with a raw control byte.

        xgrammar's JSON string rule lets raw bytes 0x00-0x1f through, which JSON forbids (they must
        be escaped); compact JSON has no whitespace outside strings, so such a token never fits.
        Stop tokens stay allowed.
        """
        with self._lock:
            if self._json_safe is None:
                self._xgrammar_compiler()
                vocab = self._info.decoded_vocab
                stop = set(self.stop_token_ids)
                safe = [i in stop or (i < len(vocab) and not any(b < 0x20 for b in vocab[i]))
                        for i in range(self.vocab_size)]
                self._json_safe = pack_bits(torch.tensor(safe, dtype=torch.bool))
            return self._json_safe

    def _xgrammar_compiler(self) -> Any:
        if self._compiler is None:
            import xgrammar

            info = self._info = xgrammar.TokenizerInfo.from_huggingface(
                self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids)
            # xgrammar's own cache is off: ours is keyed by spec and bounded by count.
            self._compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        return self._compiler


def _compile(compiler: Any, spec: GrammarSpec, param: str) -> Any:
    try:
        if spec.kind == "json_object":
            return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False,
                                                separators=_SEPARATORS, strict_mode=False)
        if spec.kind == "json_schema":
            return compiler.compile_json_schema(spec.source, any_whitespace=False, separators=_SEPARATORS)
        if spec.kind == "regex":
            return compiler.compile_regex(spec.source)
        if spec.kind == "choice":
            return compiler.compile_regex("|".join(re.escape(option) for option in spec.choices))
        if spec.kind == "structural_tag":
            return compiler.compile_structural_tag(spec.source)
        return compiler.compile_grammar(spec.source)
    except Exception as exc:  # xgrammar raises RuntimeError / ValueError with the reason
        raise InvalidRequestError(f"cannot use this {_what(spec)}: {_reason(exc)}", param=param) from None


def _what(spec: GrammarSpec) -> str:
    return {"json_object": "JSON object format", "json_schema": "JSON schema", "regex": "regular expression",
            "choice": "choice list", "grammar": "grammar", "structural_tag": "tool definition"}[spec.kind]


def _reason(exc: Exception) -> str:
    """xgrammar's message without its source locations, one line, bounded."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    # xgrammar prefixes "[hh:mm:ss] /its/source.cc:123: "; error bodies carry no source paths.
    text = re.sub(r"^(\[[^\]]*\]\s*)?\S*\.(cc|h|hpp|py):\d+:?\s*", "", text)
    text = re.sub(r"\[[^\]]*\.(cc|h|hpp|py):\d+\]\s*", "", text)
    return text[:300]


def check_json_schema(schema: object, param: str) -> dict[str, Any]:
    """A JSON schema must be a JSON object (a dict) that serialises; anything else is a 400."""
    if not isinstance(schema, dict):
        raise InvalidRequestError("the JSON schema must be an object", param=param)
    try:
        json.dumps(schema)
    except (TypeError, ValueError):
        raise InvalidRequestError("the JSON schema is not serialisable JSON", param=param) from None
    return schema


def pack_bits(allowed: torch.Tensor) -> torch.Tensor:
    """[V] bool -> [ceil(V / 32)] int32, bit j of word w for token 32 * w + j (xgrammar's layout)."""
    padded = torch.zeros((allowed.numel() + 31) // 32 * 32, dtype=torch.int64)
    padded[: allowed.numel()] = allowed.long()
    words = (padded.view(-1, 32) << torch.arange(32)).sum(dim=1)  # [W] in [0, 2**32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
