"""CPU seconds with XLA:CPU's fusion emitters on (its default) and off (`--xla_cpu_use_fusion_emitters=false`,
what tests/conftest.py sets), each on top of the suite's other compile flags, each in a fresh process
with no compilation cache:
- a tiny TGA run, the kind of program most tests compile (stage 1 of configs/tga/tiny.py, 4 steps);
- SmolLM2-135M's first greedy generate call (3 chats, 20 new tokens: tracing, compiles, decoding).

    python bench/xla_cpu_emitters.py [--repeats=3]
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE_FLAGS = "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"
SETTINGS = {"fusion emitters on": "", "fusion emitters off": "--xla_cpu_use_fusion_emitters=false"}
GENERATE = """
import time, tga_jax
module, params = tga_jax.load_llm("smollm2-135m-instruct")
tokenizer = tga_jax.load_tokenizer("smollm2-135m-instruct")
start = time.process_time()
tga_jax.generate(module, params, tokenizer, ["What is the capital of France?", "Give me three tips for staying healthy.",
                 "Write a Python function that adds two numbers."], 20, chat=True)
print(time.process_time() - start)
"""


def child_cpu_seconds(args: list[str], flags: str, devices: int = 0) -> tuple[float, str]:
  """(user + sys CPU seconds of the child process, its stdout)."""
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=f"{SUITE_FLAGS} {flags}" + (f" --xla_force_host_platform_device_count={devices}" if devices else ""))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  out = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=3, help="tiny TGA runs per setting (alternating)")
  args = p.parse_args()
  tiny = {name: [] for name in SETTINGS}
  for _ in range(args.repeats):
    for name, flags in SETTINGS.items():
      with tempfile.TemporaryDirectory() as workdir:
        seconds, _ = child_cpu_seconds(
            ["-m", "tga_jax.train", "--config=configs/tga/tiny.py:stage=1,steps=4", "--config.data.procedural.n=40",
             "--config.progress_bar=False", "--config.checkpoint.use_async=False", f"--workdir={workdir}/run"],
            flags, devices=8)
      tiny[name].append(round(seconds, 1))
  for name, runs in tiny.items():
    print(f"tiny TGA run, {name}: CPU s {runs}, mean {sum(runs) / len(runs):.1f}")
  for name, flags in SETTINGS.items():
    _, out = child_cpu_seconds(["-c", GENERATE], flags)
    print(f"SmolLM2 first generate call, {name}: {float(out.split()[-1]):.1f} CPU s")


if __name__ == "__main__":
  main()
