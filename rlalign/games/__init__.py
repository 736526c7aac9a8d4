"""Games between models: the meta-games that solvers such as PSRO play over populations.

- ``zero_sum``: Nash mixtures of a two-player zero-sum payoff matrix by linear programming,
  exploitability (NashConv), fictitious play, and the payoff matrix as a PNG heat map.
- ``psro``: Policy-Space Response Oracles over two populations, the oracles the caller's (RL
  phases in a recipe, exact best responses in a test), each payoff simulated once.
"""
