"""The model-family matrix (issue 14): every stock class in `llmserve.tiny.families` and a
remote-code model (`llmserve.tiny.remote_code`), served by the worker's engine builder, answer as
the model itself does.

For each family a tiny random-weight model (float32) serves a mixed batch: four prompts at once, three
of them several sliding windows long, prefilled in chunks of 32 tokens over blocks of 8, and then the
same batch again (prefix-cache hits on the fast path). Its greedy tokens must equal
`model.generate`'s, each token's logprob must be within 1e-4 of the log_softmax of the model's own
(eager) forward over the same tokens, the path the builder chose (fast or generic) must be the one
`EXPECTED_PATH` names, and a windowed model's context must be its own, not its window. The features that make a family special (soft-caps, sinks, sliding
windows) are shown to change the model's own answer on these prompts when switched off, so
agreement with them on proves they are served, not ignored.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_engine
from llmserve.engine.request import SamplingParams
from llmserve.tiny.families import FAMILIES, build_family_model

LOGPROB_TOLERANCE = 1e-4  # float32
MAX_TOKENS = 12
NUM_PASSES = 2
MAX_STEPS = 1000
SEED = 1
# One short prompt and three of ~100-160 tokens: several times every family's sliding window (16-32).
PROMPTS = (
    "def f(x):",
    "import os\nimport sys\n\n\ndef main(argv):\n    for name in sorted(os.listdir(argv[1])):\n"
    "        path = os.path.join(argv[1], name)\n        if os.path.isdir(path):\n"
    "            print(name + '/')\n        else:\n            print(name, os.path.getsize(path))\n"
    "    return 0\n\n\nif __name__ == '__main__':\n    sys.exit(main(sys.argv))\n",
    "class Stack:\n    \"\"\"A last-in, first-out list of items.\"\"\"\n\n    def __init__(self):\n"
    "        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n"
    "    def pop(self):\n        if not self.items:\n            raise IndexError('pop from empty stack')\n"
    "        return self.items.pop()\n\n    def __len__(self):\n        return len(self.items)",
    "The quick brown fox jumps over the lazy dog. " * 8,
)

# The path each family must take: the fast path for every class it can serve; the generic path
# (the model's own forward and cache) for state-space and hybrid models and for classes whose
# attention does not go through transformers' attention interface (Bloom, Falcon), where the paged
# attention cannot be installed.
REMOTE_CODE = "remote_code"  # llmserve.tiny.remote_code: own attention over a DynamicCache (ChatGLM's pattern)
MATRIX = [*sorted(FAMILIES), REMOTE_CODE]
EXPECTED_PATH = {family: "fast" for family in FAMILIES} | dict.fromkeys(
    ("bloom", "falcon", "mamba", "granitemoehybrid", REMOTE_CODE), "generic")


def _window_families() -> list[str]:
    """The families with sliding-window layers, whose context must not shrink to the window."""
    return sorted(f for f, spec in FAMILIES.items() if spec.config.get("sliding_window"))


# Checks that fail because a piece of issue 14 has not landed: (family, check) -> the piece, as a
# strict xfail (it fails the moment the piece lands, and is then removed here). None today.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def _cases(check: str, families: list[str] | None = None) -> list[Any]:
    return [pytest.param(family, id=family, marks=_gap_marks(family, check))
            for family in families or MATRIX]


def _gap_marks(family: str, check: str) -> list[pytest.MarkDecorator]:
    reason = KNOWN_GAPS.get((family, check))
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


@dataclass
class Reference:
    """What the model itself answers: greedy tokens from `generate`."""

    prompt_ids: list[list[int]]
    tokens: list[list[int]]


@dataclass
class Served:
    """What the engine built by the worker's builder answered (or why it could not): per pass over
    the prompts, each prompt's tokens and their logprobs."""

    engine: Any
    tokens: list[list[list[int]]]
    logprobs: list[list[list[float]]]
    error: str | None

    def check(self) -> None:
        if self.error is not None:
            pytest.fail(self.error, pytrace=False)


