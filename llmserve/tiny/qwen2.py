"""Random-weight Qwen2 models with a ChatML tokenizer: the `qwen2-0.5b` preset's builder.

Qwen2 differs from the Llama presets where a server can tell: q/k/v projections carry biases,
RMSNorm eps is 1e-6, there is no BOS token, and chats use ChatML (`<|im_start|>role\\n...<|im_end|>`).
The tokenizer is the same stdlib-trained byte-level BPE as the Llama presets (llmserve/tiny/tokenizer.py),
filled to the model's whole vocabulary with filler merges so that every id the model can emit
decodes (the real Qwen2 pads its 151,646 tokens to 151,936 embedding rows; here no row is padding).

Vocabulary layout: ids [0, vocab_size - 3) are BPE tokens, then `<|endoftext|>`, `<|im_start|>`,
`<|im_end|>`. Weights are drawn as in llmserve/tiny/model.py: built on the meta device,
materialised empty, then filled in `named_parameters()` order from one seeded generator.
"""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import AddedToken
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from llmserve.tiny.corpus import read_corpus
from llmserve.tiny.model import config_kwargs, empty_model
from llmserve.tiny.tokenizer import fill_vocabulary, train_bpe

END_OF_TEXT_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
CHATML_SPECIAL_TOKENS = (END_OF_TEXT_TOKEN, IM_START_TOKEN, IM_END_TOKEN)

# ChatML as Qwen2-Instruct writes it, without its default system prompt (a prompt of N tokens stays
# N tokens plus the role markers). Content given as OpenAI-style parts is joined from its text parts.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- elif message['content'] is none -%}{%- set content = '' -%}"
    "{%- else -%}{%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def build_chatml_tokenizer(
    vocab_size: int, corpus_bytes: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """Exactly `vocab_size` ids, the three ChatML specials last, no BOS, a ChatML chat template."""
    num_bpe_tokens = vocab_size - len(CHATML_SPECIAL_TOKENS)
    if num_bpe_tokens < 512:
        raise ValueError(f"vocab_size = {vocab_size}: must be at least {512 + len(CHATML_SPECIAL_TOKENS)}")
    tokenizer = fill_vocabulary(train_bpe(read_corpus(corpus_bytes), num_bpe_tokens), num_bpe_tokens)
    tokenizer.add_special_tokens(
        [AddedToken(tok, special=True, normalized=False) for tok in CHATML_SPECIAL_TOKENS]
    )
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"built {tokenizer.get_vocab_size()} tokens, wanted {vocab_size}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END_TOKEN,
        pad_token=END_OF_TEXT_TOKEN,
        chat_template=CHATML_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def build_qwen2_config(**shape: Any) -> Qwen2Config:
    """A `Qwen2Config` with Qwen2's defaults (RMSNorm eps 1e-6, SiLU MLP, full attention in every
    layer); `shape` as `model.config_kwargs` takes it."""
    return Qwen2Config(**config_kwargs(**shape), use_sliding_window=False, rms_norm_eps=1e-6)


def create_qwen2_model(config: Qwen2Config, seed: int, embedding_std: float) -> Qwen2ForCausalLM:
    """A `Qwen2ForCausalLM` with seeded random weights in `config.dtype`, on the CPU.

    Norm scales get 1; every other tensor, the q/k/v biases included, N(0, initializer_range),
    except the input embedding, N(0, embedding_std). Tied parameters are drawn once.
    """
    model: Qwen2ForCausalLM = empty_model(Qwen2ForCausalLM, Qwen2RotaryEmbedding, config)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    embedding = model.get_input_embeddings().weight
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                std = embedding_std if param is embedding else config.initializer_range
                param.normal_(mean=0.0, std=std, generator=generator)
    model.eval()
    return model


def chatml_generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """Greedy by default; stops at the end of a turn or of the text, as Qwen2-Instruct's does."""
    end_of_text, im_end = (_token_id(tokenizer, tok) for tok in (END_OF_TEXT_TOKEN, IM_END_TOKEN))
    return GenerationConfig(
        bos_token_id=end_of_text, eos_token_id=[im_end, end_of_text], pad_token_id=end_of_text
    )


def chatml_token_ids(tokenizer: PreTrainedTokenizerFast) -> tuple[int, int, int]:
    """The config's (bos, eos, pad) ids: Qwen2 has no BOS token and names `<|endoftext|>` in its place."""
    end_of_text, im_end = (_token_id(tokenizer, tok) for tok in (END_OF_TEXT_TOKEN, IM_END_TOKEN))
    return end_of_text, im_end, end_of_text


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """The id of a special token that must exist."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id < 0:
        raise RuntimeError(f"special token {token!r} is missing from the tokenizer")
    return token_id
