"""Experiment (not a test): is comparative loss "particularly superior for models with few parameters or
long input"? BBC News topic classification, baseline vs CmpLoss, paired over seeds.

    python bench/cmploss_claim.py                     # the default grid; prints its time estimate first
    python bench/cmploss_claim.py --estimate-only     # the grid and its estimated time; trains nothing
    python bench/cmploss_claim.py --max-minutes 60    # stops after the run that ends past 60 minutes
    python bench/cmploss_claim.py --models minilm-l3 --lengths long --sizes 64 --seeds 2   # a corner of it

The paper (Zhu et al., TOIS 2024) backs the claim with SQuAD over BERT sizes (small models) and HotpotQA
with Longformer (long inputs). Here both factors are crossed on one task:
  input length  short: the first 48 tokens of each article (its headline and first sentences), as
                       bench/bbc_experiment.py reads it; long: the first 256 tokens (--long-tokens), the
                       whole article for 12% of them and most of the median one (421 tokens).
  model size    minilm-l6: all-MiniLM-L6-v2 (6 layers, 22.7M parameters, 11.9M of them embeddings);
                minilm-l3: its first 3 pretrained layers (17.4M: half the transformer, the same
                embeddings and pooler; half the compute per token).
  train size    64 and 256 articles, class-stratified; each seed draws its own subset
                (configs/comploss/bbc.py, data.subset_seed = -1).
  arms          baseline: cross-entropy with ordinary dropout. CmpLoss (ultra target, c = 2, so both
                lengths pay 3 passes per update, at the baseline's steps, batch 16 and lr 2e-4):
                short input: CmpDrop, 2 nested-dropout submodels (as bench/bbc_experiment.py);
                long input: CmpCrop + CmpDrop: one view without some of its sentences (--crop-unit), then
                dropout (comploss_jax/crop_views.py; the crops are drawn once per run with its seed).
A seed's two arms share the training subset, the head's initialisation and the data order, so each
cell's evidence is the paired difference d_s = CmpLoss - baseline over seeds s: its mean, a 95% t
interval and a two-sided paired t-test. The claim itself is tested by contrasts of those gains, also
paired by seed (the subset depends on the seed only): gain(minilm-l3) - gain(minilm-l6) at each length
and size, and gain(long) - gain(short) at each model and size, and both averaged over the sizes.

Scores: accuracy and macro-F1 on BBC News' test split (444 held-out articles, never used for training or
selection). --select last (default): each run's final params are scored (the dev split is evaluated once,
at the end, and chooses nothing: with 2 epochs there is little to choose from); --select dev: each run
keeps its best epoch on the dev split (223 articles) and that checkpoint is scored on test (the
protocol of bench/bbc_experiment.py; one more dev evaluation per epoch).

Time, measured on this project's 2-core machine: the 40 short-input runs took 44 minutes, the 20
long-input MiniLM-L6 runs 101 minutes and the 20 long-input MiniLM-L3 runs 67 minutes (both long halves
partly beside other jobs), so the whole grid takes about 3.5 hours, over more than one invocation if need be.
--estimate-only prints the estimate per kind of run. Compiled programs are cached in
<workdir>/jax_cache, so only the first run of each kind compiles.

Resumable: each finished run writes <workdir>/<run>/run.json (its settings, scores and seconds); a
rerun reuses every run.json whose settings match and trains only the rest (a run cut off half way
starts over: its folder is cleared). Runs go seed by seed, so a stopped grid holds complete pairs.
Checkpoints are deleted after each run (--keep-checkpoints keeps them). The remaining time is estimated
from the finished runs' seconds (a fit of overhead + rate x work; before any run finishes, from this
machine's smoke runs). Outputs, rewritten after every invocation, under --out: results.json (every cell:
per-seed scores, paired mean difference, 95% CI, p; the contrasts), table.md, gain_vs_size.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

BBC_CONFIG = os.path.join(ROOT, "configs", "comploss", "bbc.py")
MODELS = {"minilm-l6": 6, "minilm-l3": 3}  # layers kept of all-minilm-l6-v2
LENGTHS = ("short", "long")
ARMS = ("baseline", "cmploss")
METRICS = ("accuracy", "macro_f1")
BATCH_SIZE = 16  # configs/comploss/bbc.py's
DEV_ARTICLES, TEST_ARTICLES, EVAL_CHUNK = 223, 444, 64
HIDDEN = 384  # MiniLM's width: attention's share of a layer's work grows as tokens / (6 x width)
# Seconds per run on 2 free cores = overhead + rate x work_units(run), until finished runs replace them
# with a fit of their own. Rate: bench/comploss_step.py's plain MiniLM-L6 16x128 step, 1.49 s on 2 idle
# cores (README), is 38,900 units (3.5 MFLOP each: 32% of the 288 GFLOP/s matmul peak). Overhead (data,
# tokenising every split, loading, compiling, checkpoints): the smoke runs' CPU seconds, 30-44 s for a
# run that compiles its programs; later runs of the same kind load them from the compilation cache.
DEFAULT_OVERHEAD_S = 15.0
DEFAULT_SECONDS_PER_UNIT = 3.8e-5


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the grid; every field enters its folder name, so changed settings never reuse
  a finished run's scores."""
  model: str
  length: str
  size: int
  seed: int
  arm: str
  tokens: int
  epochs: int
  n_drop: int
  n_crop: int
  crop_unit: str
  select: str

  @property
  def cell(self) -> tuple[str, str, int]:
    return self.model, self.length, self.size

  @property
  def name(self) -> str:
    arm = "baseline" if self.arm == "baseline" else f"cmploss_drop{self.n_drop}" + (
        f"_crop{self.n_crop}{self.crop_unit}" if self.n_crop else "")
    return f"{self.model}/{self.length}{self.tokens}/n{self.size}/e{self.epochs}_{self.select}/{arm}/seed={self.seed}"

  @property
  def layers(self) -> int:
    return MODELS[self.model]

  @property
  def steps(self) -> int:
    return max(self.size // BATCH_SIZE, 1) * self.epochs

  @property
  def passes(self) -> int:
    return 1 + self.n_drop + self.n_crop


def make_grid(models, lengths, sizes, seeds, *, epochs: int, short_tokens: int = 48, long_tokens: int = 256,
              short_cmp=(2, 0), long_cmp=(1, 1), crop_unit: str = "sentence", select: str = "last") -> list[Run]:
  """Runs in the order they train: seed by seed (a partial grid holds whole pairs), and within a seed
  cell by cell, baseline then CmpLoss. short_cmp / long_cmp: (n_drop, n_crop) of the CmpLoss arm."""
  runs = []
  for seed in seeds:
    for length in lengths:
      tokens, (n_drop, n_crop) = (short_tokens, short_cmp) if length == "short" else (long_tokens, long_cmp)
      for model in models:
        for size in sizes:
          for arm in ARMS:
            plain = arm == "baseline"
            runs.append(Run(model, length, size, seed, arm, tokens, epochs, 0 if plain else n_drop,
                            0 if plain else n_crop, crop_unit, select))
  return runs


# ---------------------------------------------------------------------------------------------- time
def work_units(run: Run) -> float:
  """Work of one run in layer-token passes: training (forward + backward ~ 3 forwards, over every
  submodel) plus the evaluations (dev once per epoch with --select dev, else once; test once; in
  chunks of 64). Attention adds tokens / (6 x width) to a layer's dense work."""
  evaluations = (run.epochs if run.select == "dev" else 1) * _padded(DEV_ARTICLES) + _padded(TEST_ARTICLES)
  tokens = run.steps * BATCH_SIZE * run.passes * 3 + evaluations
  return float(run.layers * run.tokens * (1 + run.tokens / (6 * HIDDEN)) * tokens)


def _padded(n: int) -> int:
  return -(-n // EVAL_CHUNK) * EVAL_CHUNK


def fit_timing(records) -> tuple[float, float, str]:
  """(overhead seconds, seconds per work unit, where from): least squares over finished runs when their
  work differs, else their mean rate above the default overhead, else the defaults (2 free cores)."""
  points = [(work_units(Run(**r["run"])), float(r["seconds"])) for r in records if r.get("seconds")]
  if len({round(u) for u, _ in points}) >= 2:
    units, seconds = np.asarray(points).T
    rate, overhead = np.polyfit(units, seconds, 1)
    if rate > 0 and overhead >= 0:
      return float(overhead), float(rate), f"fit to {len(points)} finished runs"
  if points:
    rates = [max(s - DEFAULT_OVERHEAD_S, 0.2 * s) / u for u, s in points]
    return DEFAULT_OVERHEAD_S, float(np.mean(rates)), f"{len(points)} finished runs"
  return DEFAULT_OVERHEAD_S, DEFAULT_SECONDS_PER_UNIT, "2 free cores, from measured step times; no run finished yet"


def estimate_seconds(runs, records) -> float:
  overhead, rate, _ = fit_timing(records)
  return sum(overhead + rate * work_units(r) for r in runs)


def human(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


# --------------------------------------------------------------------------------------------- runs
def run_config(run: Run):
  """The locked BBC config of one run (configs/comploss/bbc.py with this run's arg string)."""
  from trainkit.config_files import load_config_module
  arg = (f"train_size={run.size},seed={run.seed},epochs={run.epochs},max_length={run.tokens},"
         f"layers={run.layers},c={run.n_drop},c_crop={run.n_crop},crop={run.crop_unit}")
  config = load_config_module(BBC_CONFIG).get_config(arg)
  if config.batch_size != BATCH_SIZE:
    raise ValueError(f"{BBC_CONFIG}: batch size {config.batch_size}; this script's estimates assume {BATCH_SIZE}")
  config.progress_bar = False
  config.total_steps = run.steps
  config.eval_every = run.steps // run.epochs if run.select == "dev" else run.steps
  config.lock()
  return config


def train_run(run: Run, run_dir: str) -> dict:
  """The real per-run function: comploss_jax.train on the run's config; returns its results.json."""
  from comploss_jax.train import train
  return train(run_config(run), run_dir)


def load_record(workdir: str, run: Run) -> dict | None:
  path = os.path.join(workdir, run.name, "run.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  return record if record.get("run") == dataclasses.asdict(run) and "results" in record else None


def run_grid(runs, workdir: str, execute=train_run, *, max_minutes: float | None = None,
             keep_checkpoints: bool = False, clock=time.monotonic, progress: bool = True):
  """Trains every run without a run.json, in order; returns ({run name: record}, runs not done).

  execute(run, run_dir) -> results dict with a "test" entry. With max_minutes, no run starts once that
  much time has passed since this call began (the one under way finishes and is kept).
  """
  from tqdm import tqdm

  records, pending = {}, []
  for run in runs:
    record = load_record(workdir, run)
    if record is None:
      pending.append(run)
    else:
      records[run.name] = record
  start = clock()
  bar = tqdm(total=len(runs), initial=len(records), unit="run", disable=not progress, dynamic_ncols=True)
  left = list(pending)
  try:
    while left:
      bar.set_postfix_str(f"~{human(estimate_seconds(left, records.values()))} left")
      if max_minutes is not None and clock() - start >= 60 * max_minutes:
        bar.write(f"--max-minutes {max_minutes:g} reached: stopping with {len(left)} runs left (rerun to continue)")
        break
      run = left[0]
      run_dir = os.path.join(workdir, run.name)
      if os.path.exists(run_dir):  # cut off before it finished: train from the start, not from its remains
        shutil.rmtree(run_dir)
      began, cpu = clock(), time.process_time()
      results = execute(run, run_dir)
      # cpu_seconds (all threads) next to the wall time: on a shared machine the wall time says little.
      record = {"run": dataclasses.asdict(run), "seconds": clock() - began, "cpu_seconds": time.process_time() - cpu,
                "results": results, "finished": datetime.datetime.now().isoformat(timespec="seconds")}
      os.makedirs(run_dir, exist_ok=True)
      _write_json(os.path.join(run_dir, "run.json"), record)
      if not keep_checkpoints:
        for folder in ("checkpoints", "best"):
          shutil.rmtree(os.path.join(run_dir, folder), ignore_errors=True)
      records[run.name] = record
      left.pop(0)
      bar.update(1)
      test = results.get("test", {})
      bar.write(f"{run.name}: {record['seconds']:.0f} s, test accuracy {100 * test.get('accuracy', math.nan):.1f}"
                f"; ~{human(estimate_seconds(left, records.values()))} left for {len(left)} runs")
  finally:
    bar.close()
  return records, left


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, allow_nan=False)
  os.replace(tmp, path)  # a run.json is whole or absent, whenever the process stops


# ---------------------------------------------------------------------------------------- statistics
def paired_stats(before, after, level: float = 0.95) -> dict:
  """Paired differences d = after - before: n, mean, sample sd, t = mean / (sd / sqrt n), df = n - 1,
  two-sided p of the paired t-test and the `level` t interval of the mean (scipy's t distribution).
  Undefined values are None (n < 2); with zero spread the interval is the mean itself, p is 1 (mean 0)
  or 0, and t is None."""
  from scipy import stats

  # Rounded far below any score's resolution, so that equal differences (2/444 - 1/444 and 3/444 - 2/444)
  # have zero spread rather than a rounding error's.
  d = np.round(np.asarray(after, np.float64) - np.asarray(before, np.float64), 12)
  n = len(d)
  out = {"n": n, "mean": float(d.mean()) if n else None, "sd": None, "t": None, "df": n - 1 if n >= 2 else None,
         "p": None, "ci": None, "level": level}
  if n < 2:
    return out
  if np.ptp(d) == 0:  # every pair moved by the same amount: t is 0/0 or infinite (left None)
    mean = float(d[0])
    out.update(mean=mean, sd=0.0, p=1.0 if mean == 0 else 0.0, ci=[mean, mean])
    return out
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  se = sd / math.sqrt(n)
  out["sd"] = sd
  t = mean / se
  half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
  out.update(t=t, p=float(2 * stats.t.sf(abs(t), n - 1)), ci=[mean - half, mean + half])
  return out


def _gains(records: dict, runs) -> dict:
  """{(model, length, size): {seed: {metric: CmpLoss - baseline}}} over seeds with both arms done."""
  by_key = {}
  for run in runs:
    record = records.get(run.name)
    if record is not None:
      by_key[(run.cell, run.seed, run.arm)] = record["results"]["test"]
  gains: dict = {}
  for (cell, seed, arm), scores in by_key.items():
    if arm == "cmploss" and (cell, seed, "baseline") in by_key:
      base = by_key[(cell, seed, "baseline")]
      gains.setdefault(cell, {})[seed] = {m: scores[m] - base[m] for m in METRICS}
  return gains


def aggregate(runs, records: dict) -> dict:
  """Per-cell paired statistics and the claim's contrasts, from the finished runs' test scores."""
  cells = []
  for cell in dict.fromkeys(r.cell for r in runs):
    model, length, size = cell
    members = [r for r in runs if r.cell == cell]
    cmp_run = next(r for r in members if r.arm == "cmploss")
    per_seed = []
    for seed in sorted({r.seed for r in members}):
      pair = {r.arm: records.get(r.name) for r in members if r.seed == seed}
      if all(pair.get(arm) for arm in ARMS):
        per_seed.append({"seed": seed, **{arm: {m: pair[arm]["results"]["test"][m] for m in METRICS} for arm in ARMS},
                         "seconds": {arm: pair[arm]["seconds"] for arm in ARMS}})
    entry = {"model": model, "layers": MODELS[model], "length": length, "tokens": members[0].tokens,
             "train_size": size, "cmploss_submodels": {"n_drop": cmp_run.n_drop, "n_crop": cmp_run.n_crop},
             "seeds": len(per_seed), "per_seed": per_seed, "paired": {}}
    for arm in ARMS:
      entry[arm] = {m: _mean_sd([s[arm][m] for s in per_seed]) for m in METRICS}
    for m in METRICS:
      entry["paired"][m] = paired_stats([s["baseline"][m] for s in per_seed], [s["cmploss"][m] for s in per_seed])
    cells.append(entry)
  return {"cells": cells, "contrasts": contrasts(runs, records)}


def _mean_sd(values) -> list | None:
  if not values:
    return None
  return [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]


def contrasts(runs, records: dict) -> list[dict]:
  """Differences of gains, paired by seed: does CmpLoss gain more with the smaller model (at each
  length and size) or the longer input (at each model and size)? 'all sizes': the per-seed contrast
  averaged over the sizes (seeds with every size done)."""
  gains = _gains(records, runs)
  models = list(dict.fromkeys(r.model for r in runs))
  lengths = list(dict.fromkeys(r.length for r in runs))
  sizes = sorted({r.size for r in runs})
  out = []

  def add(question, where, high_cells, low_cells):
    per_size = []
    for high, low in zip(high_cells, low_cells):
      seeds = sorted(set(gains.get(high, {})) & set(gains.get(low, {})))
      per_size.append({s: {m: gains[high][s][m] - gains[low][s][m] for m in METRICS} for s in seeds})
    for size, values in zip(sizes, per_size):
      out.append({"question": question, "where": f"{where}, n={size}", "seeds": sorted(values),
                  "paired": {m: paired_stats(np.zeros(len(values)), [v[m] for v in values.values()])
                             for m in METRICS}})
    common = sorted(set.intersection(*(set(v) for v in per_size))) if per_size else []
    if len(sizes) > 1:
      averaged = [{m: float(np.mean([v[s][m] for v in per_size])) for m in METRICS} for s in common]
      out.append({"question": question, "where": f"{where}, all sizes", "seeds": common,
                  "paired": {m: paired_stats(np.zeros(len(averaged)), [a[m] for a in averaged]) for m in METRICS}})

  small, large = "minilm-l3", "minilm-l6"
  if small in models and large in models:
    for length in lengths:
      add("smaller model: gain(minilm-l3) - gain(minilm-l6)", f"{length} input",
          [(small, length, n) for n in sizes], [(large, length, n) for n in sizes])
  if "long" in lengths and "short" in lengths:
    for model in models:
      add("longer input: gain(long) - gain(short)", model, [(model, "long", n) for n in sizes],
          [(model, "short", n) for n in sizes])
  return out


# ------------------------------------------------------------------------------------------- outputs
def _pct(value) -> str:
  return "n/a" if value is None else f"{100 * value:.1f}"


def _diff(stats_: dict) -> str:
  if stats_["mean"] is None:
    return "n/a"
  ci = stats_["ci"]
  interval = f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else ""
  return f"{100 * stats_['mean']:+.1f}{interval}"


def _p(stats_: dict) -> str:
  p = stats_["p"]
  return "n/a" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def protocol(select: str) -> str:
  chosen = ("each run's best epoch on the dev split (223 articles) is the checkpoint scored"
            if select == "dev" else "each run's final params are scored (the dev split chooses nothing)")
  return (f"Scores: the BBC News test split (444 held-out articles, never used for training or selection); "
          f"{chosen}. Accuracy and macro-F1 in percent; Δ = CmpLoss - baseline, paired by seed (the same "
          f"training subset, head initialisation and data order), mean [95% t interval], p of the two-sided "
          f"paired t-test.")


def markdown(summary: dict) -> str:
  s = summary["settings"]
  lines = [
      "# Comparative loss by model size and input length: BBC News", "",
      f"Grid: {', '.join(s['models'])} x input {', '.join(f'{length} ({t} tokens)' for length, t in s['tokens'].items())} x "
      f"train sizes {', '.join(map(str, s['sizes']))} x seeds {', '.join(map(str, s['seeds']))}; {s['epochs']} "
      f"epoch{'s' if s['epochs'] != 1 else ''}, batch {BATCH_SIZE}, lr 2e-4; CmpLoss (ultra target): short input "
      f"CmpDrop x{s['short_cmp'][0]}, "
      f"long input CmpCrop ({s['crop_unit']}s) x{s['long_cmp'][1]} + CmpDrop x{s['long_cmp'][0]}. "
      f"{summary['finished_runs']} of {summary['total_runs']} runs finished.", "",
      protocol(s["select"]), "",
      "| model | input | train size | seeds | baseline acc | CmpLoss acc | Δ acc [95% CI] | p | "
      "baseline F1 | CmpLoss F1 | Δ F1 [95% CI] | p |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for c in summary["cells"]:
    cells = [c["model"], f"{c['length']} ({c['tokens']})", str(c["train_size"]), str(c["seeds"])]
    for m in METRICS:
      base, cmp = c["baseline"][m], c["cmploss"][m]
      cells += [f"{_pct(base[0])} ± {_pct(base[1])}" if base else "n/a",
                f"{_pct(cmp[0])} ± {_pct(cmp[1])}" if cmp else "n/a", _diff(c["paired"][m]), _p(c["paired"][m])]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "(baseline and CmpLoss: mean ± sample std over seeds)", ""]
  if summary["contrasts"]:
    lines += ["## Does CmpLoss gain more with the smaller model, or with the longer input?", "",
              "Differences of the paired gains above, again paired by seed; positive values favour the claim.", "",
              "| contrast | where | seeds | Δ gain acc [95% CI] | p | Δ gain F1 [95% CI] | p |",
              "|---|---|---|---|---|---|---|"]
    for c in summary["contrasts"]:
      acc, f1 = c["paired"]["accuracy"], c["paired"]["macro_f1"]
      lines.append(f"| {c['question']} | {c['where']} | {len(c['seeds'])} | {_diff(acc)} | {_p(acc)} | "
                   f"{_diff(f1)} | {_p(f1)} |")
    lines.append("")
  return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
  """Gain (CmpLoss - baseline, points) vs train size, one line per model x input length, 95% CI bars."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(METRICS), figsize=(11, 4.2), sharey=True)
  series = list(dict.fromkeys((c["model"], c["length"]) for c in summary["cells"]))
  for ax, metric in zip(axes, METRICS):
    for i, (model, length) in enumerate(series):
      cells = [c for c in summary["cells"] if (c["model"], c["length"]) == (model, length)
               and c["paired"][metric]["mean"] is not None]
      if not cells:
        continue
      offset = 1 + 0.04 * (i - (len(series) - 1) / 2)  # side by side on the log axis
      x = [c["train_size"] * offset for c in cells]
      y = [100 * c["paired"][metric]["mean"] for c in cells]
      ci = [c["paired"][metric]["ci"] or [c["paired"][metric]["mean"]] * 2 for c in cells]
      err = [[yy - 100 * lo for yy, (lo, _) in zip(y, ci)], [100 * hi - yy for yy, (_, hi) in zip(y, ci)]]
      ax.errorbar(x, y, yerr=err, marker="o" if length == "long" else "s", capsize=3,
                  linestyle="-" if model == "minilm-l6" else "--", label=f"{model}, {length} input")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    sizes = sorted({c["train_size"] for c in summary["cells"]})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("training articles")
    ax.set_title(f"test {metric.replace('_', '-')}")
  axes[0].set_ylabel("CmpLoss - baseline (points), 95% CI")
  handles, labels = axes[0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
  fig.suptitle("BBC News: gain of comparative loss by model size and input length (paired over seeds)")
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def summarize(runs, records: dict, settings: dict) -> dict:
  summary = {"experiment": "comparative loss vs model size and input length, BBC News",
             "split": "test", "test_articles": TEST_ARTICLES, "selection": protocol(settings["select"]),
             "settings": settings, "total_runs": len(runs),
             "finished_runs": sum(r.name in records for r in runs),
             "run_seconds": sum(records[r.name]["seconds"] for r in runs if r.name in records)}
  summary.update(aggregate(runs, records))
  return summary


def write_outputs(out_dir: str, summary: dict) -> None:
  os.makedirs(out_dir, exist_ok=True)
  _write_json(os.path.join(out_dir, "results.json"), summary)
  with open(os.path.join(out_dir, "table.md"), "w") as f:
    f.write(markdown(summary))
  plot(summary, os.path.join(out_dir, "gain_vs_size.png"))


# ---------------------------------------------------------------------------------------------- main
def _csv(kind, choices=None):
  def parse(text: str):
    values = [kind(v) for v in text.split(",") if v]
    if choices is not None and not set(values) <= set(choices):
      raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(choices)}")
    return values
  return parse


def _cmp(text: str) -> tuple[int, int]:
  """'drop=1,crop=1' -> (n_drop, n_crop)."""
  values = {"drop": 0, "crop": 0}
  for item in filter(None, text.split(",")):
    key, _, value = item.partition("=")
    if key not in values:
      raise argparse.ArgumentTypeError(f"{item!r}: expected drop=N or crop=N")
    values[key] = int(value)
  return values["drop"], values["crop"]


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", type=_csv(int), default=[64, 256], help="training-set sizes (default: 64,256)")
  p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per cell (default: 5)")
  p.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2, so that the default grid "
                 "takes about 2 hours on 2 free cores; more epochs train better and cost about proportionally)")
  p.add_argument("--lengths", type=_csv(str, LENGTHS), default=list(LENGTHS), help="short,long (default: both)")
  p.add_argument("--models", type=_csv(str, MODELS), default=list(MODELS), help="minilm-l6,minilm-l3 (default: both)")
  p.add_argument("--short-tokens", type=int, default=48, help="tokens read of each article, short input (48)")
  p.add_argument("--long-tokens", type=int, default=256, help="tokens read of each article, long input (256; "
                 "MiniLM reads at most 512)")
  p.add_argument("--short-cmp", type=_cmp, default=(2, 0), help="CmpLoss submodels for short input (drop=2)")
  p.add_argument("--long-cmp", type=_cmp, default=(1, 1), help="CmpLoss submodels for long input (drop=1,crop=1)")
  p.add_argument("--crop-unit", choices=("sentence", "paragraph"), default="sentence",
                 help="what a CmpCrop view drops (default: sentence)")
  p.add_argument("--select", choices=("dev", "last"), default="last",
                 help="last: score each run's final params (default; dev is evaluated once, at the end, and "
                 "chooses nothing); dev: score its best-on-dev epoch (one dev evaluation per epoch)")
  p.add_argument("--workdir", default="runs/cmploss_claim", help="run folders and their run.json (reused)")
  p.add_argument("--out", default=os.path.join("docs", "comploss"), help="results.json, table.md, gain_vs_size.png")
  p.add_argument("--max-minutes", type=float, default=None,
                 help="start no run after this many minutes (the run under way finishes); rerun to continue")
  p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints/ and best/")
  p.add_argument("--estimate-only", action="store_true", help="print the grid and its time estimate; train nothing")
  return p


def main(argv=None) -> dict | None:
  args = parser().parse_args(argv)
  for name in ("short_cmp", "long_cmp"):
    if sum(getattr(args, name)) < 1:
      parser().error(f"--{name.replace('_', '-')} needs at least one submodel")
  if not 1 <= args.short_tokens <= args.long_tokens <= 512:
    parser().error("need 1 <= --short-tokens <= --long-tokens <= 512 (MiniLM's position embeddings)")
  if args.seeds < 1 or args.epochs < 1 or not args.sizes or min(args.sizes) < 1:
    parser().error("--seeds, --epochs and every --sizes value must be at least 1")
  seeds = list(range(args.seeds))
  runs = make_grid(args.models, args.lengths, args.sizes, seeds, epochs=args.epochs, short_tokens=args.short_tokens,
                   long_tokens=args.long_tokens, short_cmp=args.short_cmp, long_cmp=args.long_cmp,
                   crop_unit=args.crop_unit, select=args.select)
  settings = {"models": args.models, "lengths": args.lengths, "sizes": args.sizes, "seeds": seeds,
              "epochs": args.epochs, "tokens": {length: args.short_tokens if length == "short" else args.long_tokens
                                                 for length in args.lengths},
              "short_cmp": list(args.short_cmp), "long_cmp": list(args.long_cmp), "crop_unit": args.crop_unit,
              "select": args.select, "batch_size": BATCH_SIZE}
  finished = [r for r in runs if load_record(args.workdir, r)]
  todo = [r for r in runs if r not in finished]
  done_records = [load_record(args.workdir, r) for r in finished]
  overhead, rate, source = fit_timing(done_records)
  print(f"grid: {len(runs)} runs ({len(finished)} finished, {len(todo)} to train); per run ~{overhead:.0f} s "
        f"+ work x {rate:.3g} s ({source})")
  kinds = dict.fromkeys((r.model, r.length, r.size, r.arm) for r in todo)
  for kind in kinds:
    members = [r for r in todo if (r.model, r.length, r.size, r.arm) == kind]
    each = overhead + rate * work_units(members[0])
    print(f"  {kind[0]:9s} {kind[1]:5s} n={kind[2]:<4d} {kind[3]:8s}: {len(members)} x ~{each:.0f} s")
  print(f"estimated time to train the {len(todo)} runs: {human(estimate_seconds(todo, done_records))}", flush=True)
  if args.estimate_only:
    return None

  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  # Seeds and sizes share each kind's compiled programs: keep them across runs and invocations.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(args.workdir), "jax_cache"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  try:
    run_grid(runs, args.workdir, train_run, max_minutes=args.max_minutes, keep_checkpoints=args.keep_checkpoints)
  finally:  # also when a run fails or is interrupted: the outputs then show every run finished so far
    records = {r.name: record for r in runs if (record := load_record(args.workdir, r)) is not None}
    summary = summarize(runs, records, settings)
    write_outputs(args.out, summary)
    left = len(runs) - len(records)
    print(markdown(summary))
    print(f"wrote {os.path.join(args.out, 'results.json')}, table.md, gain_vs_size.png"
          + (f"; {left} runs left: rerun the same command to continue" if left else ""))
  return summary


if __name__ == "__main__":
  main()