@pytest.fixture(scope="module")
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_dir(family: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if family == REMOTE_CODE:
        from llmserve.tiny.remote_code import build_remote_code_model

        return build_remote_code_model(tiny_model_dir, tmp_path_factory.mktemp(family), seed=SEED)
    return build_family_model(family, tiny_model_dir, tmp_path_factory.mktemp(family), seed=SEED)


def load_reference(model_dir: Path, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model as the reference: float32, transformers' eager attention (the one that honours every
    config feature: before 5.2x, Gemma 2 under sdpa dropped its soft-cap)."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager",
                                                trust_remote_code=trust_remote_code).eval()


@pytest.fixture(scope="module")
def model(family: str, model_dir: Path) -> PreTrainedModel:
    return load_reference(model_dir, trust_remote_code=family == REMOTE_CODE)


@pytest.fixture(scope="module")
def reference(model_dir: Path, model: PreTrainedModel) -> Reference:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = [tokenizer.encode(text) for text in PROMPTS]
    return Reference(prompt_ids, [greedy(model, ids) for ids in prompt_ids])


@pytest.fixture(scope="module")
def served(family: str, model_dir: Path, reference: Reference) -> Served:
    """The prompts served twice, one batch after the other: the second finds them in the prefix cache."""
    config = WorkerConfig(model_path=str(model_dir), dtype="float32", kv_cache_tokens=4096, block_size=8,
                          max_num_batched_tokens=32, trust_remote_code=family == REMOTE_CODE)
    engine = None
    served = Served(engine, [], [], None)
    try:
        served.engine = engine = build_engine(config, 0)
        for first_id in range(0, NUM_PASSES * len(PROMPTS), len(PROMPTS)):
            tokens, logprobs = serve_batch(engine, reference.prompt_ids, first_id)
            served.tokens.append(tokens)
            served.logprobs.append(logprobs)
    except Exception:  # reported by each check that needs the run, with its traceback
        served.error = traceback.format_exc(limit=-6)
    return served


def serve_batch(engine: Any, prompt_ids: list[list[int]], first_id: int) -> tuple[list[list[int]], list[list[float]]]:
    """All prompts added at once, stepped until done: each one's greedy tokens and their logprobs."""
    tokens: dict[int, list[int]] = {first_id + i: [] for i in range(len(prompt_ids))}
    logprobs: dict[int, list[float]] = {first_id + i: [] for i in range(len(prompt_ids))}
    for seq_id, ids in enumerate(prompt_ids, start=first_id):
        engine.add(seq_id, ids, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=0))
    for _ in range(MAX_STEPS):
        if not engine.has_work:
            break
        for out in engine.step():
            assert out.error is None, out.error
            tokens[out.seq_id] += out.token_ids
            logprobs[out.seq_id] += [entry.logprob for entry in out.logprobs]
    assert not engine.has_work, f"the engine did not finish in {MAX_STEPS} steps"
    return list(tokens.values()), list(logprobs.values())


def greedy(model: PreTrainedModel, prompt_ids: list[int]) -> list[int]:
    """The model's own greedy continuation of `prompt_ids` (`generate`, stopping at its EOS)."""
    with torch.inference_mode():
        # (typed through nn.Module.__getattr__ as a Tensor: the CausalLM classes mix `generate` in)
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=MAX_TOKENS, do_sample=False)  # type: ignore[operator]
    return out[0, len(prompt_ids):].tolist()


