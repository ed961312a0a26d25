"""Ahead-of-time plans: does a trainer's step fit a TPU slice or a GPU node, at what batch, for how many
FLOPs -- compiled on this machine, without the hardware.

    python -m trainkit.plan --config=configs/tga/mistral7b.py:stage=2 --target=v5p:4x4x4
    python -m trainkit.plan --config=configs/tga/llava15_vicuna7b.py:stage=2 --target=h100:1x1x8
    python -m trainkit.plan --config=configs/tga/tiny.py:stage=2 --target=cpu:8 --nosearch
    python -m trainkit.plan --config=configs/tga/mistral7b.py:stage=2 --target=v5e:16x16 --slices=2 \\
        --config.mesh.fsdp=16 --config.model.remat_policy=dots_with_no_batch_dims_saveable

The step is the trainer's own: the module named by `config.trainer` (or its package's `plan` module) defines
`plan_step(config, mesh, global_batch) -> trainkit.PlannedStep`, which builds the model from configuration
alone, the state with jax.eval_shape and the batch as ShapeDtypeStructs -- no weights are read and nothing
is allocated -- and returns the jitted step that training runs. The mesh is `config.mesh` over the target's
devices (override it like any field: `--config.mesh.fsdp=-1`).

Targets (`TARGETS` below has each chip's memory and dense peak FLOP/s, which the training loop's MFU uses):
- TPU slices `v4:2x2x2`, `v5e:16x16`, `v5p:4x4x4`, `v6e:2x2`, ... (`--slices=N`: N slices joined over the
  data-centre network, the mesh's `data` axis split across them): fake TPU devices from
  jax.experimental.topologies with libtpu (`pip install -e '.[tpu]'`). libtpu's compiler refuses a
  program that needs more HBM than a chip has (RESOURCE_EXHAUSTED): such a probe does not fit.
- NVIDIA nodes `h100:1x1x8`, `h200:1x1x8` (hosts x nodes x GPUs): the CUDA PJRT plugin
  (`pip install --no-deps jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2`) compiles for a GPU that an
  XLA target description names. It raises no out-of-memory error: the peak is compared with the card here.
- `cpu:N`: N simulated CPU devices (JAX_NUM_CPU_DEVICES=N), sharing the host's memory.

Reported per device: params, optimizer state and the batch (from the shardings), the compiler's
arguments / outputs / temporaries (activations, gradients, collectives' buffers) and their peak; whether
the peak fits the chip with `--headroom` (default 10%) to spare; FLOPs per step, counted on the step's
jaxpr (every matmul, each scanned layer and each rematerialised recomputation included; XLA's own
cost_analysis counts a loop body once, so it is reported beside as `xla_flops_per_device`); the compile
time; and the largest batch that fits (`--search`: batches of 1 and 2 per batch shard give the peak's
growth per example, the batch that line predicts is compiled with its neighbour, then doubling or bisection
if it was off; one compile per probe, at most 2 + `--max_probes`).
Prints a table, then the whole plan as one JSON line (appended to `--json_out` too).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
import sys
import time

from trainkit.flops import matmul_flops

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator kind. memory: the spec sheet's figure; usable_gib: what a program may use, the
  figure fits are judged against (libtpu's 'available HBM' as its compiler reports it; for GPUs the memory
  nvidia-smi reports)."""
  name: str
  platform: str
  memory: str
  usable_gib: float
  chip_config: str | None = None  # libtpu's chip configuration (v4: one device per chip, 'megacore')
  gpu: dict | None = None  # the XLA GPU target description's device fields
  # Dense peak FLOP/s of one JAX device, the figure the training loop's MFU divides by (trainkit/loop.py);
  # for the CPU, of the whole host (its simulated devices share the cores).
  peak_flops: float | None = None
  device_kinds: tuple[str, ...] = ()  # what jax's Device.device_kind reports for this chip


