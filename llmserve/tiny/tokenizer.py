"""A real byte-level BPE tokenizer with Llama-3-style special tokens, trained offline in seconds.

Layout of the vocabulary (Llama 3 puts its specials last as well):

    ids [0, vocab_size - 6)           byte-level BPE tokens: the 256 bytes, then learned merges,
                                      then (only when the corpus runs out of merges) filler merges
    ids [vocab_size - 6, vocab_size)  the special tokens, in the order of `SPECIAL_TOKENS`

Every id decodes to non-empty text: BPE tokens decode to their bytes (a lone byte of a multi-byte
character decodes to U+FFFD) and special tokens to their own text (unless skipped).

BOS policy: like Llama 3, encoding plain text prepends `<|begin_of_text|>` (a post-processor
template; `add_special_tokens=False` turns it off). The chat template writes `bos_token` itself
and transformers tokenizes a rendered chat with `add_special_tokens=False`, so a tokenized chat
holds exactly one BOS. The BOS rule lives in tokenizer.json's post-processor: transformers 5 does
not save `add_bos_token`, so a loaded tokenizer reports `add_bos_token == False` yet adds BOS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from llmserve.tiny.corpus import read_corpus

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
EOT_TOKEN = "<|eot_id|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, EOT_TOKEN, START_HEADER_TOKEN, END_HEADER_TOKEN, PAD_TOKEN)

# Llama 3 layout: BOS once, then per message a role header, a blank line, the content and
# <|eot_id|>. Content given as a list of OpenAI-style parts is joined from its text parts.
# With `tools` (transformers' apply_chat_template(tools=...)) the functions are listed in the system
# turn and the model is told the Hermes/Qwen call syntax; an assistant turn's `tool_calls` are
# written back in that syntax and a tool result is wrapped in <tool_response>. Without tools the
# prompt is exactly the plain Llama 3 layout.
TOOLS_PREAMBLE = (
    "# Tools\\n\\nTo call a function, answer with <tool_call>{\"name\": NAME, \"arguments\": ARGUMENTS}"
    "</tool_call>, one per call. The functions, as JSON schemas:\\n<tools>\\n"
)
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if tools -%}{%- set tool_text = '" + TOOLS_PREAMBLE + "' + (tools | map('tojson') | join('\\n'))"
    " + '\\n</tools>' -%}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + tool_text + '<|eot_id|>' -}}{%- endif -%}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- elif message['content'] is none -%}{%- set content = '' -%}"
    "{%- else -%}{%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}{%- endif -%}"
    "{%- if tools and loop.first and message['role'] == 'system' -%}"
    "{%- set content = content + '\\n\\n' + tool_text -%}{%- endif -%}"
    "{%- if message['role'] == 'tool' -%}{%- set content = '<tool_response>' + content + '</tool_response>' -%}"
    "{%- endif -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + content -}}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{{- '<tool_call>{\"name\": ' + (fn['name'] | tojson) + ', \"arguments\": ' + (fn['arguments'] if fn['arguments']"
    " is string else fn['arguments'] | tojson) + '}</tool_call>' -}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


def train_bpe(texts: Sequence[str], num_bpe_tokens: int) -> Tokenizer:
    """Train a byte-level BPE of at most `num_bpe_tokens` tokens (all 256 bytes included).

    Training is deterministic: the trainer breaks count ties by the pair itself.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=num_bpe_tokens,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _filler_pairs(tokens: Sequence[str]) -> Iterator[tuple[str, str]]:
    """Word-like (left, right) pairs of existing tokens, most frequent first.

    Left parts start a word (`Ġ` + ASCII letters), right parts continue one (ASCII letters); the
    pairs walk the anti-diagonals of the (left rank, right rank) grid, so early (frequent) tokens
    are combined first and the result looks like plausible words, e.g. `Ġreturnable`.
    """
    lefts = [tok for tok in tokens if tok.startswith("Ġ") and tok[1:].isascii() and tok[1:].isalpha()]
    rights = [tok for tok in tokens if tok.isascii() and tok.isalpha()]
    for diagonal in range(len(lefts) + len(rights) - 1):
        for i in range(max(0, diagonal - len(rights) + 1), min(diagonal, len(lefts) - 1) + 1):
            yield lefts[i], rights[diagonal - i]


def fill_vocabulary(tokenizer: Tokenizer, num_bpe_tokens: int) -> Tokenizer:
    """Grow a trained BPE to exactly `num_bpe_tokens` tokens by appending filler merges.

    A small corpus cannot teach a 128k vocabulary. The fillers are ordinary merges of two existing
    tokens (ranked after every learned merge), so they decode to real text, stay inside the BPE
    model (no added-token matching cost) and only fire on text that actually contains them.
    """
    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [
        tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]
    ]
    if len(vocab) >= num_bpe_tokens:
        return tokenizer
    tokens = sorted(vocab, key=vocab.__getitem__)
    for left, right in _filler_pairs(tokens):
        if left + right in vocab:
            continue
        vocab[left + right] = len(vocab)
        merges.append((left, right))
        if len(vocab) == num_bpe_tokens:
            break
    else:
        raise ValueError(
            f"cannot fill the vocabulary to {num_bpe_tokens} tokens from {len(tokens)} learned ones"
        )
    tokenizer.model = models.BPE(vocab=vocab, merges=merges)
    return tokenizer


def add_special_tokens(tokenizer: Tokenizer) -> None:
    """Append `SPECIAL_TOKENS` after the BPE ids and prepend BOS when encoding plain text."""
    tokenizer.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in SPECIAL_TOKENS])
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN}:0 $A:0",
        pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )


def build_tokenizer(vocab_size: int, corpus_bytes: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Train the tiny tokenizer: exactly `vocab_size` ids, specials last, a Llama-3 chat template."""
    num_bpe_tokens = vocab_size - len(SPECIAL_TOKENS)
    if num_bpe_tokens < 512:
        raise ValueError(f"vocab_size = {vocab_size}: must be at least {512 + len(SPECIAL_TOKENS)}")
    tokenizer = fill_vocabulary(train_bpe(read_corpus(corpus_bytes), num_bpe_tokens), num_bpe_tokens)
    add_special_tokens(tokenizer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"built {tokenizer.get_vocab_size()} tokens, wanted {vocab_size}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
