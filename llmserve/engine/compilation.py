"""torch.compile of the model's step forward, for the CUDA-graph path.

Eagerly, a stock Hugging Face Llama launches ~41 kernels per layer (RMSNorm, RoPE, SiLU * up and
the residual adds each in several pieces), so replaying a captured decode graph of a 16-layer 1B
model costs 2.35 ms on an H100 where reading the weights takes 0.82 ms. Inductor fuses those
elementwise ops; the CUDA graphs then capture the compiled forward instead of the eager one.

The whole forward compiles as one graph (`fullgraph`), with nothing special asked of the model:
attention and the cache write are custom ops (see `hf_attention.py`), `use_cache=False` creates no
Cache object, our attention implementation has no mask function so transformers builds no mask, and
`logits_to_keep` is a tensor of rows (an index, not a Python slice).

Shapes are dynamic (`dynamic=True`), so one graph serves every token count T >= 2 and batch size B,
decode and mixed steps alike, and `max_seqlen_q` is a symbolic int. T = 1 (a decode of one sequence)
gets a second graph, because torch specialises sizes 0 and 1: two compiles per model and input
dtype. What keeps it at two (each applied only around our calls, not set globally):

- the KV-cache tensors are marked static: their shapes never change, and symbolic strides of the
  `[2, ...]` layer views trip inductor;
- duck sizing is off: otherwise two sizes equal on the first call (T and the storage offset of a
  view into StepGraphs' packed input buffer, or B and the block size) are assumed equal for good
  and most other shapes recompile;
- float module attributes (RMSNorm's eps, the embedding's norm_type) stay constants: made symbolic
  by `dynamic=True`, they would make dynamo trace every graph twice;
- the recompile limit is raised: dynamo counts compiled graphs per code object, and the model's
  forward is a transformers decorator's wrapper whose code object every worker's model in the
  process shares (each on its own device compiles its own two graphs): the default limit of 8
  would fail the fifth worker's compile.

Compiling happens at the first call of each shape class. `CompiledForward.warm_up` makes that call
outside any CUDA-graph capture and, when compiling fails (a model dynamo cannot trace in one graph,
an inductor error), logs why and runs the model eagerly from then on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx.experimental._config as fx_config

from llmserve.engine.hf_attention import META_KWARG, AttentionMetadata
from llmserve.engine.kv_cache import KVCache

log = logging.getLogger(__name__)


def _is_compile_error(exc: BaseException) -> bool:
    """Whether compiling (not the compiled model) raised `exc`: dynamo's own errors, inductor's
    lowering errors. Imported here, not at module level: dynamo's import costs ~2 s in every process
    that loads the engine (and it is loaded by the time a compile has failed)."""
    import torch._dynamo.exc
    import torch._inductor.exc

    return isinstance(exc, (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError))

_RECOMPILE_LIMIT = 64  # graphs per code object: two per worker model, see the module docstring


def compile_model_forward(model: torch.nn.Module, backend: str | Callable[..., Any] = "inductor",
                          fullgraph: bool = True, skip_module_guards: bool = False) -> Callable[..., Any]:
    """`model(...)` compiled for every step shape: same keywords (input_ids, position_ids, use_cache,
    logits_to_keep, llmserve_attention), same output. Compiles lazily, at the first call of a shape class.

    `skip_module_guards` drops dynamo's checks of the model's modules and parameters before each call
    (~80 us of a ~1.3 ms CPU step on a 4-layer model): for a forward called at every step, not only
    under a CUDA graph capture. The served model's modules never change after load, so the checks
    can only ever pass."""
    options: dict[str, str | int | bool | Callable[..., Any]] | None = None
    if skip_module_guards:
        options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    compiled = torch.compile(model, backend=backend, dynamic=True, fullgraph=fullgraph, options=options)

    def forward(**inputs: Any) -> Any:
        meta: AttentionMetadata = inputs[META_KWARG]
        _mark_cache_static(meta.kv_cache)
        with _dynamo_settings(size_oblivious=skip_module_guards):
            return compiled(**inputs)

    return forward


@contextlib.contextmanager
def _dynamo_settings(size_oblivious: bool = False) -> Iterator[None]:
    """The settings of the module docstring, while one call (and any compile it triggers) runs."""
    with (
        fx_config.patch(use_duck_shape=False, backed_size_oblivious=size_oblivious),  # type: ignore[attr-defined]  # added by install_config_module
        torch._dynamo.config.patch(specialize_float=True, recompile_limit=_RECOMPILE_LIMIT),
    ):
        yield


def _mark_cache_static(kv_cache: KVCache) -> None:
    """Keep the cache's shapes out of the dynamic ones (marking twice is harmless)."""
    for layer_idx in range(kv_cache.spec.num_layers):
        torch._dynamo.mark_static(kv_cache.layer_kv(layer_idx))


class CompiledForward:
    """The forward the CUDA graphs capture: compiled, or the model itself once compiling has failed.

    Call `warm_up(**inputs)` once per step shape outside any capture (it compiles that shape and
    falls back to eager on failure), then call the object itself inside the capture.
    """

    def __init__(self, model: torch.nn.Module, backend: str | Callable[..., Any] = "inductor",
                 skip_module_guards: bool = False) -> None:
        self.model = model
        self._compiled: Callable[..., Any] | None = compile_model_forward(model, backend,
                                                                          skip_module_guards=skip_module_guards)

    @property
    def is_compiled(self) -> bool:
        """Whether calls run the compiled forward (False after a failed warm-up)."""
        return self._compiled is not None

    def warm_up(self, **inputs: Any) -> Any:
        """One call with these inputs, compiling their shape; if that fails, log why and go eager for good."""
        if self._compiled is not None:
            try:
                return self._compiled(**inputs)
            except Exception:  # dynamo and inductor raise many types; eager re-raises any real error
                log.warning("torch.compile of %s failed; running it eagerly", type(self.model).__name__,
                            exc_info=True)
                self._compiled = None
        return self.model(**inputs)

    def __call__(self, **inputs: Any) -> Any:
        """The step's forward; no compile should be left to happen here (call `warm_up` first)."""
        if self._compiled is None:
            return self.model(**inputs)
        return self._compiled(**inputs)

    def run(self, **inputs: Any) -> Any:
        """The step's forward outside any capture, where a shape may still compile: a failure of
        dynamo or inductor (not of the model's own code, which raises as it would eagerly) logs why
        and runs the model eagerly from then on."""
        if self._compiled is not None:
            try:
                return self._compiled(**inputs)
            except Exception as exc:
                if not _is_compile_error(exc):
                    raise
                log.warning("torch.compile of %s failed; running it eagerly", type(self.model).__name__,
                            exc_info=True)
                self._compiled = None
        return self.model(**inputs)
