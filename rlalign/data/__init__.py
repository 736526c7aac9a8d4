"""Prompt datasets, tokenizers and input pipelines."""

from rlalign.data.addition import (
    correct_answer,
    generate_problems,
    is_test_pair,
    reverse_digits,
    sloppy_answer,
)
from rlalign.data.builders import (
    AdditionConfig,
    AdditionPrompts,
    JsonlConfig,
    JsonlPrompts,
    read_jsonl,
)
from rlalign.data.pipeline import (
    TASKS,
    DataConfig,
    encode_example,
    eval_batches,
    load_split,
    prepare,
    train_iterator,
    validate_split,
)
from rlalign.data.tokenizer import (
    ADDITION_ALPHABET,
    ASCII_ALPHABET,
    CharTokenizer,
    tokenizer_for,
)