_GH100 = dict(core_count=132, clock_rate_ghz=1.98, l2_cache_size=50 * 1024 ** 2, compute_capability=(9, 0))
TARGETS = {
    # usable_gib of the TPUs: libtpu 0.0.42's "exceeds available HBM (30.75G)" etc., measured here.
    # peak_flops: Google's bf16 dense figures per chip (one JAX device per chip on all four).
    "v4": Chip("TPU v4", "tpu", "32 GiB HBM2", 30.75, chip_config="megacore", peak_flops=275e12,
               device_kinds=("TPU v4",)),
    "v5e": Chip("TPU v5e", "tpu", "16 GiB HBM2e", 15.75, peak_flops=197e12, device_kinds=("TPU v5 lite", "TPU v5e")),
    "v5p": Chip("TPU v5p", "tpu", "95 GB HBM2e", 95.74, peak_flops=459e12, device_kinds=("TPU v5", "TPU v5p")),
    "v6e": Chip("TPU v6e", "tpu", "32 GiB HBM", 31.25, peak_flops=918e12, device_kinds=("TPU v6 lite", "TPU v6e")),
    # nvidia-smi's totals: 81,559 MiB (H100 SXM 80GB, NVIDIA's figure) and 143,771 MiB (the H200 this project
    # benchmarked on, bench/results/h200_env.txt). peak_flops: bf16 dense tensor-core FLOP/s of the SXM
    # parts, NVIDIA's 1,979 TFLOP/s "with sparsity" halved (the same GH100 die in both).
    "h100": Chip("NVIDIA H100 80GB HBM3", "cuda", "80 GB HBM3", 81559 / 1024,
                 gpu=dict(_GH100, memory_bandwidth=3.35e12, device_memory_size=81559 * 1024 ** 2),
                 peak_flops=989e12, device_kinds=("NVIDIA H100 80GB HBM3",)),
    "h200": Chip("NVIDIA H200", "cuda", "141 GB HBM3e", 143771 / 1024,
                 gpu=dict(_GH100, memory_bandwidth=4.8e12, device_memory_size=143771 * 1024 ** 2),
                 peak_flops=989e12, device_kinds=("NVIDIA H200",)),
    # peak_flops: the f32 matmul peak measured with jax on this project's 2-core machines (2048x2048), the
    # top of the 190-290 GFLOP/s it reaches there (/work/shared/ENVIRONMENT.md); for the whole host. Another
    # CPU differs: set config.peak_flops_per_device.
    "cpu": Chip("CPU (simulated devices)", "cpu", "host memory / devices", 0.0, peak_flops=290e9),
}


def device_peak_flops(devices) -> tuple[float | None, str]:
  """Dense peak FLOP/s of one of `devices` (the devices a run's step uses; all of one kind), from TARGETS,
  and the chip's name; (None, its device_kind) for a device the table does not list.

  On the CPU the table's figure is the host's and its simulated devices share the cores: each of the run's
  devices on a host gets an equal share, so peak x devices is the hosts' total.
  """
  device = devices[0]
  for chip in TARGETS.values():
    if not chip.peak_flops:
      continue
    if chip.platform == "cpu" and device.platform == "cpu":
      on_host = sum(1 for d in devices if d.process_index == device.process_index)
      return chip.peak_flops / max(on_host, 1), chip.name
    if device.device_kind in chip.device_kinds:
      return chip.peak_flops, chip.name
  return None, device.device_kind


def gpu_target_config(chip: Chip) -> str:
  """The XLA GPU target description (text proto) the CUDA plugin compiles for, from the chip's figures."""
  g = chip.gpu
  major, minor = g["compute_capability"]
  return "\n".join([
      "gpu_device_info {",
      "  threads_per_block_limit: 1024", "  threads_per_warp: 32", "  shared_memory_per_block: 49152",
      "  shared_memory_per_core: 233472", "  threads_per_core_limit: 2048", f"  core_count: {g['core_count']}",
      "  fpus_per_core: 128", "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535",
      "  block_dim_limit_z: 65535", f"  memory_bandwidth: {int(g['memory_bandwidth'])}",
      f"  l2_cache_size: {g['l2_cache_size']}", f"  clock_rate_ghz: {g['clock_rate_ghz']}",
      f"  device_memory_size: {g['device_memory_size']}", "  shared_memory_per_block_optin: 232448",
      f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
      "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536", "}",
      "runtime_version { major: 12 minor: 8 patch: 0 }", 'platform_name: "CUDA"',
      "dnn_version_info { major: 9 minor: 7 }", f'device_description_str: "{chip.name}"', ""])


