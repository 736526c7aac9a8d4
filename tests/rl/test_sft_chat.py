"""SFT on chat-formatted demonstrations: the templated prompt is context, never a target.

With ``data.prompt_format="chat"`` the prompt is the tokenizer's chat template rendered up to
the assistant's turn (BOS, role headers, the system and user turns, the generation prompt) and
the demonstration follows as the assistant's reply, closed by the end token the pipeline
appends. The SFT loss must train on exactly the reply and that end token.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlalign import objectives
from rlalign.data import pipeline
from rlalign.data.hf_tokenizer import HFTokenizer
from rlalign.models import transformer as tfm
from rlalign.rl import offline
from rlalign.rl import roles as roles_lib
from rlalign.rl import update
from tests.data.test_hf_tokenizer import LLAMA_CONFIG, _special, byte_level, write_dir

BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"
HEADERS = ["<|start_header_id|>", "<|end_header_id|>"]
# Llama 3's turn layout, without its date line.
TEMPLATE = (
    "{{- bos_token }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + (m.content | trim)"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}")
GENERATION_PROMPT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
SYSTEM = "Keep your answers short."
# JSONL-like records; prompts of different lengths, so the rows are left-padded differently.
EXAMPLES = [
    {"prompt": "What is 2 + 3?", "demonstration": "The answer is 5.", "line": 1},
    {"prompt": "Hello, how are you today? Tell me.", "demonstration": "I am fine, thank you!",
     "line": 2},
]
MAX_PROMPT_LEN, MAX_ANSWER_LEN = 64, 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  backend = byte_level(BOS)  # Llama 3 style: the post-processor would add BOS to raw text
  backend.add_special_tokens(_special(HEADERS))
  return write_dir(tmp_path_factory.mktemp("chat_tok"), backend,
                   {**LLAMA_CONFIG, "chat_template": TEMPLATE})


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
  return HFTokenizer.from_dir(tokenizer_dir)


@pytest.fixture(scope="module")
def cfg(tokenizer_dir):
  cfg = pipeline.DataConfig(task="jsonl", data_dir="unused", train_path="unused.jsonl",
                            max_prompt_len=MAX_PROMPT_LEN, max_answer_len=MAX_ANSWER_LEN,
                            tokenizer_dir=str(tokenizer_dir), prompt_format="chat",
                            system_prompt=SYSTEM)
  cfg.validate()
  return cfg


@pytest.fixture(scope="module")
def rows(tok, cfg):
  return [pipeline.encode_example(ex, tok, cfg) for ex in EXAMPLES]


def _prompt_messages(example):
  return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": example["prompt"]}]


def test_prompt_is_the_template_rendering_up_to_the_generation_prompt(tok, rows):
  for example, row in zip(EXAMPLES, rows):
    text = tok.apply_chat_template(_prompt_messages(example), add_generation_prompt=True)
    header = lambda role: f"{HEADERS[0]}{role}{HEADERS[1]}\n\n"
    assert text == (BOS + header("system") + SYSTEM + EOT + header("user") + example["prompt"]
                    + EOT + GENERATION_PROMPT)
    ids = tok.encode(text)
    n = len(ids)
    np.testing.assert_array_equal(row["prompt_mask"],
                                  np.arange(MAX_PROMPT_LEN) >= MAX_PROMPT_LEN - n)
    assert row["prompt_tokens"][row["prompt_mask"]].tolist() == ids
    assert (row["prompt_tokens"][:MAX_PROMPT_LEN - n] == tok.pad_id).all()
    # The template's BOS, once: a templated prompt gets no second one from the pipeline.
    assert ids.count(tok.bos_id) == 1 and ids[0] == tok.bos_id
    header_ids = [tok.token_id(h) for h in HEADERS]
    assert ids[-len(tok.encode(GENERATION_PROMPT)):] == tok.encode(GENERATION_PROMPT)
    assert ids.count(header_ids[0]) == ids.count(header_ids[1]) == 3  # system, user, assistant


def test_demo_mask_is_the_reply_and_its_end_of_turn(tok, rows):
  eot = tok.token_id(EOT)
  assert tok.eos_id == eot  # the token the pipeline appends is the template's end-of-turn
  for example, row in zip(EXAMPLES, rows):
    reply = example["demonstration"]
    ids = tok.encode(reply) + [eot]
    assert len(ids) < MAX_ANSWER_LEN  # some padding, so the mask's end is tested too
    np.testing.assert_array_equal(row["demo_mask"], np.arange(MAX_ANSWER_LEN) < len(ids))
    assert row["demo_tokens"][:len(ids)].tolist() == ids
    # In text, prompt + demonstration is the template's rendering of the whole conversation:
    # the reply as the assistant's turn, closed by exactly the appended end token.
    prompt_text = tok.apply_chat_template(_prompt_messages(example), add_generation_prompt=True)
    conversation = _prompt_messages(example) + [{"role": "assistant", "content": reply}]
    assert (tok.apply_chat_template(conversation, add_generation_prompt=False)
            == prompt_text + reply + EOT)
    assert tok.decode(row["demo_tokens"]) == reply  # decoding stops at the end token


# ------------------------------------------------------------------ the loss


@pytest.fixture(scope="module")
def setup(tok, rows):
  """(model config, params, canonical demonstrations batch, SFT binding)."""
  # Untied, so an embedding row's gradient comes from input use only (test_the_prompt_is_context).
  model = tfm.ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2,
                          n_kv_heads=1, head_dim=16, d_ff=64, tie_embeddings=False)
  params = tfm.init(model, jax.random.key(0))
  params["lm_head"] = params["lm_head"] * 4.0  # far from uniform: wrong positions would show
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
  seqs = offline.to_sequences(batch, "demonstrations")
  assert (seqs["completion_tokens"] == batch["demo_tokens"]).all()
  assert (seqs["mask"] == batch["demo_mask"]).all()
  objective = objectives.get("sft")
  binding = update.Binding(objective, objective.hparams(),
                           {"policy": roles_lib.RoleSpec(model, optax.sgd(0.0))}, {})
  binding.check()
  return model, params, seqs, binding


def _sft_loss(params, seqs, binding):
  value, (metrics, outputs) = update.loss({"policy": params}, {}, seqs, binding)
  return value, metrics, outputs


def _next_token_nll(params, tokens, mask, model):
  """-log pi(tokens[:, i+1] | tokens[:, :i+1]) for every i, [B, L-1], by a separate forward."""
  hidden, _ = tfm.forward(params, tokens, tfm.positions_from_mask(mask), mask, model)
  logits = np.asarray(tfm.lm_logits(params, hidden, model), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  tokens = np.asarray(tokens)
  return -np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]


def test_sft_loss_is_the_mean_nll_of_the_reply_tokens_only(setup, tok):
  model, params, seqs, binding = setup
  value, metrics, outputs = _sft_loss(params, seqs, binding)

  prompt_mask = np.asarray(seqs["prompt_mask"])
  demo_mask = np.asarray(seqs["mask"])
  P = prompt_mask.shape[1]
  tokens = jnp.concatenate([seqs["prompt_tokens"], seqs["completion_tokens"]], axis=1)
  mask = jnp.concatenate([seqs["prompt_mask"], seqs["mask"]], axis=1)
  nll = _next_token_nll(params, tokens, mask, model)  # nll[:, i] is the loss of token i + 1
  # A token is a target iff it is a reply token: no prompt column, template token or pad.
  is_target = np.concatenate([np.zeros_like(prompt_mask), demo_mask], axis=1)[:, 1:]
  assert is_target.sum() == sum(len(tok.encode(ex["demonstration"])) + 1 for ex in EXAMPLES)
  expected = (nll * is_target).sum() / is_target.sum()
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["nll"]), expected, rtol=1e-5)
  # Token by token: logprobs[:, t] (from position P - 1 + t) is reply token t's.
  logprobs = np.asarray(outputs["policy"].logprobs)
  np.testing.assert_allclose(-logprobs[demo_mask], nll[:, P - 1:][demo_mask], rtol=1e-5,
                             atol=1e-6)

  # The checks have teeth: training on the prompt's tokens as well would give a clearly
  # different loss, and the reply's per-token losses one position off clearly different ones.
  with_prompt = np.concatenate([prompt_mask, demo_mask], axis=1)[:, 1:]
  assert abs((nll * with_prompt).sum() / with_prompt.sum() - expected) > 0.05 * expected
  for off_by_one in (nll[:, P - 2:-1], np.roll(nll, -1, axis=1)[:, P - 1:]):
    assert np.abs(off_by_one[demo_mask] + logprobs[demo_mask]).max() > 0.5


def test_the_prompt_is_context(setup, tok):
  """A real prompt token's value changes the loss; a left pad's value does not; and the
  gradient reaches the embeddings of template tokens only through their use as input."""
  model, params, seqs, binding = setup
  base, _, _ = _sft_loss(params, seqs, binding)
  prompt_tokens = np.asarray(seqs["prompt_tokens"])
  prompt_mask = np.asarray(seqs["prompt_mask"])
  assert not prompt_mask[0, 0] and prompt_mask[0, -1]

  bos = int(np.argmax(prompt_mask[0]))  # the first real column
  assert prompt_tokens[0, bos] == tok.bos_id
  changed = prompt_tokens.copy()
  changed[0, bos + 1] = tok.encode("x")[0]  # the system turn's role header, now a plain token
  value, _, _ = _sft_loss(params, {**seqs, "prompt_tokens": jnp.asarray(changed)}, binding)
  assert abs(float(value) - float(base)) > 1e-4

  padded = prompt_tokens.copy()
  padded[0, 0] = tok.encode("x")[0]  # a masked left pad
  value, _, _ = _sft_loss(params, {**seqs, "prompt_tokens": jnp.asarray(padded)}, binding)
  np.testing.assert_allclose(float(value), float(base), rtol=1e-6)

  grads = jax.grad(lambda p: _sft_loss(p, seqs, binding)[0])(params)
  embed_grad = np.abs(np.asarray(grads["embed"])).sum(-1)
  prompt_only = {tok.bos_id, *(tok.token_id(h) for h in HEADERS)}
  assert all(embed_grad[t] > 0 for t in prompt_only)  # used as context
  unused = sorted(set(range(tok.vocab_size)) - set(prompt_tokens.ravel().tolist())
                  - set(np.asarray(seqs["completion_tokens"]).ravel().tolist()))
  assert unused and (embed_grad[unused] == 0).all()
