"""Instant, offline stand-ins for a judge model: a byte-level BPE tokenizer trained in memory on
a few judge-like sentences (with a ChatML template) and a tiny random Llama over it.

`split_digits=True` makes every digit its own token (as SmolLM2 and Qwen2.5 do: "10" is two
tokens); False lets BPE merge numbers such as "10" into one token (as Llama-3 does).
"""
from __future__ import annotations

import functools

import torch

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "The response is clear and well organised, so it earns most points.",
    "<score-abc123>7</score-abc123> <item1-x>10</item1-x> <item2-x>3</item2-x> score 10 of 10",
    "It ignores the prompt; the essay is short. Justification: weak structure, 2 points.",
    '{"justification": "fine", "score": 8, "items": [{"title": "Clarity", "max_points": 5}]}',
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 0.5 7/10",
] * 20


@functools.lru_cache(maxsize=None)
def make_tokenizer(split_digits: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) if split_digits else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHATML
    return fast


def make_model(tokenizer, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
