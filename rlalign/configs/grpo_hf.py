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

from rlalign import presets
from rlalign.models import hf


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
  c.data = dict(task="jsonl", data_dir="", train_path=train_path, test_path=test_path or train_path,
                max_prompt_len=256, max_answer_len=256, tokenizer_dir=ckpt, prompt_format="chat",
                system_prompt="")
  c.sampling = dict(max_new_tokens=256, temperature=1.0, top_k=0, top_p=1.0,
                    stop_tokens=tuple(eos))
  # The policy starts from the checkpoint and is exported back to <workdir>/hf at the end.
  c.roles = presets.policy_and_reference(
      optimizer=dict(learning_rate=1e-6, warmup_steps=10, max_grad_norm=1.0),
      weights=dict(source="hf", path=ckpt), export_hf=True)
  c.phases = dict(
      # adapter.lora_rank > 0 trains LoRA adapters on the (frozen) starting weights.
      rl=dict(presets.grpo_phase(steps=200, batch_size=64, group_size=8, minibatches=4),
              adapter=dict(lora_rank=0, lora_alpha=16.0,
                           lora_targets=r"layers/(q|k|v|o|gate|up|down)")))
  c.recipe = dict(name="sequence", order=("rl",))
  c.mesh = presets.mesh(ici=(1, -1, 1))
  c.sampler_layout = presets.sampler_layout(c.mesh)
  c.train = dict(presets.LOOP, eval_batch_size=64)
  return ml_collections.ConfigDict(c.to_dict())
