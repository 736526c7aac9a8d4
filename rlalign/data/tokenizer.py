"""Character-level tokenizers for the toy tasks.

Ids 0..2 are the special tokens PAD, BOS and EOS; every alphabet character
gets the next id in alphabet order. A character tokenizer keeps the tasks
self-contained (no vocabulary files to download) and makes every id easy to
read when debugging samples.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # Avoids an import cycle: pipeline imports this module.
  from rlalign.data.pipeline import DataConfig

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
_NUM_SPECIAL = 3

ADDITION_ALPHABET = "0123456789+="
# Printable ASCII (space to "~") plus newline, for free-form JSONL prompts.
ASCII_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
  """Maps each character of `alphabet` to one id; see the module docstring."""

  alphabet: str
  _char_to_id: dict[str, int] = dataclasses.field(
      init=False, repr=False, compare=False
  )

  def __post_init__(self):
    if not self.alphabet:
      raise ValueError("CharTokenizer alphabet must not be empty")
    duplicates = sorted({c for c in self.alphabet if self.alphabet.count(c) > 1})
    if duplicates:
      raise ValueError(
          f"CharTokenizer alphabet has duplicate characters: {duplicates}"
      )
    # Frozen dataclass: set the derived lookup table once, here.
    object.__setattr__(
        self,
        "_char_to_id",
        {c: i + _NUM_SPECIAL for i, c in enumerate(self.alphabet)},
    )

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def vocab_size(self) -> int:
    return _NUM_SPECIAL + len(self.alphabet)

  def encode(self, text: str) -> list[int]:
    """Returns one id per character; no BOS/EOS are added."""
    try:
      return [self._char_to_id[c] for c in text]
    except KeyError as e:
      raise ValueError(
          f"character {e.args[0]!r} is not in the tokenizer alphabet"
          f" {self.alphabet!r} (text: {text!r})"
      ) from None

  def decode(self, ids: Iterable[int], *, strict: bool = True) -> str:
    """Inverse of `encode`: stops at the first EOS, skips PAD and BOS.

    Model outputs may hold ids past the alphabet (a model's vocabulary is often padded);
    with ``strict=False`` those decode to U+FFFD instead of raising.
    """
    chars = []
    for token in ids:
      token = int(token)
      if token == EOS_ID:
        break
      if token in (PAD_ID, BOS_ID):
        continue
      if not _NUM_SPECIAL <= token < self.vocab_size:
        if not strict:
          chars.append("\ufffd")
          continue
        raise ValueError(
            f"token id {token} is outside the vocabulary [0, {self.vocab_size})"
        )
      chars.append(self.alphabet[token - _NUM_SPECIAL])
    return "".join(chars)


def tokenizer_for(cfg: DataConfig):
  """The run's tokenizer: a Hugging Face one if `cfg.tokenizer_dir` is set, else by task."""
  if cfg.tokenizer_dir:
    from rlalign.data.hf_tokenizer import HFTokenizer  # keeps `tokenizers` off this import path
    return HFTokenizer.from_dir(cfg.tokenizer_dir)
  if cfg.alphabet == "ascii":
    return CharTokenizer(ASCII_ALPHABET)
  if cfg.task == "addition":
    return CharTokenizer(ADDITION_ALPHABET)
  if cfg.task in ("rubric", "jsonl", "tfds", "hf"):
    return CharTokenizer(ASCII_ALPHABET)
  raise ValueError(f"no tokenizer for data.task={cfg.task!r}")


# The special tokens' strings in the Hugging Face files a CharTokenizer is saved as.
HF_SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


def save_hf_tokenizer(tokenizer: CharTokenizer, directory: str) -> None:
  """Writes `tokenizer` as the `tokenizer.json` and `tokenizer_config.json` that Hugging Face
  loaders read (transformers' AutoTokenizer, `HFTokenizer.from_dir`), with the same ids: so
  an exported character-level model carries its tokenizer.

  Each character is a token (a BPE with no merges, so no unknown token is needed), decoding
  joins them with nothing between, and `add_special_tokens=True` puts BOS in front as the
  raw prompts of the pipeline have it.
  """
  import tokenizers  # only when saving; the toy tasks need no tokenizers file otherwise
  from tokenizers import decoders, models, processors
  names = [HF_SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "eos_token")]
  vocab = {name: i for i, name in enumerate(names)}
  vocab.update({c: tokenizer.encode(c)[0] for c in tokenizer.alphabet})
  backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
  backend.add_special_tokens([tokenizers.AddedToken(n, special=True, normalized=False)
                              for n in names])
  backend.decoder = decoders.Fuse()
  bos = HF_SPECIAL_TOKENS["bos_token"]
  backend.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, BOS_ID)])
  os.makedirs(directory, exist_ok=True)
  backend.save(os.path.join(directory, "tokenizer.json"))
  config = {**HF_SPECIAL_TOKENS, "add_bos_token": True, "add_eos_token": False,
            "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
