"""Tests for rlalign.data.tokenizer."""

import numpy as np
import pytest

from rlalign.data import tokenizer as tok_lib
from rlalign.data.pipeline import DataConfig


def test_special_ids_and_vocab_size():
  tok = tok_lib.CharTokenizer("ab")
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.vocab_size == 5
  assert tok.encode("ba") == [4, 3]


def test_addition_alphabet_ids():
  tok = tok_lib.CharTokenizer(tok_lib.ADDITION_ALPHABET)
  assert tok.vocab_size == 15
  # "0" is id 3, so digit d is d + 3; "+" is 13 and "=" is 14.
  assert tok.encode("74+58=") == [10, 7, 13, 8, 11, 14]


def test_encode_rejects_unknown_character_naming_it_and_the_text():
  tok = tok_lib.CharTokenizer(tok_lib.ADDITION_ALPHABET)
  with pytest.raises(ValueError) as e:
    tok.encode("12x+3=")
  assert "'x'" in str(e.value)
  assert "'12x+3='" in str(e.value)


def test_decode_stops_at_eos_and_skips_pad_and_bos():
  tok = tok_lib.CharTokenizer(tok_lib.ADDITION_ALPHABET)
  assert tok.decode([0, 0, 1, 10, 0, 7, 2, 3, 4]) == "74"
  assert tok.decode(np.array([1, 13, 14], np.int32)) == "+="
  assert tok.decode([2, 3]) == ""


def test_decode_rejects_out_of_range_ids():
  tok = tok_lib.CharTokenizer("ab")
  with pytest.raises(ValueError, match="5"):
    tok.decode([3, 5])


def test_ascii_alphabet_round_trip():
  alphabet = tok_lib.ASCII_ALPHABET
  assert len(alphabet) == 96  # 95 printable characters plus newline.
  assert " " in alphabet and "\n" in alphabet and "~" in alphabet
  assert "\t" not in alphabet
  tok = tok_lib.CharTokenizer(alphabet)
  text = 'Hello, "world"!\n{x: 1}'
  assert tok.decode(tok.encode(text)) == text
  assert tok.encode(" ") == [3]


def test_alphabet_must_be_non_empty_and_unique():
  with pytest.raises(ValueError, match="empty"):
    tok_lib.CharTokenizer("")
  with pytest.raises(ValueError, match="duplicate"):
    tok_lib.CharTokenizer("abca")


def test_tokenizer_for_task():
  assert tok_lib.tokenizer_for(DataConfig(task="addition")).alphabet == "0123456789+="
  assert (
      tok_lib.tokenizer_for(DataConfig(task="jsonl")).alphabet
      == tok_lib.ASCII_ALPHABET
  )
  with pytest.raises(ValueError, match="'bogus'"):
    tok_lib.tokenizer_for(DataConfig(task="bogus"))


@pytest.mark.parametrize("alphabet", [tok_lib.ADDITION_ALPHABET, tok_lib.ASCII_ALPHABET])
def test_saved_as_hugging_face_files_it_tokenizes_the_same(tmp_path, alphabet):
  """What an exported character-level model ships: read back by rlalign's HFTokenizer and by
  transformers, with the same ids, BOS, EOS, PAD and decoding."""
  import transformers
  from rlalign.data.hf_tokenizer import HFTokenizer
  tok = tok_lib.CharTokenizer(alphabet)
  tok_lib.save_hf_tokenizer(tok, str(tmp_path))
  text = "12+34=" if alphabet == tok_lib.ADDITION_ALPHABET else "Hi there,\n  a+b = {c}~"
  ours = HFTokenizer.from_dir(tmp_path)
  assert ours.encode(text) == tok.encode(text)
  assert (ours.pad_id, ours.bos_id, ours.eos_id, ours.vocab_size) == (
      tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size)
  ids = [tok.bos_id] + tok.encode(text) + [tok.eos_id] + tok.encode("1")
  assert ours.decode(ids) == tok.decode(ids) == text
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert theirs(text)["input_ids"] == [tok.bos_id] + tok.encode(text)
  assert theirs.decode(tok.encode(text)) == text
  assert (theirs.pad_token_id, theirs.eos_token_id) == (tok.pad_id, tok.eos_id)
