"""GRPO on your own prompts: a JSONL file of {"prompt", "answer", "demonstration"} lines.

The argument is the train file, optionally followed by a comma and a held-out file:

  python -m rlalign.main --config=configs/grpo_jsonl.py:/data/train.jsonl,/data/test.jsonl \
      --workdir=/tmp/rlalign_jsonl

``answer`` feeds the exact-match verifier and ``demonstration`` the supervised warm start
(lines without one are skipped by neither: an empty demonstration simply trains nothing).
Text is tokenized per character over printable ASCII and the model starts from scratch.

Expected: on the addition task written out as JSONL,

  python -c "import json; from rlalign.data import addition
  for split in ('train', 'test'):
    with open(f'/tmp/add_{split}.jsonl', 'w') as f:
      for ex in addition.generate_problems(split, 20000 if split == 'train' else 512, 3, 0.7, 0):
        f.write(json.dumps(ex) + '\\n')"

this config reproduces ``grpo_addition.py``'s curve more slowly (a 128-token vocabulary),
reaching held-out greedy pass@1 above 0.5 in about 10 minutes on 2 CPU cores.
"""
import ml_collections

from rlalign import presets


def get_config(arg: str = ""):
  if not arg:
    raise ValueError("grpo_jsonl.py needs the prompt file: --config=configs/grpo_jsonl.py:"
                     "/path/train.jsonl[,/path/test.jsonl]")
  train_path, _, test_path = arg.partition(",")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(presets.ADDITION_MODEL, vocab_size=128)
  c.data = dict(task="jsonl", data_dir="", train_path=train_path, test_path=test_path or train_path,
                max_prompt_len=24, max_answer_len=8)
  c.sampling = dict(presets.ADDITION_SAMPLING, max_new_tokens=8)
  c.roles = presets.policy_and_reference(
      optimizer=dict(learning_rate=5e-4, warmup_steps=10, max_grad_norm=1.0))
  c.phases = dict(warm_start=presets.sft_phase(**presets.ADDITION_WARM_START),
                  rl=presets.grpo_phase(steps=300, batch_size=256, group_size=8, minibatches=2))
  c.recipe = dict(name="sequence", order=("warm_start", "rl"))
  c.mesh = presets.mesh()
  c.sampler_layout = presets.sampler_layout(c.mesh)
  c.train = dict(presets.LOOP)
  return ml_collections.ConfigDict(c.to_dict())
