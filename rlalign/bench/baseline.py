"""rlalign against an earlier rlalign: the GRPO runner of this checkout and of a git revision,
in interleaved rounds of one invocation, on the same fixtures.

  python -m rlalign.bench.baseline --rev=48ab134 --settings=tiny,medium --rounds=5 \
      --out=/tmp/rlalign_baseline

The revision is checked out with ``git worktree`` under ``<out>/baseline_src`` and its runner
(``python -m rlalign.bench.grpo``) runs from there, so each side imports its own code; both
load the fixtures this checkout writes. Rounds alternate the two sides, so a slow minute on a
shared machine hits both. Writes ``results.json`` and ``results.md``: each round's median
step, the median over rounds, and the ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from typing import Any, Dict, List

from rlalign.bench.peers.common import write_json

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _worktree(rev: str, path: str) -> str:
  """A detached checkout of ``rev`` at ``path`` (reused when it is already that commit)."""
  commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO,
                          check=True, capture_output=True, text=True).stdout.strip()
  if os.path.isdir(path):
    have = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                          text=True).stdout.strip()
    if have == commit:
      return commit
    subprocess.run(["git", "worktree", "remove", "--force", path], cwd=REPO, check=True)
  subprocess.run(["git", "worktree", "add", "--detach", path, commit], cwd=REPO, check=True,
                 capture_output=True)
  return commit


def _run(cwd: str, root: str, setting: str, out: str, log: str) -> Dict[str, Any]:
  import json
  argv = [sys.executable, "-m", "rlalign.bench.grpo", f"--root={root}", f"--setting={setting}",
          f"--out={out}"]
  with open(log, "w") as f:
    proc = subprocess.run(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(argv)} (in {cwd}) failed; see {log}")
  with open(out) as f:
    return json.load(f)


def main(argv: List[str] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rev", required=True, help="the git revision to compare against")
  p.add_argument("--settings", default="medium")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  out = os.path.abspath(args.out)
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  baseline_src = os.path.join(out, "baseline_src")
  commit = _worktree(args.rev, baseline_src)
  root = os.path.join(out, "fixtures")
  subprocess.run([sys.executable, "-m", "rlalign.bench.fixtures", root], check=True, cwd=REPO,
                 stdout=subprocess.DEVNULL)
  sides = {"current": REPO, "baseline": baseline_src}
  for side, cwd in sides.items():  # each side must import its own checkout's package
    where = subprocess.run([sys.executable, "-c", "import rlalign; print(rlalign.__file__)"],
                           cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()
    if not where.startswith(cwd + os.sep):
      raise RuntimeError(f"the {side} side imports rlalign from {where}, not from {cwd}")
  results: Dict[str, Any] = {"rev": args.rev, "commit": commit, "settings": {}}
  from tqdm import tqdm
  bar = tqdm(total=len(args.settings.split(",")) * args.rounds * 2, desc="baseline rounds")
  for setting in args.settings.split(","):
    rounds = {side: [] for side in sides}
    for r in range(args.rounds):
      # Alternate which side goes first, so neither always runs in the same slot.
      order = list(sides) if r % 2 == 0 else list(sides)[::-1]
      for side in order:
        tag = f"{setting}_{side}_{r}"
        result = _run(sides[side], root, setting, os.path.join(out, f"{tag}.json"),
                      os.path.join(out, "logs", f"{tag}.log"))
        rounds[side].append(result["median_step_s"])
        bar.update(1)
    medians = {side: statistics.median(v) for side, v in rounds.items()}
    results["settings"][setting] = {
        "rounds_median_step_s": rounds, "median_step_s": medians,
        "baseline_over_current": medians["baseline"] / medians["current"]}
  bar.close()
  write_json(os.path.join(out, "results.json"), results)
  lines = [f"GRPO iteration, this checkout against {args.rev} ({commit[:10]}), "
           f"{args.rounds} interleaved rounds; median step over rounds", "",
           "| setting | current | baseline | baseline / current | rounds (current) | "
           "rounds (baseline) |", "|---|---:|---:|---:|---|---|"]
  ms = lambda s: f"{s * 1e3:.1f} ms"
  for setting, r in results["settings"].items():
    lines.append(f"| {setting} | {ms(r['median_step_s']['current'])} | "
                 f"{ms(r['median_step_s']['baseline'])} | {r['baseline_over_current']:.3f} | "
                 + ", ".join(ms(x) for x in r["rounds_median_step_s"]["current"]) + " | "
                 + ", ".join(ms(x) for x in r["rounds_median_step_s"]["baseline"]) + " |")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
