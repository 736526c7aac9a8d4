"""Proxy and gold reward against sqrt(KL to the reference), from runs' own metrics.

  python -m rlalign.eval.proxy_gold --run=proxy=/tmp/oo_proxy --run=ensemble=/tmp/oo_ens \\
      --out=/tmp/oo_report [--proxy=monitor/proxy --gold=monitor/gold]

Each run's RL steps log the proxy (the learned reward it trains on, or a monitor of it), the
gold judge as a monitor (``monitor/<source>``, never trained on) and ``kl_sequence``, the
per-sequence KL(pi || reference) estimated on the step's own samples. Over-optimisation shows
as gold rising, peaking and falling while the proxy keeps rising (Gao et al. 2023, who plot
against sqrt(KL)). Writes ``proxy_gold.png`` and ``proxy_gold.json``: per run the peak gold
(of a centred moving average over ``--window`` logged steps, so one noisy batch does not make
the peak), the sqrt(KL) and step there, and the first and last values.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from rlalign import metrics as metrics_lib


def curves(records: Sequence[Mapping[str, Any]], proxy: str, gold: str) -> Dict[str, np.ndarray]:
  """The steps that log all of proxy, gold and kl_sequence, as arrays."""
  rows = [r for r in records if all(isinstance(r.get(k), (int, float))
                                    for k in (proxy, gold, "kl_sequence"))]
  if not rows:
    raise ValueError(f"no step logs all of {proxy!r}, {gold!r} and 'kl_sequence'")
  get = lambda k: np.array([float(r[k]) for r in rows])
  return {"step": get("step"), "proxy": get(proxy), "gold": get(gold),
          "sqrt_kl": np.sqrt(np.maximum(get("kl_sequence"), 0.0))}


def smooth(x: np.ndarray, window: int) -> np.ndarray:
  """A centred moving average that shrinks at the ends (no padding values)."""
  if window <= 1:
    return x
  half = window // 2
  return np.array([x[max(0, i - half):i + half + 1].mean() for i in range(len(x))])


def summarise(c: Mapping[str, np.ndarray], window: int) -> Dict[str, float]:
  gold = smooth(c["gold"], window)
  peak = int(np.argmax(gold))
  return {"peak_gold": float(gold[peak]), "sqrt_kl_at_peak": float(c["sqrt_kl"][peak]),
          "kl_at_peak": float(c["sqrt_kl"][peak] ** 2), "step_at_peak": float(c["step"][peak]),
          "first_gold": float(gold[0]), "last_gold": float(gold[-1]),
          "first_proxy": float(c["proxy"][0]), "last_proxy": float(c["proxy"][-1]),
          "last_sqrt_kl": float(c["sqrt_kl"][-1]), "steps": float(len(gold))}


def plot(runs: Mapping[str, Mapping[str, np.ndarray]], out_png: str, window: int,
         proxy: str, gold: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  for i, (label, c) in enumerate(runs.items()):
    color = f"C{i}"
    axes[0].plot(c["sqrt_kl"], c["proxy"], color=color, alpha=0.35, lw=1)
    axes[0].plot(c["sqrt_kl"], smooth(c["proxy"], window), color=color, label=label)
    axes[1].plot(c["sqrt_kl"], c["gold"], color=color, alpha=0.35, lw=1)
    axes[1].plot(c["sqrt_kl"], smooth(c["gold"], window), color=color, label=label)
    s = summarise(c, window)
    axes[1].plot([s["sqrt_kl_at_peak"]], [s["peak_gold"]], "o", color=color)
    steps = c["step"] - c["step"][0]
    axes[2].plot(steps, smooth(c["gold"], window), color=color, label=label)
  axes[0].set(title=f"proxy ({proxy})", xlabel="sqrt(KL(pi || reference)) per sequence")
  axes[1].set(title=f"gold ({gold}); dots: peaks", xlabel="sqrt(KL(pi || reference)) per sequence")
  axes[2].set(title="gold by RL step", xlabel="RL steps")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  metrics_lib.save_png(fig, out_png, dpi=110)
  plt.close(fig)


def report(runs: Mapping[str, str], out_dir: str, *, proxy: str = "monitor/proxy",
           gold: str = "monitor/gold", window: int = 5) -> Dict[str, Dict[str, float]]:
  """Reads each run's metrics.jsonl, writes proxy_gold.png and .json under ``out_dir``."""
  loaded = {}
  for label, workdir in runs.items():
    path = os.path.join(workdir, metrics_lib.METRICS_FILENAME)
    if not os.path.exists(path):
      raise FileNotFoundError(f"run {label!r}: no {path}")
    try:
      loaded[label] = curves(metrics_lib.read_jsonl(path), proxy, gold)
    except ValueError as e:
      raise ValueError(f"run {label!r} ({path}): {e}") from None
  os.makedirs(out_dir, exist_ok=True)
  table = {label: summarise(c, window) for label, c in loaded.items()}
  plot(loaded, os.path.join(out_dir, "proxy_gold.png"), window, proxy, gold)
  payload = json.dumps({"proxy": proxy, "gold": gold, "window": window, "runs": table},
                       indent=2).encode()
  metrics_lib.atomic_write(os.path.join(out_dir, "proxy_gold.json"), lambda f: f.write(payload))
  return table


def main(argv: List[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlalign.eval.proxy_gold",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", action="append", required=True, metavar="LABEL=WORKDIR")
  parser.add_argument("--out", required=True)
  parser.add_argument("--proxy", default="monitor/proxy")
  parser.add_argument("--gold", default="monitor/gold")
  parser.add_argument("--window", type=int, default=5)
  args = parser.parse_args(argv)
  runs = {}
  for item in args.run:
    label, sep, workdir = item.partition("=")
    if not sep or not label or not workdir:
      parser.error(f"--run expects LABEL=WORKDIR, got {item!r}")
    runs[label] = workdir
  try:
    table = report(runs, args.out, proxy=args.proxy, gold=args.gold, window=args.window)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{'run':<12} {'peak gold':>9} {'KL@peak':>8} {'step':>6} {'last gold':>9} "
        f"{'last proxy':>10} {'last KL':>8}")
  for label, s in table.items():
    print(f"{label:<12} {s['peak_gold']:9.3f} {s['kl_at_peak']:8.2f} {s['step_at_peak']:6.0f} "
          f"{s['last_gold']:9.3f} {s['last_proxy']:10.3f} {s['last_sqrt_kl'] ** 2:8.2f}")
  print(f"wrote {os.path.join(args.out, 'proxy_gold.png')} and proxy_gold.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
