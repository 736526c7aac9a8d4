"""The in-graph think_format against the host rule (``has_think_format``) on the decoded text
of the same completions, in two real ``tokenizers`` tokenizers: one where the tags are added
tokens (R1, Qwen3) and one that spells them character by character."""
import itertools
import json

import jax
import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models

from rlalign.data.hf_tokenizer import HFTokenizer
from rlalign.rewards import formatting
from rlalign.rewards.math_answer import has_think_format

PIECES = ["<think>", "</think>", " ", "\n", "ab", "4", "x"]


def tokenizer(tmp_path, tags_are_tokens):
  vocab = {"<eos>": 0, "<pad>": 1}
  for c in "abx4 \n<>/think":
    vocab.setdefault(c, len(vocab))
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.decoder = decoders.Fuse()
  if tags_are_tokens:
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PIECES[:2]])
  tok.add_special_tokens([AddedToken(t, special=True) for t in ("<eos>", "<pad>")])
  directory = tmp_path / f"tok{int(tags_are_tokens)}"
  directory.mkdir()
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<eos>", "pad_token": "<pad>"}))
  return HFTokenizer.from_dir(directory)


def completions():
  """Every sequence of up to four pieces, plus the host test's edge cases."""
  texts = ["".join(p) for n in range(5) for p in itertools.product(PIECES, repeat=n)]
  return texts + ["  \n<think>ab</think> 4", "<think></think>4", "x<think>a</think>4"]


def rollouts_of(tok, texts, width):
  rows = [tok.encode(t) for t in texts]
  B = len(rows)
  tokens = np.full((B, width), tok.pad_id, np.int32)
  mask = np.zeros((B, width), bool)
  stopped = np.zeros(B, bool)
  for i, ids in enumerate(rows):
    if i % 3:  # two rows in three end in their stop token, the rest ran out of budget
      ids = ids + [tok.eos_id]
      stopped[i] = True
    tokens[i, :len(ids)], mask[i, :len(ids)] = ids, True
  return {"completion_tokens": tokens, "completion_mask": mask, "completion_stopped": stopped}


@pytest.mark.parametrize("tags_are_tokens", [True, False])
def test_think_format_on_ids_agrees_with_the_host_rule(tmp_path, tags_are_tokens):
  tok = tokenizer(tmp_path, tags_are_tokens)
  settings = formatting.ThinkFormatSettings().resolve(tok)
  assert len(settings.open_ids) == (1 if tags_are_tokens else 7)
  assert {tok.decode([i]) for i in settings.blank_ids} == {" ", "\n"}
  texts = completions()
  width = max(len(tok.encode(t)) for t in texts) + 1
  rollouts = rollouts_of(tok, texts, width)
  ours = np.asarray(jax.jit(lambda r: formatting.think_format(r, None, settings))(rollouts))
  decoded = [tok.decode(row[m], strict=False)
             for row, m in zip(rollouts["completion_tokens"], rollouts["completion_mask"])]
  assert decoded == texts  # the host sees exactly these texts
  expected = np.array([float(has_think_format(t)) for t in texts])
  assert 40 < expected.sum() < len(texts) - 40  # both verdicts occur often
  np.testing.assert_array_equal(ours, expected)


def test_think_format_needs_resolved_tags():
  with pytest.raises(ValueError, match="not tokenised"):
    formatting.think_format({}, None, formatting.ThinkFormatSettings())
  with pytest.raises(ValueError, match="rewards.fmt: open and close"):
    formatting.ThinkFormatSettings(open="<t>", close="<t>").validate("rewards.fmt")
