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

from rlalign.parallel.mesh import DEFAULT_RULES


def get_config(arg: str = ""):
  if not arg:
    raise ValueError("grpo_jsonl.py needs the prompt file: --config=configs/grpo_jsonl.py:"
                     "/path/train.jsonl[,/path/test.jsonl]")
  train_path, _, test_path = arg.partition(",")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                 d_ff=256, tie_embeddings=True)
  c.data = dict(task="jsonl", data_dir="", train_path=train_path, test_path=test_path or train_path,
                max_prompt_len=24, max_answer_len=8)
  c.sampling = dict(max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0)
  c.warm_start = dict(steps=1000, batch_size=64,
                      optimizer=dict(learning_rate=3e-3, warmup_steps=100))
  c.rl = dict(batch_size=256, group_size=8, epochs=1, minibatches=2, advantage="group_norm",
              rewards={"exact_match": 1.0})
  c.optimizer = dict(learning_rate=5e-4, warmup_steps=10, max_grad_norm=1.0)
  c.objective = dict(name="grpo", clip_eps=0.2, kl_coef=1e-3, kl_estimator="k3",
                     entropy_coef=0.0, aggregation="token")
  # data x fsdp x tensor; -1 takes the devices left. Rules map logical axes to mesh axes.
  c.mesh = dict(axes=("data", "fsdp", "tensor"), ici=(-1, 1, 1), dcn=(1, 1, 1),
                rules=dict(DEFAULT_RULES))
  c.train = dict(steps=300, log_every=10, eval_every=50, checkpoint_every=50,
                 eval_batch_size=256)
  return ml_collections.ConfigDict(c.to_dict())
