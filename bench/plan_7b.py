"""Ahead-of-time plans of the paper's stage-2 TGA steps (LLaVA-1.5-7B Vicuna, Mistral-7B) on TPU slices and
an 8-GPU node, one `python -m trainkit.plan` at a time, and their markdown table.

    python bench/plan_7b.py --rows=all --out=bench/results/plan_7b.jsonl      # plans, appended as JSON lines
    python bench/plan_7b.py --render --out=bench/results/plan_7b.jsonl > bench/results/plan_7b.md

Each row is a config, a target and overrides (lambda, remat policy, mesh); `--rows` picks some by name
(comma-separated). Every plan compiles the whole sharded train step for the target on this machine's CPU:
several minutes per compile on 2 busy cores, so rows are few and the batch search is short.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VICUNA = "configs/tga/llava15_vicuna7b.py:stage=2"
MISTRAL = "configs/tga/mistral7b.py:stage=2"
FULL_FSDP = ["--config.mesh.data=1", "--config.mesh.fsdp=-1"]
# name -> (config, target, extra flags)
ROWS = {
    "vicuna_tga_v4": (VICUNA, "v4:2x2x2", []),
    "vicuna_plain_v4": (VICUNA + ",weight=0.0", "v4:2x2x2", []),
    "mistral_tga_v5p": (MISTRAL, "v5p:4x4x4", []),
    "mistral_plain_v5p": (MISTRAL + ",weight=0.0", "v5p:4x4x4", []),
    "mistral_tga_v5e": (MISTRAL, "v5e:16x16", []),
    "mistral_tga_v5e_fsdp": (MISTRAL, "v5e:16x16", ["--config.mesh.fsdp=32"]),
    "vicuna_tga_v6e": (VICUNA, "v6e:2x2", FULL_FSDP),
    "vicuna_tga_h200": (VICUNA, "h200:1x1x8", []),
    "vicuna_tga_h100": (VICUNA, "h100:1x1x8", []),
    "vicuna_tga_v4_dots": (VICUNA, "v4:2x2x2", ["--config.model.remat_policy=dots_with_no_batch_dims_saveable"]),
    "mistral_tga_v5e_2slices": (MISTRAL, "v5e:16x16", ["--slices=2", "--config.mesh.fsdp=32"]),
}


def run_rows(names: list[str], out: str, extra: list[str]) -> None:
  for name in names:
    config, target, flags = ROWS[name]
    command = [sys.executable, "-m", "trainkit.plan", f"--config={config}", f"--target={target}", *flags, *extra]
    print(f"[{name}] {' '.join(command[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
      print(proc.stderr[-4000:], file=sys.stderr)
      continue
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(row=name, wall_s=round(time.perf_counter() - start, 1))
    with open(out, "a") as f:
      f.write(json.dumps(result) + "\n")
    print(proc.stdout.rsplit("\n", 2)[0], file=sys.stderr, flush=True)


def device_table() -> str:
  """The device-memory table the plans judge fits by (trainkit.plan.TARGETS)."""
  from trainkit.plan import TARGETS

  lines = ["| target kind | device | memory (spec sheet) | usable, GiB | budget at 10% headroom, GiB |",
           "|---|---|---|---|---|"]
  for kind, chip in TARGETS.items():
    if chip.platform != "cpu":
      lines.append(f"| {kind} | {chip.name} | {chip.memory} | {chip.usable_gib:.2f} | {0.9 * chip.usable_gib:.2f} |")
  return "\n".join(lines) + "\n"


def render(path: str) -> str:
  """The plans as one markdown table (GiB per device; the last plan of each row wins)."""
  rows = {}
  for line in open(path):
    if line.strip():
      result = json.loads(line)
      rows[result.get("row") or f"{result['config']} {result['target']}"] = result
  gib = lambda n: f"{n / 2 ** 30:.1f}"  # noqa: E731
  header = ("| model | λ | remat | target | mesh (data×fsdp×tensor) | params | Adam state | temporaries | peak "
            "| budget | batch planned (per device) | fits | largest batch that fits, per device (global) "
            "| PFLOPs/step (TFLOPs per device) | compile, s wall (CPU) |")
  lines = [header, "|" + "|".join(["---"] * 15) + "|"]
  for r in rows.values():
    b = r["bytes_per_device"]
    model = "Vicuna-7B" if "vicuna" in r["config"] else "Mistral-7B" if "mistral" in r["config"] else r["config"]
    mesh = "×".join(str(r["mesh"][a]) for a in ("data", "fsdp", "tensor"))
    temp = gib(b["temp"]) if r["compiled"] else "-"
    peak = gib(b["peak"]) + ("" if r["compiled"] else " (needed)")
    if r["searched"]:
      best = (f"{r['max_batch_per_device']:g} ({r['max_global_batch']})" if r["max_global_batch"] else "none")
      if r.get("predicted_max_global_batch") and r["max_global_batch"] != r["predicted_max_global_batch"]:
        best += f"; the line through the probes predicts {r['predicted_max_global_batch'] / r['devices']:g}"
    else:
      best = "not searched"
    flops = f"{r['flops_per_step'] / 1e15:,.2f} ({r['flops_per_device'] / 1e12:,.1f})"
    lines.append(
        f"| {model} | {r['tga_weight']:g} | {r['remat_policy']} | {r['target']} ({r['devices']} × {r['chip']}) "
        f"| {mesh} | {gib(b['params'])} | {gib(b['opt_state'])} | {temp} | {peak} | {r['budget_gib']:.1f} "
        f"| {r['global_batch']} ({r['batch_per_device']:g}) | {'yes' if r['fits'] else 'no'} | {best} | {flops} "
        f"| {r['compile_s']:.0f} ({r['compile_cpu_s']:.0f}) |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", default="", help=f"comma-separated names, or 'all': {', '.join(ROWS)}")
  parser.add_argument("--out", default="bench/results/plan_7b.jsonl")
  parser.add_argument("--render", action="store_true", help="print the markdown table of --out and exit")
  parser.add_argument("--devices", action="store_true", help="print the device-memory table and exit")
  parser.add_argument("--nosearch", action="store_true", help="plan one batch only (one compile a row)")
  parser.add_argument("--batch_per_device", type=int, default=0, help="the batch to plan (0: the config's)")
  args = parser.parse_args()
  if args.render:
    sys.stdout.write(render(args.out))
    return
  if args.devices:
    sys.stdout.write(device_table())
    return
  names = list(ROWS) if args.rows == "all" else [n for n in args.rows.split(",") if n]
  unknown = [n for n in names if n not in ROWS]
  if unknown or not names:
    parser.error(f"--rows: unknown {unknown}; choose from {sorted(ROWS)} or 'all'")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  extra = (["--nosearch"] if args.nosearch else []) + (
      [f"--batch_per_device={args.batch_per_device}"] if args.batch_per_device else [])
  run_rows(names, args.out, extra)


if __name__ == "__main__":
  main()
