"""``python -m rlalign.sample``: greedy completions equal a decode by full forward passes
(no KV cache); a Hugging Face directory in chat mode answers as transformers' ``generate`` does
on the same weights and template; tokens stream as they are made; prompts come from flags,
files and stdin; bad input is one line with exit 2.

The run is written here: the smoke config's config.json and an "rl" checkpoint (real Orbax)
of a random policy, scaled so that its greedy decode is not one repeated token.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import checkpoint as ckpt_lib
from rlalign import config as config_lib
from rlalign import sample as sample_lib
from rlalign.data import tokenizer as tok_lib
from rlalign.models import hf
from rlalign.models import transformer as tfm
from tests.configs import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}a:{% endif %}")


def _scaled(params, scale=3.0):
  return jax.tree.map(lambda x: np.asarray(x) * scale, params)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  config = load_config("grpo_addition", "smoke")
  config.data.data_dir = str(workdir / "tfds")
  cfg = config_lib.from_config_dict(config)
  (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
  params = _scaled(tfm.init(cfg.role_model("policy"), jax.random.key(3)))
  with ckpt_lib.Checkpointer(str(workdir / "checkpoints" / "rl"), save_every=1) as c:
    c.save(2, {"roles": {"policy": {"params": params}}}, {})
  return str(workdir), cfg, params


def greedy_by_forward_passes(params, model, ids, steps, stop):
  """Argmax decoding that runs the whole sequence through the model at every step (no KV
  cache). The sequence is right-padded to one width, which causal attention never reads
  from earlier positions, so one compiled forward serves every step."""
  width = len(ids) + steps

  @jax.jit
  def logits_at(tokens, length):
    mask = jnp.arange(width)[None] < length
    hidden, _ = tfm.forward(params, tokens, jnp.arange(width)[None], mask, model)
    return tfm.lm_logits(params, hidden[0, length - 1], model)

  tokens = np.zeros((1, width), np.int32)
  tokens[0, :len(ids)] = ids
  out = []
  for k in range(steps):
    token = int(np.argmax(np.asarray(logits_at(tokens, len(ids) + k))))
    if token in stop:
      break
    out.append(token)
    tokens[0, len(ids) + k] = token
  return out


def _main(argv, stdin=""):
  out = io.StringIO()
  code = sample_lib.main(argv, stdin=io.StringIO(stdin), stdout=out)
  return code, out.getvalue()


def test_greedy_completions_equal_full_forward_decoding(run):
  workdir, cfg, params = run
  tokenizer = tok_lib.tokenizer_for(cfg.data)
  prompts = ["12+34=", "7+8="]
  code, out = _main([f"--run={workdir}", *(f"--prompt={p}" for p in prompts),
                     "--temperature=0", "--max_new_tokens=10"])
  assert code == 0
  model = cfg.role_model("policy")
  want = [tokenizer.decode(greedy_by_forward_passes(
      params, model, [tokenizer.bos_id] + tokenizer.encode(p), 10, {tokenizer.eos_id}),
      strict=False) for p in prompts]
  assert len(set("".join(want))) > 2  # not one repeated token
  assert out == "".join(w + "\n" for w in want)


def test_tokens_stream_one_at_a_time_and_add_up_to_the_completion(run):
  workdir, _, _ = run
  s = sample_lib.Sampler(sample_lib.SampleSettings(run=workdir, temperature=0.0,
                                                   max_new_tokens=10))
  whole = s.complete("12+34=")[0]  # the unstreamed program
  writes = []

  class Recorder(io.StringIO):
    def write(self, text):
      writes.append(text)
      return super().write(text)

  streamed = s.complete("12+34=", stream=Recorder())[0]
  assert streamed == whole == "".join(writes)
  shown = [w for w in writes if w]
  assert len(shown) >= len(whole.replace("\ufffd", "")) - 1 and len(shown) > 2


def test_samples_and_seed_follow_the_documented_draws(run):
  """Prompt i (one per stdin line) draws from fold_in(key(seed), i), G rows at once."""
  from rlalign.sampling import sampler
  workdir, cfg, params = run
  tokenizer = tok_lib.tokenizer_for(cfg.data)
  code, out = _main([f"--run={workdir}", "--samples=3", "--seed=5", "--temperature=1.5",
                     "--max_new_tokens=6"], stdin="1+2=\n\n33+4=\n")
  assert code == 0
  lines = out.splitlines()
  assert [line[:4] for line in lines] == ["[0] ", "[1] ", "[2] "] * 2
  model = cfg.role_model("policy")
  sampling = sampler.SamplingConfig(max_new_tokens=6, temperature=1.5,
                                    stop_tokens=(tokenizer.eos_id,))
  for i, prompt in enumerate(["1+2=", "33+4="]):
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    tokens = np.zeros((3, 16), np.int32)
    tokens[:, 16 - len(ids):] = ids
    mask = tokens != 0
    got = sampler.sample(params, tokens, mask, jax.random.fold_in(jax.random.key(5), i),
                         model, sampling, tokenizer.pad_id)
    want = [tokenizer.decode(np.asarray(t)[np.asarray(m)], strict=False)
            for t, m in zip(got.tokens, got.mask)]
    assert [line[4:] for line in lines[3 * i:3 * i + 3]] == want


def test_prompts_from_a_file_and_jsonl_output(run, tmp_path):
  workdir, _, _ = run
  path = tmp_path / "prompts.txt"
  path.write_text("12+34=\n7+8=\n")
  args = [f"--run={workdir}", "--temperature=0", "--max_new_tokens=5"]
  _, from_file = _main(args + [f"--prompts_file={path}", "--no_stream"])
  _, from_flags = _main(args + ["--prompt=12+34=", "--prompt=7+8="])
  assert from_file == from_flags
  _, as_json = _main(args + [f"--prompts_file={path}", "--jsonl"])
  records = [json.loads(line) for line in as_json.splitlines()]
  assert [r["prompt"] for r in records] == ["12+34=", "7+8="]
  assert [r["completions"][0] + "\n" for r in records] == from_flags.splitlines(True)


@pytest.fixture(scope="module")
def chat_dir(run, tmp_path_factory):
  """A HF checkpoint with the ASCII character tokenizer and a chat template."""
  _, cfg, _ = run
  tokenizer = tok_lib.CharTokenizer(tok_lib.ASCII_ALPHABET)
  model = dataclasses.replace(cfg.role_model("policy"), vocab_size=tokenizer.vocab_size)
  params = _scaled(tfm.init(model, jax.random.key(11)), 2.5)
  directory = str(tmp_path_factory.mktemp("chat") / "hf")
  tok_dir = str(tmp_path_factory.mktemp("chat_tokenizer"))
  tok_lib.save_hf_tokenizer(tokenizer, tok_dir)
  with open(os.path.join(tok_dir, "tokenizer_config.json")) as f:
    tok_config = json.load(f)
  tok_config["chat_template"] = CHAT_TEMPLATE
  with open(os.path.join(tok_dir, "tokenizer_config.json"), "w") as f:
    json.dump(tok_config, f)
  hf.save_hf_checkpoint(params, model, directory, family="llama", tokenizer_dir=tok_dir,
                        hf_config_template={"pad_token_id": 0, "bos_token_id": 1,
                                            "eos_token_id": 2})
  return directory


def test_chat_mode_answers_as_transformers_generate_does(chat_dir):
  import torch
  import transformers
  turns = ["hi there", "and then?"]
  code, out = _main([f"--hf_dir={chat_dir}", "--chat", "--temperature=0",
                     "--max_new_tokens=12"], stdin="\n".join(turns) + "\n\n")
  assert code == 0
  replies = out.split("\n")[:-1]
  assert len(replies) == 2
  model = transformers.AutoModelForCausalLM.from_pretrained(chat_dir, dtype=torch.float32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(chat_dir)
  history, want = [], []
  for turn in turns:
    history.append({"role": "user", "content": turn})
    ids = tokenizer.apply_chat_template(history, add_generation_prompt=True,
                                        return_dict=False)
    with torch.no_grad():
      gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                                                          dtype=torch.long),
                           max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=0)
    reply = tokenizer.decode(gen[0, len(ids):], skip_special_tokens=True)
    want.append(reply)
    history.append({"role": "assistant", "content": reply})
  assert replies == want
  assert len(set("".join(want))) > 2


def test_a_jsonl_conversation_and_a_system_turn_use_the_template(chat_dir, tmp_path):
  path = tmp_path / "prompts.jsonl"
  path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi there"}]}) + "\n"
                  + json.dumps({"prompt": "hi there"}) + "\n")
  s = sample_lib.Sampler(sample_lib.SampleSettings(hf_dir=chat_dir, format="chat",
                                                   system="be kind"))
  prompts = sample_lib.read_prompts([], str(path), io.StringIO())
  assert prompts[0] == [{"role": "user", "content": "hi there"}] and prompts[1] == "hi there"
  text = "s:be kind\nu:hi there\na:"
  assert s.prompt_ids(prompts[0]) == s.prompt_ids(prompts[1]) == s.tokenizer.encode(text)


@pytest.mark.parametrize("args, stdin, names", [
    (["--run={run}", "--role=reference", "--prompt=1"], "", "holds role 'reference'"),
    (["--run={run}", "--role=critic", "--prompt=1"], "", "'critic'"),
    (["--run={run}", "--format=chat", "--prompt=1"], "", "chat template"),
    (["--run={run}", "--chat"], "hi\n", "chat template"),
    (["--run={run}", "--prompts_file={tmp}/missing.txt"], "", "missing.txt"),
    (["--run={run}", "--prompts_file={tmp}/bad.jsonl"], "", "bad.jsonl:2"),
    (["--run={run}"], "\n\n", "no prompts in stdin"),
    (["--run={run}", "--top_k=999", "--prompt=1"], "", "--top_k (999)"),
    (["--run={run}", "--top_p=0", "--prompt=1"], "", "--top_p"),
    (["--hf_dir={tmp}", "--prompt=1"], "", "config.json"),
    ([], "", "--run"),
])
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys, args, stdin, names):
  (tmp_path / "bad.jsonl").write_text('{"prompt": "1+1="}\n{"promt": "2"}\n')
  argv = [a.format(run=run[0], tmp=tmp_path) for a in args]
  code, out = _main(argv, stdin)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and out == ""
  assert len(err) == 1 and err[0].startswith("error: ") and names in err[0], err


@pytest.mark.slow
def test_the_command_streams_from_a_pipe(run):
  """As a user runs it: the module as a program, a prompt piped in."""
  workdir, _, _ = run
  proc = subprocess.run([sys.executable, "-m", "rlalign.sample", f"--run={workdir}",
                         "--temperature=0", "--max_new_tokens=10"], input="12+34=\n",
                        capture_output=True, text=True, timeout=300, cwd=REPO,
                        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert proc.returncode == 0, proc.stderr
  code, out = _main([f"--run={workdir}", "--temperature=0", "--max_new_tokens=10",
                     "--prompt=12+34="])
  assert proc.stdout == out and out.strip()
