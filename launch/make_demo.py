"""`make demo`: the three demos in order, each step timed, and the times tabulated at the end.

    python launch/make_demo.py --workdir=runs/demo

1/3 trainkit runtime: a sharded digits MLP trained to a checkpoint, then resumed to a longer horizon.
2/3 comparative loss: BBC News, 64 training articles, MiniLM-L6, baseline vs CmpLoss c=2, 2 seeds, 6 epochs
    (dev scored every 2 epochs, the best-on-dev params scored on the test split).
3/3 TGA on the tiny config: stage 1, stage 2 with lambda = 0 and with TGA, analysis, evaluation.

Every step runs as its own process with this interpreter; the first failing step stops the demo with
its exit code. The JAX compilation cache lives in <workdir>/jax_cache, so runs that compile the same
programs (the seeds of a sweep) compile once.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def steps(workdir: str) -> list[tuple[str, list[list[str]]]]:
  py = sys.executable
  runtime = ["launch/demo.py", f"--workdir={workdir}/runtime", "--config=configs/demo/digits.py"]
  return [
      ("trainkit runtime: sharded digits MLP, checkpoint, then resume to a longer horizon",
       [[py, *runtime], [py, *runtime, "--config.total_steps=300"]]),
      ("comparative loss: BBC News, 64 training articles, MiniLM-L6, baseline vs CmpLoss c=2, 2 seeds",
       [[py, "launch/sweep.py", "--config=configs/comploss/bbc.py:train_size=64,seeds=2,epochs=6",
         f"--workdir={workdir}/bbc", "--set", "progress_bar=false", "--set", "eval_every=8"]]),
      ("TGA on the tiny config: stage 1, stage 2 with lambda=0 and with TGA, analysis, evaluation",
       [[py, "launch/tga_demo.py", f"--workdir={workdir}/tga"]]),
  ]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="runs/demo", help="where every step writes (default: %(default)s)")
  args = p.parse_args(argv)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.abspath(os.path.join(args.workdir, "jax_cache")),
             HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
  plan = steps(args.workdir)
  times = []
  for i, (title, commands) in enumerate(plan, 1):
    print(f"== {i}/{len(plan)} {title}", flush=True)
    start = time.perf_counter()
    for command in commands:
      print("$ " + " ".join(command[1:] if command[0] == sys.executable else command), flush=True)
      code = subprocess.call(command, cwd=ROOT, env=env)
      if code:
        print(f"== step {i}/{len(plan)} failed (exit {code}): {' '.join(command)}", file=sys.stderr)
        return code
    times.append((title.split(":")[0], time.perf_counter() - start))
  print("\n== make demo: seconds per step")
  for i, (name, seconds) in enumerate(times, 1):
    print(f"  {i}/{len(plan)} {name:<22} {seconds:7.1f} s")
  print(f"  {'total':<26} {sum(s for _, s in times):7.1f} s ({sum(s for _, s in times) / 60:.1f} min)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
