"""Networks as pure functions of parameter pytrees."""
from rlalign.models.transformer import (ModelConfig, KVCache, abstract_params, count_params,
                                        forward, init, init_cache, lm_logits, logical_axes,
                                        param_specs, positions_from_mask, scalar_output,
                                        token_logprobs)

__all__ = ["ModelConfig", "KVCache", "abstract_params", "count_params", "forward", "init",
           "init_cache", "lm_logits", "logical_axes", "param_specs", "positions_from_mask",
           "scalar_output", "token_logprobs"]