def forward_logprobs(model: PreTrainedModel, prompt_ids: list[int], tokens: list[int]) -> list[float]:
    """log_softmax of the model's own forward over prompt + tokens, at each of `tokens`."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + tokens])).logits[0].float()  # [T, V]
    rows = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(tokens)].log_softmax(-1)  # [N, V]
    return rows.gather(-1, torch.tensor(tokens)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("family", _cases("path"), indirect=True)
def test_the_builder_chooses_the_expected_path(family: str, served: Served) -> None:
    if served.engine is None:
        served.check()
    path = served.engine.serving_path
    assert path.name == EXPECTED_PATH[family], path.reason


@pytest.mark.parametrize("family", _cases("tokens"), indirect=True)
def test_greedy_tokens_match_generate(family: str, reference: Reference, served: Served) -> None:
    served.check()
    assert served.tokens == [reference.tokens] * NUM_PASSES


@pytest.mark.parametrize("family", _cases("logprobs"), indirect=True)
def test_logprobs_match_the_models_forward(family: str, model: PreTrainedModel, reference: Reference,
                                           served: Served) -> None:
    served.check()
    for pass_tokens, pass_logprobs in zip(served.tokens, served.logprobs, strict=True):
        for ids, tokens, logprobs in zip(reference.prompt_ids, pass_tokens, pass_logprobs, strict=True):
            assert len(logprobs) == len(tokens) > 0
            expected = forward_logprobs(model, ids, tokens)
            assert max(abs(a - b) for a, b in zip(logprobs, expected, strict=True)) <= LOGPROB_TOLERANCE


@pytest.mark.parametrize("family", _cases("context", _window_families()), indirect=True)
def test_the_served_context_is_the_models_own(family: str, model: PreTrainedModel, served: Served) -> None:
    if served.engine is None:
        served.check()
    assert served.engine.max_model_len == model.config.max_position_embeddings


@pytest.mark.parametrize("family", _cases("varied"), indirect=True)
def test_greedy_outputs_follow_the_prompt(family: str, reference: Reference) -> None:
    """The builder's weights make a model whose answer depends on its prompt (else a served model
    that ignored most of its context could still agree with it)."""
    assert len({tuple(tokens) for tokens in reference.tokens}) == len(PROMPTS)


def _no_sinks(model: PreTrainedModel) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("sinks"):
                param.fill_(float("-inf"))  # exp(-inf) = 0: the sink takes no attention mass


# family, the feature, config overrides that switch it off, a change to the loaded model that does
_FEATURES: list[tuple[str, str, dict[str, Any], Callable[[PreTrainedModel], None] | None]] = [
    ("gemma2", "softcap", {"attn_logit_softcapping": None}, None),
    ("gemma2", "window", {"layer_types": ["full_attention"] * 4}, None),
    ("gpt_oss", "sinks", {}, _no_sinks),
    ("gpt_oss", "window", {"layer_types": ["full_attention"] * 2}, None),
    ("mistral", "window", {"sliding_window": None}, None),
    ("gemma3", "window", {"sliding_window": 512}, None),  # windowed layers keep their local rope
    ("starcoder2", "window", {"sliding_window": None}, None),
]


@pytest.mark.parametrize(("family", "feature", "off", "switch_off"), [pytest.param(*case, id=f"{case[0]}-{case[1]}")
                                                                     for case in _FEATURES], indirect=["family"])
def test_switching_a_feature_off_changes_the_answer(family: str, feature: str, off: dict[str, Any],
                                                   switch_off: Callable[[PreTrainedModel], None] | None,
                                                   model: PreTrainedModel, reference: Reference,
                                                   tiny_model_dir: Path, tmp_path: Path) -> None:
    """Same weights, same prompts, the feature off: other greedy tokens and logprobs off by far more
    than the tolerance, so a path that ignored the feature would fail the matrix."""
    plain_dir = build_family_model(family, tiny_model_dir, tmp_path, seed=SEED, **off)
    plain = load_reference(plain_dir)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values(),
                                                  strict=True))
    if switch_off is not None:
        switch_off(plain)
    long_prompts = reference.prompt_ids[1:]
    assert [greedy(plain, ids) for ids in long_prompts] != reference.tokens[1:]
    diffs = [abs(a - b) for ids, tokens in zip(long_prompts, reference.tokens[1:], strict=True)
             for a, b in zip(forward_logprobs(plain, ids, tokens), forward_logprobs(model, ids, tokens), strict=True)]
    assert max(diffs) > 100 * LOGPROB_TOLERANCE
