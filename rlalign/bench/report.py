"""The benchmark's tables (markdown) and figure (PNG), from the suite's raw results."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from rlalign.bench import flops, settings as S

GRPO_TARGETS = {"tiny": 3.0, "medium": 1.3, "gen_heavy": 2.0}
SAMPLER_TARGET = 3.0
ITERATION_FLOPS_TARGET = 0.5
MFU_TARGET = 0.6
PEERS = (("trl", "TRL"), ("tunix", "Tunix"))


def _ok(results, name) -> Optional[Dict[str, Any]]:
  r = results.get(name)
  return r["result"] if r and r.get("status") == "ok" else None


def _missing(results, name) -> str:
  r = results.get(name)
  if r is None:
    return "not run"
  return f"{r['status']} ({r.get('why', '')})"


def _verdict(ratio: Optional[float], target: float) -> str:
  if ratio is None:
    return "n/a"
  if ratio >= target:
    return f"met (≥{target:g}×)"
  return f"missed: {ratio:.2f}× of {target:g}× ({ratio / target:.0%} of the target)"


def sampler_table(results) -> List[str]:
  ours, hf = _ok(results, "sampler/rlalign"), _ok(results, "sampler/transformers")
  if ours is None:
    return [f"Sampler: {_missing(results, 'sampler/rlalign')}"]
  theirs = {(p["batch"], p["prompt_len"], p["new_tokens"]): p for p in (hf or {}).get("points", [])}
  lines = ["| batch | prompt | new tokens | rlalign tokens/s | transformers tokens/s | ratio |",
           "|---:|---:|---:|---:|---:|---:|"]
  for p in ours["points"]:
    key = (p["batch"], p["prompt_len"], p["new_tokens"])
    other = theirs.get(key)
    ratio = p["tokens_per_s"] / other["tokens_per_s"] if other else None
    bold = "**" if key == (32, 32, 128) else ""
    lines.append(f"| {bold}{key[0]}{bold} | {bold}{key[1]}{bold} | {bold}{key[2]}{bold} | "
                 f"{p['tokens_per_s']:.0f} | "
                 f"{other['tokens_per_s']:.0f} |" if other else
                 f"| {key[0]} | {key[1]} | {key[2]} | {p['tokens_per_s']:.0f} | - |")
    if other:
      lines[-1] += f" {bold}{ratio:.2f}×{bold} |"
    else:
      lines[-1] += " - |"
  target = next((p for p in ours["points"]
                 if (p["batch"], p["prompt_len"], p["new_tokens"]) == (32, 32, 128)), None)
  if target and (32, 32, 128) in theirs:
    ratio = target["tokens_per_s"] / theirs[(32, 32, 128)]["tokens_per_s"]
    lines.append("")
    lines.append(f"Target (batch 32, 32-token prompts, 128 new tokens): {_verdict(ratio, SAMPLER_TARGET)}.")
  return lines


def grpo_table(results) -> List[str]:
  lines = ["| setting (prompts × group × new tokens) | rlalign | TRL | Tunix | vs TRL | vs Tunix "
           "| target |", "|---|---:|---:|---:|---:|---:|---|"]
  startup = ["| setting | rlalign | rlalign, relaunched (compile cache) | TRL | Tunix |",
             "|---|---:|---:|---:|---:|"]
  for name, setting in S.GRPO_SETTINGS.items():
    ours = _ok(results, f"grpo/{name}/rlalign")
    if ours is None and f"grpo/{name}/rlalign" not in results:
      continue
    peers = {k: _ok(results, f"grpo/{name}/{k}") for k, _ in PEERS}
    cell = lambda r: f"{r['median_step_s'] * 1e3:.0f} ms" if r else "-"
    ratios = {k: (r["median_step_s"] / ours["median_step_s"] if r and ours else None)
              for k, r in peers.items()}
    have = [v for v in ratios.values() if v is not None]
    verdict = _verdict(min(have), GRPO_TARGETS[name]) if have else "n/a"
    label = (f"{name} ({setting.prompts_per_step} × {setting.group_size} × "
             f"{setting.new_tokens}, {setting.model})")
    fmt = lambda v: f"{v:.2f}×" if v is not None else "-"
    lines.append(f"| {label} | {cell(ours)} | {cell(peers['trl'])} | {cell(peers['tunix'])} | "
                 f"{fmt(ratios['trl'])} | {fmt(ratios['tunix'])} | {verdict} |")
    s = lambda r: f"{r['startup_s']:.1f} s (first step {r['first_step_s']:.1f} s)" if r else "-"
    relaunch = _ok(results, f"grpo/{name}/rlalign_relaunch")
    startup.append(f"| {name} | {s(ours)} | {s(relaunch)} | {s(peers['trl'])} | "
                   f"{s(peers['tunix'])} |")
  lines += ["", "Necessary work per iteration (6N per trained token, 2N per reference-scored "
            "and per generated token) and the rate each framework sustains on it:", "",
            "| setting | GFLOP per iteration | rlalign GFLOP/s | TRL GFLOP/s | Tunix GFLOP/s |",
            "|---|---:|---:|---:|---:|"]
  from rlalign.bench import fixtures
  for name, setting in S.GRPO_SETTINGS.items():
    if f"grpo/{name}/rlalign" not in results:
      continue
    cfg = fixtures.model_config(S.MODELS[setting.model])
    work = flops.grpo_iteration_flops(cfg, setting.rollouts, setting.prompt_len,
                                      setting.new_tokens)["total"]
    rate = lambda key: (f"{work / r['median_step_s'] / 1e9:.1f}"
                        if (r := _ok(results, f"grpo/{name}/{key}")) else "-")
    lines.append(f"| {name} | {work / 1e9:.2f} | {rate('rlalign')} | {rate('trl')} | "
                 f"{rate('tunix')} |")
  lines += ["", "Median iteration time after the first. Start-up, from launching the process "
            "to the end of the first finished RL step (imports, model load and compilation "
            "included):", ""] + startup
  spread = []
  for k, v in results.items():
    rounds = (v.get("result") or {}).get("round_median_step_s") if isinstance(v, dict) else None
    if k.startswith("grpo/") and rounds:
      spread.append(f"{k}: " + ", ".join(f"{x * 1e3:.0f}" for x in rounds) + " ms")
  if spread:
    lines += ["", "Median step of each interleaved round (the table shows their median): "
              + "; ".join(spread) + "."]
  failed = [f"- {k}: {_missing(results, k)}" for k in results
            if k.startswith("grpo/") and results[k].get("status") != "ok"]
  if failed:
    lines += ["", "Not measured:"] + failed
  return lines


def efficiency_table(results) -> List[str]:
  eff = _ok(results, "efficiency")
  if eff is None:
    return [f"Efficiency: {_missing(results, 'efficiency')}"]
  lines = []
  peak = eff.get("peak", {})
  if peak:
    lines.append("Measured matmul peak: " + ", ".join(
        f"{d} {p['flops_per_s'] / 1e9:.1f} GFLOP/s" for d, p in peak.items()) + ".")
    lines.append("")
  if eff.get("mfu"):
    lines += ["| update step (GRPO loss, backward, Adam) | params | tokens | time | MFU (6N) "
              "| MFU (6N + attention) |", "|---|---:|---:|---:|---:|---:|"]
    for r in eff["mfu"]:
      lines.append(f"| {r['model']}, {r['dtype']}{', remat' if r['remat'] else ''} | "
                   f"{r['params'] / 1e6:.1f}M | {r['batch']} × {r['seq']} | "
                   f"{r['median_s'] * 1e3:.0f} ms | {r['mfu_6n']:.1%} | "
                   f"{r['mfu_with_attention']:.1%} |")
    # The target is judged against the fastest matmul of any dtype: a dtype with a slower
    # peak must not look efficient for being slow.
    top = max(p["flops_per_s"] for p in peak.values())
    best = max(r["flops_per_s_6n"] / top for r in eff["mfu"])
    lines += ["", "MFU columns divide by the peak of the step's own dtype. Against the fastest "
              f"peak of any dtype ({top / 1e9:.1f} GFLOP/s), the best update reaches "
              f"{best:.1%} (6N): target 60% {'met' if best >= MFU_TARGET else 'missed'}."]
  medium = _ok(results, "grpo/medium/rlalign")
  if medium and peak:
    from rlalign.bench import fixtures
    shape = S.MODELS[S.GRPO_SETTINGS["medium"].model]
    cfg = fixtures.model_config(shape)
    st = S.GRPO_SETTINGS["medium"]
    work = flops.grpo_iteration_flops(cfg, st.rollouts, st.prompt_len, st.new_tokens)
    rate = work["total"] / medium["median_step_s"]
    frac = rate / peak["float32"]["flops_per_s"]
    lines += ["", f"Whole GRPO iteration at the medium setting: {work['total'] / 1e9:.2f} GFLOP "
              f"necessary (train {work['train'] / 1e9:.2f}, reference {work['reference'] / 1e9:.2f}"
              f", generate {work['generate'] / 1e9:.2f}) in {medium['median_step_s'] * 1e3:.0f} ms"
              f" = {rate / 1e9:.1f} GFLOP/s, {frac:.1%} of the float32 peak (target 50%: "
              f"{'met' if frac >= ITERATION_FLOPS_TARGET else 'missed'})."]
  if eff.get("compiles"):
    c = eff["compiles"]
    per = ", ".join(f"{k}-token bucket: {v['compiles']} compile(s) over {v['steps']} steps"
                    for k, v in c["per_bucket"].items())
    lines += ["", f"Compilations over {c['steps']} RL steps with prompts of 3 to 32 tokens and "
              f"buckets {c['buckets']}: {per}; {c['total_compiles']} in all "
              f"({'one per bucket' if c['one_per_bucket'] else 'NOT one per bucket'})."]
  if eff.get("memory"):
    lines += ["", "| fused RL step | params | grads | Adam | reference | KV cache | minimum | "
              "XLA peak (args + outputs − donated + temp) | peak / minimum |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    mib = lambda b: f"{b / 2**20:.1f} MiB"
    for r in eff["memory"]:
      m = r["minimum_bytes"]
      lines.append(f"| {r['setting']}{', remat' if r.get('remat') else ''} | {mib(m['params'])} | {mib(m['grads'])} | "
                   f"{mib(m['optimizer'])} | {mib(m['reference'])} | {mib(m['kv_cache'])} | "
                   f"{mib(m['total'])} | {mib(r['xla']['peak'])} | {r['peak_over_minimum']:.2f}× |")
  return lines


def markdown(results: Dict[str, Any]) -> str:
  meta = results.get("_meta", {})
  out = [f"# rlalign benchmark", "", f"`{meta.get('command', 'python -m rlalign.bench')}` — "
         f"{meta.get('time', '')}, {meta.get('cpus', '?')} CPUs. All figures from this one "
         "invocation.", "", "## Sampler: generated tokens/s", ""]
  out += sampler_table(results)
  out += ["", "## GRPO iteration", ""] + grpo_table(results)
  out += ["", "## Efficiency", ""] + efficiency_table(results)
  return "\n".join(out) + "\n"


def plot(results: Dict[str, Any], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  ours, hf = _ok(results, "sampler/rlalign"), _ok(results, "sampler/transformers")
  ax = axes[0]
  if ours:
    labels = [f"{p['batch']}/{p['prompt_len']}/{p['new_tokens']}" for p in ours["points"]]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [p["tokens_per_s"] for p in ours["points"]], 0.4,
           label="rlalign")
    if hf:
      theirs = {(p["batch"], p["prompt_len"], p["new_tokens"]): p["tokens_per_s"]
                for p in hf["points"]}
      ax.bar([x + 0.2 for x in xs], [theirs.get((p["batch"], p["prompt_len"], p["new_tokens"]), 0)
                                     for p in ours["points"]], 0.4, label="transformers")
    ax.set_xticks(list(xs), labels, rotation=60, fontsize=7)
    ax.set_yscale("log")
  ax.set_title("sampler tokens/s (batch/prompt/new)")
  ax.set_ylabel("generated tokens/s")
  ax.legend()
  ax = axes[1]
  names = [n for n in S.GRPO_SETTINGS if f"grpo/{n}/rlalign" in results]
  for i, (key, label) in enumerate((("rlalign", "rlalign"),) + PEERS):
    vals = [(_ok(results, f"grpo/{n}/{key}") or {}).get("median_step_s", 0) for n in names]
    ax.bar([x + (i - 1) * 0.27 for x in range(len(names))], vals, 0.27, label=label)
  ax.set_xticks(list(range(len(names))), names)
  ax.set_yscale("log")
  ax.set_ylabel("median GRPO iteration (s)")
  ax.set_title("GRPO iteration time (lower is better)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
