"""Generated tokens per second over a grid of batch size x prompt length x new tokens.

  python -m rlalign.bench.sampler --root=/tmp/rlalign_bench --framework=rlalign --out=r.json
  python -m rlalign.bench.sampler --root=/tmp/rlalign_bench --framework=hf --out=h.json

Both frameworks sample the same weights (the ``l4_d256`` checkpoint) from the same prompt ids
with the same settings: temperature 1, no top-k or top-p filtering, KV cache, and exactly
``new_tokens`` tokens per row (no early stop). rlalign's sampler is one jitted program
(prefill plus a ``while_loop`` decode); transformers runs ``generate``. Each framework runs in a
process of its own, so neither's thread pool slows the other.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Any, Dict, List, Sequence, Tuple

from rlalign.bench import fixtures
from rlalign.bench import settings as S
from rlalign.bench.peers.common import write_json

MODEL = "l4_d256"
TARGET = (32, 32, 128)  # batch, prompt length, new tokens: the headline setting
GRIDS = {
    "target": [TARGET],
    "full": sorted(set(itertools.product((1, 8, 32), (32, 128), (32, 128))) | {TARGET}),
}
REPEATS = 3


def _rlalign(model_dir: str, points: Sequence[Tuple[int, int, int]]) -> List[Dict[str, Any]]:
  import jax
  import jax.numpy as jnp
  from rlalign.models import hf
  from rlalign.sampling import sampler
  cfg, params = hf.load_hf_checkpoint(model_dir)
  out = []
  for batch, prompt_len, new_tokens in points:
    scfg = sampler.SamplingConfig(max_new_tokens=new_tokens, temperature=1.0)
    fn = jax.jit(lambda p, t, m, r, scfg=scfg: sampler.sample(p, t, m, r, cfg, scfg, S.PAD_ID))
    tokens = jnp.asarray(fixtures.prompt_ids(batch, prompt_len, cfg.vocab_size))
    mask = jnp.ones_like(tokens, bool)

    def call(i):
      t = time.perf_counter()
      samples = jax.block_until_ready(fn(params, tokens, mask, jax.random.key(i)))
      assert int(samples.lengths.min()) == new_tokens
      return time.perf_counter() - t

    first = call(0)
    times = [call(i + 1) for i in range(REPEATS)]
    out.append(_point(batch, prompt_len, new_tokens, first, times))
  return out


def _hf(model_dir: str, points: Sequence[Tuple[int, int, int]]) -> List[Dict[str, Any]]:
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  model.eval()
  out = []
  for batch, prompt_len, new_tokens in points:
    tokens = torch.as_tensor(fixtures.prompt_ids(batch, prompt_len, model.config.vocab_size),
                             dtype=torch.long)
    mask = torch.ones_like(tokens)

    def call(i):
      torch.manual_seed(i)
      t = time.perf_counter()
      with torch.inference_mode():
        # top_k=0 and top_p=1 turn off generate's default filtering (top_k=50);
        # min_new_tokens keeps every row generating for exactly new_tokens.
        seqs = model.generate(tokens, attention_mask=mask, do_sample=True, temperature=1.0,
                              top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, pad_token_id=S.PAD_ID)
      assert seqs.shape == (batch, prompt_len + new_tokens)
      return time.perf_counter() - t

    first = call(0)
    times = [call(i + 1) for i in range(REPEATS)]
    out.append(_point(batch, prompt_len, new_tokens, first, times))
  return {"points": out, "version": transformers.__version__, "torch": torch.__version__,
          "threads": torch.get_num_threads()}


def _point(batch, prompt_len, new_tokens, first, times) -> Dict[str, Any]:
  median = statistics.median(times)
  return {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
          "first_call_s": first, "median_s": median, "times_s": times,
          "tokens_per_s": batch * new_tokens / median}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True)
  parser.add_argument("--framework", required=True, choices=("rlalign", "hf"))
  parser.add_argument("--grid", default="full", choices=sorted(GRIDS))
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  model_dir = fixtures.write_model(args.root, MODEL)
  points = GRIDS[args.grid]
  if args.framework == "rlalign":
    result = {"points": _rlalign(model_dir, points)}
  else:
    result = _hf(model_dir, points)
  result.update(framework=args.framework, model=MODEL)
  write_json(args.out, result)
  for p in result["points"]:
    print(f"{args.framework} B={p['batch']} P={p['prompt_len']} N={p['new_tokens']}: "
          f"{p['tokens_per_s']:.0f} tokens/s")


if __name__ == "__main__":
  main()
