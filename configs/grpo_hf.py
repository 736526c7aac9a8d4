"""GRPO starting from a local Hugging Face checkpoint (Llama, Qwen2/2.5, Qwen3, Gemma 1/2/3).

The argument is the checkpoint directory, then the JSONL prompt files ({"prompt", "answer"}
per line; the answer feeds the exact-match verifier):

  python -m rlalign.main --config=configs/grpo_hf.py:/ckpt/Qwen2.5-0.5B-Instruct,/data/train.jsonl,/data/test.jsonl \
      --workdir=/tmp/rlalign_hf

``model`` is the checkpoint's config.json mapped by ``rlalign.models.hf.model_config_from_dir``
(float32 params, bfloat16 compute, rematerialised layers); the weights load straight into
their shardings, the checkpoint's own tokenizer reads the prompts through its chat template,
and sampling stops at the checkpoint's EOS token(s). The trained policy is written back in
Hugging Face format to ``<workdir>/hf``, loadable with ``AutoModelForCausalLM``.

Expected: depends on the model and the prompts; tests/rl/test_hf_grpo.py runs it end to end
on a tiny random Qwen2 built in the test.
"""
import dataclasses

import ml_collections

from rlalign.models import hf
from rlalign.parallel.mesh import DEFAULT_RULES


def get_config(arg: str = ""):
  if not arg:
    raise ValueError("grpo_hf.py needs a checkpoint directory: --config=configs/grpo_hf.py:"
                     "/path/to/hf_checkpoint[,/path/train.jsonl[,/path/test.jsonl]]")
  ckpt, _, rest = arg.partition(",")
  train_path, _, test_path = rest.partition(",")
  model = dataclasses.replace(hf.model_config_from_dir(ckpt), param_dtype="float32",
                              dtype="bfloat16", remat=True)
  eos = hf.read_hf_config(ckpt).get("eos_token_id")
  eos = [eos] if isinstance(eos, int) else list(eos or [])

  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dataclasses.asdict(model)
  c.init = dict(hf_checkpoint=ckpt, export_hf=True)
  c.data = dict(task="jsonl", data_dir="", train_path=train_path, test_path=test_path or train_path,
                max_prompt_len=256, max_answer_len=256, tokenizer_dir=ckpt, prompt_format="chat",
                system_prompt="")
  c.sampling = dict(max_new_tokens=256, temperature=1.0, top_k=0, top_p=1.0,
                    stop_tokens=tuple(eos))
  c.warm_start = dict(steps=0, batch_size=16, optimizer=dict(learning_rate=1e-5, warmup_steps=10))
  c.rl = dict(batch_size=64, group_size=8, epochs=1, minibatches=4, advantage="group_norm",
              rewards={"exact_match": 1.0})
  c.optimizer = dict(learning_rate=1e-6, warmup_steps=10, max_grad_norm=1.0)
  c.objective = dict(name="grpo", clip_eps=0.2, kl_coef=1e-3, kl_estimator="k3",
                     entropy_coef=0.0, aggregation="token")
  c.mesh = dict(axes=("data", "fsdp", "tensor"), ici=(1, -1, 1), dcn=(1, 1, 1),
                rules=dict(DEFAULT_RULES))
  # Set separate_sampler to give sampling its own mesh shape and rules (weights are resharded
  # into it every step); by default the sampler reads the learner's arrays.
  c.roles = dict(separate_sampler=False, sampler_mesh=dict(c.mesh))
  # lora_rank > 0 trains LoRA adapters on the (frozen) starting weights instead of all of them.
  c.adapter = dict(lora_rank=0, lora_alpha=16.0, lora_targets=r"layers/(q|k|v|o|gate|up|down)")
  c.train = dict(steps=200, log_every=10, eval_every=50, checkpoint_every=50,
                 eval_batch_size=64)
  return ml_collections.ConfigDict(c.to_dict())
