"""The benchmark suite from one command: every measurement, a markdown table and JSON.

  python -m rlalign.bench --out=/tmp/rlalign_bench_out

Peers: ``pip install -e ".[bench]"`` brings TRL (and transformers, for ``generate``); Tunix
needs a virtualenv of its own (``bash rlalign/bench/setup_tunix.sh``, found at
``.venvs/tunix`` or ``--tunix_python``). A peer that is not installed is reported as skipped.

Each measurement runs in a fresh process, one at a time, so no framework's thread pool or
compilation cache touches another's timing, and start-up is measured from the launch of the
process. What it writes under ``--out``:

  results.json   every measurement, raw
  results.md     the tables (also printed)
  results.png    tokens/s and GRPO iteration times per framework
  logs/          each process's output
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from rlalign.bench import report
from rlalign.bench import settings as S

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEERS = os.path.join(REPO, "rlalign", "bench", "peers")
DEFAULT_TUNIX = os.path.join(REPO, ".venvs", "tunix", "bin", "python")


def _task(name: str, argv: List[str], out: str, launch_time: bool = False) -> Dict[str, Any]:
  return {"name": name, "argv": argv, "out": out, "launch_time": launch_time}


def plan(args) -> List[Dict[str, Any]]:
  root, out = args.root, args.out
  res = lambda name: os.path.join(out, "raw", f"{name}.json")
  py = sys.executable
  tasks = []
  parts = args.parts.split(",")
  peers = set(args.peers.split(",")) if args.peers else set()
  if "sampler" in parts:
    tasks.append(_task("sampler/rlalign", [py, "-m", "rlalign.bench.sampler", f"--root={root}",
                                           "--framework=rlalign", f"--grid={args.grid}"],
                       res("sampler_rlalign")))
    if "hf" in peers:
      tasks.append(_task("sampler/transformers",
                         [py, "-m", "rlalign.bench.sampler", f"--root={root}",
                          "--framework=hf", f"--grid={args.grid}"], res("sampler_hf")))
  if "grpo" in parts:
    for setting in args.settings.split(","):
      common = [f"--root={root}", f"--setting={setting}"]
      cache = os.path.join(out, "jax_cache", setting)
      # Rounds interleave the frameworks, so a slow minute on a shared machine hits all of
      # them; the report takes the median over rounds. gen_heavy runs once (minutes a run).
      rounds = 1 if setting == "gen_heavy" else args.rounds
      for r in range(rounds):
        tag = "" if r == 0 else f"#{r}"
        # Round 0 compiles into an empty cache (a cold start); later rounds are relaunches.
        ours = [py, "-m", "rlalign.bench.grpo", *common, f"--compilation_cache_dir={cache}"]
        tasks.append(_task(f"grpo/{setting}/rlalign{tag}", ours,
                           res(f"grpo_{setting}_rlalign{tag}"), launch_time=True))
        if r == 0:
          tasks.append(_task(f"grpo/{setting}/rlalign_relaunch", ours,
                             res(f"grpo_{setting}_rlalign_relaunch"), launch_time=True))
        if "trl" in peers:
          tasks.append(_task(f"grpo/{setting}/trl{tag}",
                             [py, os.path.join(PEERS, "trl_grpo.py"), *common],
                             res(f"grpo_{setting}_trl{tag}"), launch_time=True))
        if "tunix" in peers:
          tasks.append(_task(f"grpo/{setting}/tunix{tag}",
                             [args.tunix_python, os.path.join(PEERS, "tunix_grpo.py"), *common],
                             res(f"grpo_{setting}_tunix{tag}"), launch_time=True))
  if "efficiency" in parts:
    tasks.append(_task("efficiency", [py, "-m", "rlalign.bench.efficiency", f"--root={root}",
                                      f"--compile_steps={args.compile_steps}"],
                       res("efficiency")))
  return tasks


def run_task(task: Dict[str, Any], log_dir: str, timeout: float) -> Dict[str, Any]:
  log = os.path.join(log_dir, task["name"].replace("/", "_") + ".log")
  argv = list(task["argv"]) + [f"--out={task['out']}"]
  if not os.path.exists(argv[0]) and argv[0] != sys.executable:
    return {"status": "skipped", "why": f"{argv[0]} not found", "log": log}
  if task["launch_time"]:
    argv.append(f"--launch_time={time.time()!r}")
  start = time.perf_counter()
  with open(log, "w") as f:
    try:
      proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout)
      code = proc.returncode
    except subprocess.TimeoutExpired:
      code = "timeout"
  wall = time.perf_counter() - start
  if code != 0 or not os.path.exists(task["out"]):
    with open(log) as f:
      tail = f.read()[-2000:]
    return {"status": "failed", "why": f"exit {code}", "log": log, "tail": tail, "wall_s": wall}
  with open(task["out"]) as f:
    return {"status": "ok", "result": json.load(f), "log": log, "wall_s": wall}


def merge_rounds(results: Dict[str, Any]) -> None:
  """Folds ``name#r`` rounds into ``name``: the median over rounds of each run's median step
  (start-up stays round 0's, the only cold start), with every round's figure kept."""
  import statistics
  for name in [k for k in results if "#" not in k]:
    rounds = [results[name]] + [v for k, v in results.items() if k.startswith(name + "#")]
    ok = [r["result"] for r in rounds if r.get("status") == "ok"]
    if len(rounds) == 1 or not ok:
      continue
    first = dict(ok[0])
    first["round_median_step_s"] = [r["median_step_s"] for r in ok]
    first["median_step_s"] = statistics.median(first["round_median_step_s"])
    results[name] = {**results[name], "status": "ok", "result": first}


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="/tmp/rlalign_bench_out")
  parser.add_argument("--root", default="/tmp/rlalign_bench",
                      help="where the shared checkpoints and prompts are written")
  parser.add_argument("--parts", default="sampler,grpo,efficiency")
  parser.add_argument("--peers", default="hf,trl,tunix")
  parser.add_argument("--settings", default=",".join(S.GRPO_SETTINGS))
  parser.add_argument("--grid", default="full", choices=("full", "target"))
  parser.add_argument("--compile_steps", type=int, default=100)
  parser.add_argument("--rounds", type=int, default=3,
                      help="interleaved runs of each framework on tiny and medium")
  parser.add_argument("--tunix_python", default=DEFAULT_TUNIX)
  parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per process")
  args = parser.parse_args(argv)
  for setting in args.settings.split(","):
    if setting not in S.GRPO_SETTINGS:
      parser.error(f"--settings: unknown setting {setting!r}; known: {sorted(S.GRPO_SETTINGS)}")
  os.makedirs(os.path.join(args.out, "raw"), exist_ok=True)
  shutil.rmtree(os.path.join(args.out, "jax_cache"), ignore_errors=True)  # cold first runs
  log_dir = os.path.join(args.out, "logs")
  os.makedirs(log_dir, exist_ok=True)
  subprocess.run([sys.executable, "-m", "rlalign.bench.fixtures", args.root], check=True,
                 stdout=subprocess.DEVNULL, cwd=REPO)
  from tqdm import tqdm
  tasks = plan(args)
  results: Dict[str, Any] = {}
  bar = tqdm(tasks, desc="benchmark", unit="run")
  for task in bar:
    bar.set_postfix_str(task["name"])
    results[task["name"]] = run_task(task, log_dir, args.timeout)
    if results[task["name"]]["status"] != "ok":
      tqdm.write(f"{task['name']}: {results[task['name']]['status']} "
                 f"({results[task['name']]['why']}; log {results[task['name']]['log']})")
  bar.close()
  merge_rounds(results)
  results["_meta"] = {"command": " ".join([os.path.basename(sys.executable), "-m",
                                           "rlalign.bench", *(argv or sys.argv[1:])]),
                      "time": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count()}
  with open(os.path.join(args.out, "results.json.tmp"), "w") as f:
    json.dump(results, f, indent=2)
  os.replace(os.path.join(args.out, "results.json.tmp"), os.path.join(args.out, "results.json"))
  markdown = report.markdown(results)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(markdown)
  report.plot(results, os.path.join(args.out, "results.png"))
  print(markdown)


if __name__ == "__main__":
  main()
