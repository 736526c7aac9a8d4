"""GRPO on reversed-digit addition, after a warm start on a sloppy teacher.

The warm start imitates a teacher that drops each carry with probability 0.7, so it learns the
format and the column sums but carries unreliably. RL with an exact-match verifier (in-graph,
on token ids) must find the carries on its own; the whole RL iteration is one jitted program.

  python -m rlalign.main --config=configs/grpo_addition.py --workdir=/tmp/rlalign_addition

Expected on 2 CPU cores, in about 2 minutes: held-out greedy pass@1 rises from 0.17 after
the warm start (it solves exactly the carry-free problems) to 1.00 after 300 GRPO steps, and
sampled (T=1) pass@1 from 0.30 to 0.99. ``:smoke`` shrinks everything to a seconds-long run
for tests.
"""
import ml_collections

from rlalign.parallel.mesh import DEFAULT_RULES


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = dict(vocab_size=16, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                 d_ff=256, tie_embeddings=True)
  c.data = dict(task="addition", data_dir="", max_prompt_len=10, max_answer_len=5,
                max_digits=3, carry_drop=0.7, num_train=50_000, num_test=512)
  c.sampling = dict(max_new_tokens=5, temperature=1.0, top_k=0, top_p=1.0)
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
  # Set separate_sampler to give sampling its own mesh shape and rules (weights are resharded
  # into it every step); by default the sampler reads the learner's arrays.
  c.roles = dict(separate_sampler=False, sampler_mesh=dict(c.mesh))
  # lora_rank > 0 trains LoRA adapters on the (frozen) starting weights instead of all of them.
  c.adapter = dict(lora_rank=0, lora_alpha=16.0, lora_targets=r"layers/(q|k|v|o|gate|up|down)")
  c.train = dict(steps=300, log_every=10, eval_every=50, checkpoint_every=50,
                 eval_batch_size=256)

  c = ml_collections.ConfigDict(c.to_dict())
  if arg == "smoke":
    c.model.update(d_model=32, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64)
    c.data.update(num_train=512, num_test=64)
    c.warm_start.update(steps=4, batch_size=16)
    c.rl.update(batch_size=16, group_size=4)
    c.train.update(steps=4, log_every=2, eval_every=2, checkpoint_every=2, eval_batch_size=32)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected '' or 'smoke'")
  return c
