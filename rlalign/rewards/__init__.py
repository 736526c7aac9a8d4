"""Rewards: the shared interface and the verifiers that register with it."""
from rlalign.rewards import base, verifiers
from rlalign.rewards.base import Reward, combine, get, host, in_graph, names

__all__ = ["Reward", "base", "combine", "get", "host", "in_graph", "names", "verifiers"]
