"""Tiny offline models and tokenizers for tests, demos and users' own tests.

Nothing here touches the Hugging Face Hub: the tokenizer is a byte-level BPE trained on the fly
(with the ``tokenizers`` library, in milliseconds, deterministically) on a small embedded corpus of
Python and pytest code, and the model is a randomly initialised Qwen2-architecture causal LM.
The result behaves like any Hub checkpoint: it has a chat template, pad/eos tokens, and
:func:`save_tiny_causal_lm` writes a directory that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load.

Note for CPU users: TRL configs default to ``bf16=True``, which raises without a GPU; pass
``bf16=False``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["tiny_tokenizer", "tiny_causal_lm", "save_tiny_causal_lm", "CHAT_TEMPLATE", "DEFAULT_CORPUS"]

PAD, EOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# ChatML, the format of Qwen-family code models. `{% generation %}` marks assistant tokens so TRL's
# `assistant_only_loss` works with it too.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_CORPUS = '''
def add(a, b):
    """Return the sum of a and b."""
    return a + b


def is_palindrome(text: str) -> bool:
    cleaned = "".join(ch.lower() for ch in text if ch.isalnum())
    return cleaned == cleaned[::-1]


def fizzbuzz(n):
    if n % 15 == 0:
        return "FizzBuzz"
    elif n % 3 == 0:
        return "Fizz"
    elif n % 5 == 0:
        return "Buzz"
    return str(n)


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()


import pytest
from solution import add, is_palindrome, fizzbuzz, Stack


def test_add():
    assert add(1, 2) == 3
    assert add(-1, 1) == 0


@pytest.mark.parametrize("text, expected", [("racecar", True), ("abc", False), ("", True)])
def test_is_palindrome(text, expected):
    assert is_palindrome(text) is expected


def test_fizzbuzz():
    assert fizzbuzz(15) == "FizzBuzz"
    assert fizzbuzz(9) == "Fizz"
    assert fizzbuzz(10) == "Buzz"
    assert fizzbuzz(7) == "7"


def test_stack_pop_empty_raises():
    with pytest.raises(IndexError):
        Stack().pop()


SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name ORDER BY name;
Write pytest unit tests for the following Python code. Fix the failing test. Diagnose the failure.
for i in range(len(values)): total += values[i] * 2 - 1
while left < right: mid = (left + right) // 2
return [x for x in items if x is not None]
'''


def tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """Train a small byte-level BPE tokenizer offline and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
        corpus: texts to learn merges from (default: :data:`DEFAULT_CORPUS`). Any byte sequence can
            be encoded whatever the corpus, since the base alphabet is all 256 bytes.
        vocab_size: target vocabulary size including the 256 bytes and 4 special tokens.

    Training is deterministic: the same corpus and size give the same vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus) if corpus is not None else [DEFAULT_CORPUS]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[EOS, IM_START],
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_causal_lm(
    seed: int = 0,
    tokenizer=None,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    **config_overrides,
):
    """Build a tiny random-weight causal LM and its offline tokenizer: ``(model, tokenizer)``.

    The architecture is Qwen2 (the family of common code models) at toy size: 2 layers, hidden
    size 64, 4 heads. ``config_overrides`` go to ``Qwen2Config`` (e.g. ``hidden_size=32``,
    ``num_hidden_layers=1``); weights are drawn with ``torch.manual_seed(seed)``, so the same seed
    gives the same model. Pass ``tokenizer`` to share one tokenizer between teacher and student.
    """
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    if tokenizer is None:
        tokenizer = tiny_tokenizer(corpus=corpus, vocab_size=vocab_size)
    config_kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )
    config_kwargs.update(config_overrides)
    config = Qwen2Config(**config_kwargs)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model, tokenizer


def save_tiny_causal_lm(directory: str | os.PathLike, seed: int = 0, **config_overrides) -> str:
    """Build :func:`tiny_causal_lm` and save model + tokenizer so ``from_pretrained(directory)`` loads them."""
    model, tokenizer = tiny_causal_lm(seed=seed, **config_overrides)
    directory = os.fspath(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
