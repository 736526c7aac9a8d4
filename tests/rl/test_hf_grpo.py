"""GRPO from a local Hugging Face checkpoint, exported back and reloaded by transformers.

A tiny random Qwen2 and a character-level tokenizer with a Qwen-style chat template are built
here; nothing is downloaded. The run goes through configs/grpo_hf.py and train.train.
"""
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from rlalign import config as config_lib  # noqa: E402
from rlalign.data.hf_tokenizer import HFTokenizer  # noqa: E402
from rlalign.models import hf  # noqa: E402
from rlalign import recipes  # noqa: E402
from rlalign.sampling import sampler  # noqa: E402

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHARS = sorted(set("useraistnm\n0123456789+="))
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tokenizer(directory, chars=CHARS):
  vocab = {tok: i for i, tok in enumerate(SPECIALS + list(chars))}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<|endoftext|>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), "isolated")
  tok.decoder = tokenizers.decoders.Fuse()
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in SPECIALS])
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
               "chat_template": CHAT_TEMPLATE}, f)
  return len(vocab)


def write_checkpoint(directory, vocab_size):
  torch.manual_seed(0)
  config = transformers.Qwen2Config(
      vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
      eos_token_id=2, pad_token_id=0, bos_token_id=None)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  with torch.no_grad():  # larger weights than the default init, so greedy output varies
    for p in model.parameters():
      if p.ndim == 2:
        p.normal_(0, 1.5 / np.sqrt(p.shape[-1]))
  model.save_pretrained(directory, safe_serialization=True)


def write_prompts(path, n):
  rng = np.random.default_rng(0)
  with open(path, "w") as f:
    for _ in range(n):
      a, b = rng.integers(0, 50, 2)
      f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")


def load_config(arg):
  spec = importlib.util.spec_from_file_location("grpo_hf", os.path.join(REPO, "configs",
                                                                        "grpo_hf.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_grpo_from_hf_checkpoint_exports_a_model_transformers_reloads(tmp_path):
  ckpt = str(tmp_path / "ckpt")
  os.makedirs(ckpt)
  write_checkpoint(ckpt, write_tokenizer(ckpt))
  write_prompts(tmp_path / "train.jsonl", 64)
  write_prompts(tmp_path / "test.jsonl", 8)

  config = load_config(f"{ckpt},{tmp_path / 'train.jsonl'},{tmp_path / 'test.jsonl'}")
  config.model.update(dtype="float32", remat=False)
  config.data.update(max_prompt_len=32, max_answer_len=4)
  config.sampling.max_new_tokens = 4
  # A random model almost never answers right; "stopped" (emitting <|im_end|>) varies
  # within groups, so the GRPO steps really move the weights.
  config.phases.rl.update(steps=3, batch_size=32, group_size=4, minibatches=1,
                          rewards={"stopped": 1.0})
  config.roles.policy.optimizer.learning_rate = 1e-2
  config.train.update(log_every=1, eval_every=0, checkpoint_every=3, eval_batch_size=8)
  config.mesh.ici = (-1, 1, 1)  # the 8 fake devices of tests/conftest.py, data-parallel
  config.data.data_dir = str(tmp_path / "tfds")
  cfg = config_lib.from_config_dict(config)
  workdir = str(tmp_path / "run")
  recipes.run(cfg, workdir)

  export = os.path.join(workdir, "hf")
  assert os.path.exists(os.path.join(export, "tokenizer.json"))
  _, start = hf.load_hf_checkpoint(ckpt)
  _, trained = hf.load_hf_checkpoint(export)
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
              zip(jax.tree.leaves(start), jax.tree.leaves(trained)))
  assert moved > 1e-3, "three GRPO steps should have changed the weights"

  # The prompts as the run saw them: chat-templated by the checkpoint's own tokenizer.
  tokenizer = HFTokenizer.from_dir(ckpt)
  rows = [tokenizer.encode_chat([{"role": "user", "content": p}]) for p in ("12+7=", "3+40=")]
  assert rows[0][:2] == [tokenizer.token_id("<|im_start|>"), tokenizer.token_id("u")]
  width = max(map(len, rows))
  prompts = np.array([[0] * (width - len(r)) + r for r in rows], np.int32)
  mask = prompts != 0
  mask[:, -1] = True

  model = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
  model.generation_config.eos_token_id = None
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(prompts, dtype=torch.long),
                         attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                         max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
  theirs = out[:, width:].numpy()
  scfg = sampler.SamplingConfig(max_new_tokens=8, temperature=0.0)
  ours = sampler.sample(trained, jnp.asarray(prompts), jnp.asarray(mask),
                        jax.random.key(0), cfg.model, scfg).tokens
  np.testing.assert_array_equal(np.asarray(ours), theirs)
