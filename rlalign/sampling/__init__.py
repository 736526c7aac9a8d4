"""In-graph sampling over a KV cache."""
from rlalign.sampling.sampler import SamplingConfig, Samples, filter_logits, sample

__all__ = ["SamplingConfig", "Samples", "filter_logits", "sample"]