@dataclasses.dataclass
class Target:
  name: str  # as given, e.g. 'v5p:4x4x4'
  chip: Chip
  devices: list
  slices: int = 1

  @property
  def usable_bytes(self) -> float:
    return self.chip.usable_gib * GIB


def parse_target(name: str) -> tuple[str, str]:
  """'v5e:16x16' -> ('v5e', '16x16'); 'cpu:8' -> ('cpu', '8')."""
  kind, sep, topology = name.partition(":")
  kind = kind.lower()
  if not sep or kind not in TARGETS or not re.fullmatch(r"\d+(x\d+)*", topology):
    raise ValueError(f"--target={name!r}: expected <kind>:<topology> with kind one of {sorted(TARGETS)}, e.g. "
                     f"v4:2x2x2, v5e:16x16, v5p:4x4x4, v6e:2x2, h100:1x1x8, h200:1x1x8, cpu:8")
  return kind, topology


def make_target(name: str, slices: int = 1) -> Target:
  """The target's devices: fake TPU or GPU devices (compile-only), or this process's CPU devices."""
  import jax

  kind, topology = parse_target(name)
  chip = TARGETS[kind]
  if slices < 1 or (slices > 1 and chip.platform != "tpu"):
    raise ValueError(f"--slices={slices}: multislice is for TPU targets (>= 1)")
  if chip.platform == "cpu":
    wanted = int(topology)
    devices = jax.devices("cpu")
    if len(devices) != wanted:
      raise ValueError(f"--target={name}: this process has {len(devices)} CPU devices; start it with "
                       f"JAX_NUM_CPU_DEVICES={wanted} (the planner's command line sets it itself)")
    import psutil

    chip = dataclasses.replace(chip, usable_gib=psutil.virtual_memory().total / GIB / wanted,
                               memory=f"{psutil.virtual_memory().total / GIB:.0f} GiB host / {wanted}")
    return Target(name, chip, devices)
  from jax.experimental import topologies

  if chip.platform == "tpu":
    # Compiling for a topology loads libtpu; several processes may do that at once on a machine without TPUs.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
      import libtpu  # noqa: F401
    except ImportError as e:
      raise RuntimeError(f"--target={name}: TPU targets need libtpu: pip install -e '.[tpu]' "
                         f"(jax[tpu]==0.10.2)") from e
    extra = {"chip_config_name": chip.chip_config} if chip.chip_config else {}
    topo = topologies.get_topology_desc(topology_name=f"{kind}:{topology}", platform="tpu", num_slices=slices,
                                        **extra)
  else:
    try:
      import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError as e:
      raise RuntimeError(f"--target={name}: GPU targets need the CUDA PJRT plugin: pip install --no-deps "
                         f"jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2") from e
    if topology.count("x") != 2:
      raise ValueError(f"--target={name}: a GPU topology is <hosts>x<nodes>x<GPUs per node>, e.g. 1x1x8")
    # No GPU to autotune kernels on: a deviceless compile waits forever for autotuning results unless it is
    # off (read when the plugin starts its compiler, so set before the topology is made).
    flags = os.environ.get("XLA_FLAGS", "")
    # Without autotuning, Triton's GEMM emitter keeps a default tiling that fails for some shapes ("Couldn't
    # find output tile sizes", measured on CLIP-L's bf16[1154,1024] dot at 2 images per GPU): plan with cuBLAS.
    for flag in ("--xla_gpu_shard_autotuning=false", "--xla_gpu_autotune_level=0",
                 "--xla_gpu_enable_triton_gemm=false"):
      if flag.split("=")[0] not in flags:
        flags += " " + flag
    os.environ["XLA_FLAGS"] = flags.strip()
    topo = topologies.get_topology_desc(kind, "cuda", target_config=gpu_target_config(chip), topology=topology)
  return Target(name if slices == 1 else f"{slices}x {name}", chip, list(topo.devices), slices)


def target_mesh(mesh_cfg, target: Target):
  """config.mesh over the target's devices, in a topology-aware order (as jax.make_mesh orders a slice's
  chips); with several slices the `data` axis is the one split across them."""
  import jax
  import numpy as np
  from jax.experimental import mesh_utils

  from trainkit.mesh import MESH_AXES, make_mesh, resolve_mesh_shape

  if target.chip.platform == "cpu":
    return make_mesh(mesh_cfg, target.devices)  # what the trainer itself builds here
  sizes = resolve_mesh_shape(mesh_cfg, len(target.devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  if target.slices > 1:
    if sizes["data"] % target.slices:
      raise ValueError(f"mesh {sizes}: with {target.slices} slices the data axis ({sizes['data']}) must be a "
                       f"multiple of {target.slices} (set --config.mesh.data / --config.mesh.fsdp)")
    per_slice = (sizes["data"] // target.slices, sizes["fsdp"], sizes["tensor"])
    devices = mesh_utils.create_hybrid_device_mesh(per_slice, (target.slices, 1, 1), target.devices,
                                                   allow_split_physical_axes=True)
  else:
    try:
      devices = mesh_utils.create_device_mesh(shape, target.devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
      devices = np.asarray(target.devices).reshape(shape)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.sharding.Mesh(devices, MESH_AXES, axis_types=auto)


def find_planner(config):
  """The trainer's `plan_step`: in the module `config.trainer` names, else in its package's `plan` module."""
  trainer = config.get("trainer", None)
  if not trainer:
    raise ValueError("the config has no 'trainer' field naming its trainer module (e.g. 'tga_jax.train')")
  module = importlib.import_module(trainer)
  if hasattr(module, "plan_step"):
    return module.plan_step
  package = trainer.rpartition(".")[0]
  try:
    planner = importlib.import_module(f"{package}.plan") if package else None
  except ModuleNotFoundError:
    planner = None
  if planner is not None and hasattr(planner, "plan_step"):
    return lambda config, mesh, batch: planner.plan_step(config, mesh, batch)
  raise ValueError(f"trainer {trainer!r} defines no plan_step(config, mesh, global_batch) (nor does "
                   f"{package}.plan): it cannot be planned ahead of time yet")


# ---- counting ----

def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest shard)."""
  import jax
  import numpy as np

  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


# ---- one probe: compile at one batch ----

@dataclasses.dataclass
class Probe:
  global_batch: int
  fits: bool
  compiled: bool
  peak: int = 0  # bytes per device
  memory: dict = dataclasses.field(default_factory=dict)
  flops: int = 0  # per step, whole mesh (jaxpr count)
  xla_flops_per_device: float | None = None
  lower_s: float = 0.0
  compile_s: float = 0.0
  compile_cpu_s: float = 0.0  # CPU seconds of all the compiler's threads (wall time depends on the load)
  error: str = ""
  crashed: bool = False  # the compiler failed for another reason than memory (error says why)
  info: dict = dataclasses.field(default_factory=dict)
  sizes: dict = dataclasses.field(default_factory=dict)


_NEEDED = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\)|Used ([\d.]+)([KMGT]) of")


def probe(planner, config, mesh, target: Target, global_batch: int, headroom: float, strict: bool = True) -> Probe:
  """Builds the trainer's step for `global_batch`, compiles it for the target and reads its memory and cost.

  A compiler error other than RESOURCE_EXHAUSTED is raised when `strict`; otherwise (the batch search's probes)
  it comes back as a crashed probe, so that one failing compile does not discard the compiles made before it."""
  from jax.errors import JaxRuntimeError

  planned = planner(config, mesh, global_batch)
  sizes = {"params": per_device_bytes(planned.state.params), "opt_state": per_device_bytes(planned.state.opt_state),
           "batch": per_device_bytes(planned.batch)}
  start = time.perf_counter()
  with planned.step.context():
    traced = planned.step.trace(planned.state, planned.batch)
    flops = matmul_flops(traced.jaxpr)
    lowered = traced.lower()
  lower_s = time.perf_counter() - start
  start, cpu = time.perf_counter(), time.process_time()
  try:
    compiled = lowered.compile()
  except JaxRuntimeError as e:
    message = str(e)
    crashed = "RESOURCE_EXHAUSTED" not in message
    if crashed and strict:
      raise
    return Probe(global_batch, False, False, flops=flops, lower_s=lower_s, compile_s=time.perf_counter() - start,
                 compile_cpu_s=time.process_time() - cpu, error=message.strip().splitlines()[0][:400],
                 crashed=crashed, info=planned.info, sizes=sizes, peak=_needed_bytes(message))
  compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - cpu
  stats = compiled.memory_analysis()
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
  memory = {f.replace("_size_in_bytes", ""): int(getattr(stats, f, 0) or 0) for f in fields}
  # Live at the peak: the arguments, the temporaries, and the outputs that do not reuse a donated argument.
  peak = memory["argument"] + memory["temp"] + memory["output"] - memory["alias"] + memory["generated_code"]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  xla_flops = float(cost["flops"]) if cost and cost.get("flops", 0) > 0 else None
  fits = peak <= (1.0 - headroom) * target.usable_bytes
  return Probe(global_batch, fits, True, peak=peak, memory=memory, flops=flops, xla_flops_per_device=xla_flops,
               lower_s=lower_s, compile_s=compile_s, compile_cpu_s=compile_cpu_s, info=planned.info, sizes=sizes)


def _needed_bytes(message: str) -> int:
  match = _NEEDED.search(message)
  if not match:
    return 0
  number, unit = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
  return int(float(number) * 1024 ** "KMGT".index(unit) * 1024)


# ---- the plan ----

def batch_unit(config, mesh) -> int:
  """The smallest global batch the step takes: one example per batch shard per microbatch."""
  from trainkit.sharding import batch_sharding

  axes = batch_sharding(mesh, config.rules).spec[0]
  axes = axes if isinstance(axes, tuple) else (axes,)
  shards = math.prod(mesh.shape[a] for a in axes if a is not None)
  return shards * int(config.optimizer.get("grad_accum_steps", 1) if "optimizer" in config else 1)


def plan(config, target: Target, *, batch: int = 0, search: bool = True, max_batch_per_device: int = 64,
         headroom: float = 0.1, max_probes: int = 6, log=print) -> dict:
  """Compiles the trainer's step for the target at `batch` (global; 0: config.batch_size) and, with
  `search`, at the batches the search asks for (see _search). Returns the plan as a dict."""
  planner = find_planner(config)
  mesh = target_mesh(config.mesh, target)
  devices = len(target.devices)
  unit = batch_unit(config, mesh)
  batch = batch or int(config.batch_size)
  probes: dict[int, Probe] = {}

  def run(global_batch: int, strict: bool = False) -> Probe:
    if global_batch not in probes:
      result = probe(planner, config, mesh, target, global_batch, headroom, strict=strict)
      probes[global_batch] = result
      verdict = ("fits" if result.fits else "over budget" if result.compiled else
                 f"compiler error (counted as not fitting): {result.error}" if result.crashed else "RESOURCE_EXHAUSTED")
      log(f"  batch {global_batch:6d} ({global_batch / devices:g}/device): {verdict}, peak "
          f"{result.peak / GIB:.2f} GiB/device, lower {result.lower_s:.1f} s + compile {result.compile_s:.1f} s "
          f"({result.compile_cpu_s:.1f} s CPU)")
    return probes[global_batch]

  if batch % unit:
    log(f"  batch {batch}: not a multiple of the {unit} batch shards x microbatches; planning {unit * -(-batch // unit)}")
    batch = unit * -(-batch // unit)
  main = run(batch, strict=True)
  best, predicted = None, None
  if search:
    best, predicted = _search(run, unit, max(1, max_batch_per_device * devices // unit),
                              (1.0 - headroom) * target.usable_bytes, max_probes)
  result = _report(config, target, mesh, main, best, probes, headroom, unit, search)
  result["predicted_max_global_batch"] = predicted * unit if predicted else None
  return result


def _search(run, unit: int, limit: int, budget: float, max_probes: int = 6) -> tuple[Probe | None, int | None]:
  """The largest multiple k of `unit` (1 <= k <= limit) whose probe fits, in few compiles: probes at k = 1
  and 2 give the peak's growth per batch step (the peak grows about linearly with the batch); the k they
  predict is compiled, then k + 1 (or k - 1, ...) until a fit sits next to a failure. When the prediction
  is off, bisection between the best fit and the first failure takes over. At most `max_probes` compiles
  beyond those already made. Returns (the largest fitting probe or None, the linear prediction of k)."""
  probes: dict[int, Probe] = {}
  calls = [0]

  def at(k: int) -> Probe:
    if k not in probes:
      calls[0] += 1
      probes[k] = run(k * unit)
    return probes[k]

  def best() -> Probe | None:
    fits = [k for k, p in probes.items() if p.fits]
    return probes[max(fits)] if fits else None

  def first_bad() -> int | None:
    bad = [k for k, p in probes.items() if not p.fits]
    return min(bad) if bad else None

  if not at(1).fits:
    return None, 0
  predicted = None
  if limit >= 2:
    second = at(2)
    slope = second.peak - probes[1].peak
    if slope > 0 and second.peak > 0:
      predicted = int((budget - probes[1].peak) // slope) + 1
  # The prediction, then its neighbour (is the next batch out? is the one below in?), then doubling or bisection.
  pending, first = ([min(max(predicted, 1), limit)] if predicted else []), True
  while calls[0] < max_probes + 2:
    good = max(k for k, p in probes.items() if p.fits)
    bad = first_bad()
    if (bad is not None and bad == good + 1) or (bad is None and good >= limit):
      break
    wanted = [k for k in pending if k not in probes and good < k and (bad is None or k < bad)]
    if wanted:
      k = wanted[0]
    else:
      k = min(2 * good, limit) if bad is None else (good + bad) // 2
    result = at(k)
    pending = [k + 1 if result.fits else k - 1] if (wanted and first) else []
    first = first and not wanted
  return best(), predicted


def _report(config, target, mesh, main: Probe, best: Probe | None, probes, headroom, unit, searched) -> dict:
  devices = len(target.devices)
  memory = dict(main.sizes)
  memory.update({k: v for k, v in main.memory.items()})
  memory["peak"] = main.peak
  result = {
      "trainer": config.trainer, "target": target.name, "chip": target.chip.name, "devices": devices,
      "slices": target.slices, "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "device_memory": target.chip.memory, "usable_gib": round(target.chip.usable_gib, 2), "headroom": headroom,
      "budget_gib": round((1 - headroom) * target.chip.usable_gib, 2),
      **main.info,
      "global_batch": main.global_batch, "batch_per_device": main.global_batch / devices, "fits": main.fits,
      "compiled": main.compiled, "error": main.error,
      "bytes_per_device": memory,
      "flops_per_step": main.flops, "flops_per_device": main.flops / devices,
      "xla_flops_per_device": main.xla_flops_per_device,
      "lower_s": round(main.lower_s, 2), "compile_s": round(main.compile_s, 2),
      "compile_cpu_s": round(main.compile_cpu_s, 2),
      "batch_unit": unit, "searched": searched,
      "max_global_batch": best.global_batch if best else 0,
      "max_batch_per_device": (best.global_batch / devices) if best else 0,
      "peak_at_max_gib": round(best.peak / GIB, 2) if best else None,
      "probes": [{"global_batch": p.global_batch, "fits": p.fits, "compiled": p.compiled,
                  "peak_gib": round(p.peak / GIB, 3), "compile_s": round(p.compile_s, 2),
                  "compile_cpu_s": round(p.compile_cpu_s, 2), **({"error": p.error} if p.crashed else {})}
                 for _, p in sorted(probes.items())],
      "total_compile_s": round(sum(p.lower_s + p.compile_s for p in probes.values()), 1),
  }
  return result


def format_table(result: dict) -> str:
  """The plan as a two-column table (per-device bytes in GiB)."""
  b = result["bytes_per_device"]
  gib = lambda n: f"{n / GIB:.2f} GiB" if n is not None else "-"  # noqa: E731
  rows = [
      ("target", f"{result['target']} ({result['chip']}, {result['devices']} devices, mesh {result['mesh']})"),
      ("device memory", f"{result['device_memory']}; usable {result['usable_gib']} GiB, budget "
                        f"{result['budget_gib']} GiB ({result['headroom']:.0%} headroom)"),
      ("model", result.get("model", "")),
      ("params", f"{result.get('params', 0):,} ({result.get('trainable_params', 0):,} trainable)"),
      ("global batch", f"{result['global_batch']} ({result['batch_per_device']:g} per device)"),
      ("params / device", gib(b.get("params"))), ("optimizer state / device", gib(b.get("opt_state"))),
      ("batch / device", gib(b.get("batch"))),
      ("temporaries / device", gib(b.get("temp")) if result["compiled"] else "-"),
      ("peak / device", gib(b.get("peak")) + ("" if result["compiled"] else " (needed, per the compiler)")),
      ("fits", ("yes" if result["fits"] else "NO") + (f" -- {result['error']}" if result["error"] else "")),
      ("FLOPs / step", f"{result['flops_per_step']:.4g} (jaxpr matmuls; {result['flops_per_device']:.4g} per device)"),
      ("XLA FLOPs / device", f"{result['xla_flops_per_device']:.4g} (loop bodies counted once)"
       if result["xla_flops_per_device"] else "- (not reported for this target)"),
      ("compile", f"{result['compile_s']:.1f} s wall, {result['compile_cpu_s']:.1f} s CPU (+ {result['lower_s']:.1f} s "
                  f"tracing and lowering)"),
  ]
  if result["searched"]:
    rows.append(("largest batch that fits", f"{result['max_global_batch']} global = "
                 f"{result['max_batch_per_device']:g} per device (peak {result['peak_at_max_gib']} GiB); "
                 f"{len(result['probes'])} compiles, {result['total_compile_s']} s"))
    for p in result["probes"]:
      if "error" in p:  # the largest fit is then the largest below a batch the compiler could not build
        rows.append(("compiler error", f"at batch {p['global_batch']}: {p['error']}"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv=None) -> None:
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Config file and its arg string, e.g. "
                                  "configs/tga/mistral7b.py:stage=2; fields override as --config.<key>=<value>.",
                                  lock_config=True)
  flags.DEFINE_string("target", None, "v4:2x2x2, v5e:16x16, v5p:4x4x4, v6e:2x2, h100:1x1x8, h200:1x1x8, cpu:8, ...")
  flags.DEFINE_integer("slices", 1, "TPU slices joined over the data-centre network (multislice).")
  flags.DEFINE_integer("batch", 0, "Global batch to plan (0: the config's batch_size).")
  flags.DEFINE_integer("batch_per_device", 0, "Or the batch per device (global = this x the target's devices).")
  flags.DEFINE_bool("search", True, "Also search the largest batch that fits (one compile per probe).")
  flags.DEFINE_integer("max_batch_per_device", 64, "Upper end of the search.")
  flags.DEFINE_integer("max_probes", 6, "Compiles the search may add after its first two.")
  flags.DEFINE_float("headroom", 0.1, "Fraction of the usable device memory kept free.")
  flags.DEFINE_string("json_out", "", "Also append the JSON line to this file.")
  flags.mark_flags_as_required(["config", "target"])

  def run(argv):
    del argv
    f = flags.FLAGS
    kind, topology = parse_target(f.target)
    import jax

    # This host runs nothing and only compiles: no backend but the CPU's is started (with libtpu or the
    # CUDA plugin installed, JAX would otherwise look for chips that are not here).
    jax.config.update("jax_platforms", "cpu")
    if kind == "cpu":
      jax.config.update("jax_num_cpu_devices", int(topology))
    target = make_target(f.target, f.slices)
    print(f"planning {f.config.trainer} for {target.name}: {len(target.devices)} x {target.chip.name}",
          file=sys.stderr)
    batch = f.batch or f.batch_per_device * len(target.devices)
    result = plan(f.config, target, batch=batch, search=f.search, max_batch_per_device=f.max_batch_per_device,
                  headroom=f.headroom, max_probes=f.max_probes, log=lambda line: print(line, file=sys.stderr))
    result["config"] = _config_arg(sys.argv)
    print(format_table(result))
    line = json.dumps(result)
    print(line)
    if f.json_out:
      os.makedirs(os.path.dirname(os.path.abspath(f.json_out)), exist_ok=True)
      with open(f.json_out, "a") as out:
        out.write(line + "\n")

  app.run(run, argv=argv)


def _config_arg(argv) -> str:
  """--config=... and its --config.* overrides as given (the plan's label)."""
  return " ".join(a for a in argv[1:] if a.startswith("--config"))


if __name__ == "__main__":
  main()
