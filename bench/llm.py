"""SmolLM2-135M-Instruct, float32, this machine: ours (JAX) vs transformers + torch, in one run.

    python bench/llm.py [--steps 3] [--decode-tokens 64] [--remat-policy none] [--synthetic]

--synthetic uses random weights of the same architecture (no model package needed: the speed does not
depend on the weights). On a GPU, torch runs on CUDA with TF32 matmuls allowed, as XLA's default f32
precision does there.

Measures the f32 matmul peak (2048x2048), then for both stacks: the train step (4x128 tokens, AdamW),
the forward pass (4x256 tokens) and greedy decoding at batch 1 and 8 (decode-only tokens/s: the time of
N new tokens minus the time of 1, so prefill is excluded on both sides). Each figure is the best of
--steps repeats, ours and torch timed alternately so both see the same background load (the machine is
shared; torch's thread pool suffers more than XLA's when the cores are busy). MFU is model FLOPs per
second over the measured peak. Last, the train-step target (>= 1.0x torch) and this machine's
ceilings: the weight-streaming rate (the floor of a batch-1 decode step) and torch's train-step MFU.
Not a test.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import tga_jax  # noqa: E402
import trainkit  # noqa: E402
from bench.common import torch_device  # noqa: E402
from tga_jax.models.llama import LlamaForCausalLM  # noqa: E402

NAME = "smollm2-135m-instruct"
# SmolLM2-135M's architecture, for --synthetic (random weights) runs where the GGUF package is absent.
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                    num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0,
                    max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                    pad_token_id=2)


def torch_sync():
  import torch
  if torch.cuda.is_available() and torch.cuda.is_initialized():
    torch.cuda.synchronize()


def best_time(fn, repeats: int) -> float:
  """Minimum wall time of `repeats` calls (after one warm-up call that also compiles)."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def paired_best(ours, theirs, repeats: int) -> tuple[float, float]:
  """Best wall times of two callables timed alternately (after a warm-up each), so that both see the
  same background load on a shared machine. `theirs` may be None (then its time is inf)."""
  ours()
  if theirs is not None:
    theirs()
  best = [float("inf"), float("inf")]
  for _ in range(repeats):
    for i, fn in enumerate((ours, theirs)):
      if fn is None:
        continue
      start = time.perf_counter()
      fn()
      best[i] = min(best[i], time.perf_counter() - start)
  return best[0], best[1]


def matmul_peak() -> float:
  """GFLOP/s of a jitted 2048x2048 float32 matmul."""
  a = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  seconds = best_time(lambda: f(a).block_until_ready(), 10)
  return 2 * 2048 ** 3 / seconds / 1e9


def weight_read_seconds(param_bytes: int) -> float:
  """Seconds to stream `param_bytes` of float32 weights through a batch-1 matvec (jitted, 30 blocks of
  576 rows, SmolLM2's width): the floor of one batch-1 decode step, which must read every weight once."""
  cols = param_bytes // 4 // 30 // 576
  mats = [jax.random.normal(jax.random.PRNGKey(i), (576, cols), jnp.float32) for i in range(30)]
  x = jnp.ones((1, 576), jnp.float32)
  f = jax.jit(lambda x, ms: [x @ m for m in ms])
  return best_time(lambda: jax.block_until_ready(f(x, mats)), 10)


def forward_flops(config, batch: int, length: int) -> float:
  """Matmul FLOPs of one forward pass: weights (lm_head included) + attention scores and values."""
  per_layer = (config.hidden_size * (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
               + config.num_heads * config.head_dim * config.hidden_size
               + 3 * config.hidden_size * config.intermediate_size)
  weights = config.num_layers * per_layer + config.hidden_size * config.vocab_size
  attention = config.num_layers * 2 * 2 * length * config.num_heads * config.head_dim / 2  # causal half
  return batch * length * (2 * weights + attention)


def decode_flops(config, batch: int) -> float:
  return forward_flops(config, batch, 1)


# ---------------------------------------------------------------- ours

def ours_train_step(module, params, batch, length, remat_policy):
  config = dataclasses.replace(module.config, remat_policy=remat_policy)
  model = LlamaForCausalLM(config)
  mesh = trainkit.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  rules = trainkit.DEFAULT_RULES
  opt_cfg = ml_collections.ConfigDict(dict(name="adamw", learning_rate=1e-5, weight_decay=0.0, b1=0.9, b2=0.999,
                                           eps=1e-8, schedule="constant", warmup_steps=0, clip_norm=0.0,
                                           trainable=(".*",), grad_accum_steps=1))
  ids = jnp.zeros((batch, length), jnp.int32)
  init_params = lambda rng: model.init(rng, ids)["params"]  # noqa: E731
  abstract = jax.eval_shape(lambda: params)
  tx, schedule, trainable = trainkit.make_optimizer(opt_cfg, 100, abstract)
  state, shardings = trainkit.create_train_state(init_params, tx, mesh, rules, 0, params=params)

  def loss_fn(p, b, rng):
    logits, _ = model.apply({"params": p}, b["input_ids"][:, :-1])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, b["input_ids"][:, 1:]).mean()
    return loss, {}

  step = trainkit.make_train_step(loss_fn, tx, shardings, trainkit.batch_sharding(mesh, rules), mesh=mesh,
                                  rules=rules, schedule=schedule, trainable=trainable)
  data = {"input_ids": np.random.RandomState(0).randint(0, config.vocab_size, (batch, length + 1)).astype(np.int32)}
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], data)
    jax.block_until_ready(metrics["loss"])
  return run


def ours_forward(module, params, batch, length):
  ids = np.random.RandomState(1).randint(0, module.config.vocab_size, (batch, length)).astype(np.int32)
  f = jax.jit(lambda p, x: module.apply({"params": p}, x)[0])
  return lambda: f(params, ids).block_until_ready()


def ours_decode(module, params, batch, prompt_length, new_tokens):
  # No EOS: every row decodes all new_tokens, as on the torch side.
  module = LlamaForCausalLM(dataclasses.replace(module.config, eos_token_id=None))
  ids = np.random.RandomState(2).randint(3, module.config.vocab_size, (batch, prompt_length)).astype(np.int32)
  mask = np.ones_like(ids)
  return lambda n: tga_jax.generate_tokens(module, params, ids, mask, n, eos_token_id=(), pad_token_id=0)


# ---------------------------------------------------------------- transformers + torch

def torch_model(synthetic: bool):
  import torch
  import transformers
  if synthetic:
    c = SMOLLM2_135M
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_layers"], num_attention_heads=c["num_heads"],
        num_key_value_heads=c["num_kv_heads"], rms_norm_eps=c["rms_norm_eps"], rope_theta=c["rope_theta"],
        max_position_embeddings=c["max_position_embeddings"], tie_word_embeddings=True))
  else:
    from tga_jax.weights.known_models import resolve_model_path
    path = resolve_model_path(NAME)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
  model.generation_config.eos_token_id = None
  return model.to(torch_device())


def torch_train_step(model, batch, length):
  import torch
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
  ids = torch.tensor(np.random.RandomState(0).randint(0, model.config.vocab_size, (batch, length + 1)),
                     device=model.device)

  def run():
    loss = model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch_sync()
  return run


def torch_forward(model, batch, length):
  import torch
  model.eval()
  ids = torch.tensor(np.random.RandomState(1).randint(0, model.config.vocab_size, (batch, length)),
                     device=model.device)

  def run():
    with torch.inference_mode():
      model(input_ids=ids)
    torch_sync()
  return run


def torch_decode(model, batch, prompt_length):
  import torch
  model.eval()
  ids = torch.tensor(np.random.RandomState(2).randint(3, model.config.vocab_size, (batch, prompt_length)),
                     device=model.device)

  def run(n):
    with torch.inference_mode():
      model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                     do_sample=False, pad_token_id=0)
    torch_sync()
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=3, help="timed repeats per measurement (best is kept)")
  parser.add_argument("--decode-tokens", type=int, default=64)
  parser.add_argument("--remat-policy", default="none", help="ours: LlamaConfig.remat_policy for training")
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--synthetic", action="store_true", help="random weights of SmolLM2-135M's architecture")
  args = parser.parse_args()

  import torch
  torch.set_num_threads(2)
  torch.backends.cuda.matmul.allow_tf32 = True  # XLA's default f32 dot precision on GPUs is TF32 too
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, {os.cpu_count()} cores")
  peak = matmul_peak()
  print(f"measured peak: {peak:.1f} GFLOP/s (2048x2048 float32 matmul, jax)")

  if args.synthetic:
    module = LlamaForCausalLM(tga_jax.LlamaConfig(**SMOLLM2_135M))
    boxed = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    host_params = jax.tree.map(np.asarray, nn.meta.unbox(boxed))
  else:
    module, host_params = tga_jax.load_llm(NAME)
  params = jax.device_put(host_params)
  config = module.config
  results = {}

  def report(name, ours_rate, torch_rate, flops_per_unit, unit):
    ratio = f"{ours_rate / torch_rate:5.2f}x" if torch_rate else "  n/a"
    torch_text = f"{torch_rate:9.1f}" if torch_rate else "      n/a"
    mfu = lambda r: 100 * r * flops_per_unit / 1e9 / peak  # noqa: E731
    torch_mfu = f"{mfu(torch_rate):5.1f}%" if torch_rate else "  n/a"
    print(f"{name:28s} {ours_rate:9.1f} {torch_text} {unit:9s} {ratio}   MFU ours {mfu(ours_rate):5.1f}%  "
          f"torch {torch_mfu}", flush=True)
    results[name] = (ours_rate, torch_rate)

  reference = None if args.skip_torch else torch_model(args.synthetic)
  print(f"\n{'':28s} {'ours':>9s} {'torch':>9s} {'unit':9s} ratio")

  def rates(ours_fn, theirs_fn, units):
    ours_s, theirs_s = paired_best(ours_fn, theirs_fn, args.steps)
    return units / ours_s, (units / theirs_s if theirs_fn else 0.0)

  b, t = 4, 128
  ours, theirs = rates(ours_train_step(module, host_params, b, t, args.remat_policy),
                       torch_train_step(reference, b, t) if reference else None, b * t)
  report(f"train step {b}x{t} adamw", ours, theirs, 3 * forward_flops(config, 1, t) / t, "tokens/s")

  b, t = 4, 256
  ours, theirs = rates(ours_forward(module, params, b, t), torch_forward(reference, b, t) if reference else None,
                       b * t)
  report(f"forward {b}x{t}", ours, theirs, forward_flops(config, 1, t) / t, "tokens/s")

  for b in (1, 8):
    n = args.decode_tokens
    ours_run = ours_decode(module, params, b, 16, n)
    theirs_run = torch_decode(reference, b, 16) if reference else None
    # Decode-only: N new tokens minus 1 new token (the prefill), timed alternately on both stacks.
    full = paired_best(lambda: ours_run(n), (lambda: theirs_run(n)) if theirs_run else None, args.steps)
    first = paired_best(lambda: ours_run(1), (lambda: theirs_run(1)) if theirs_run else None, args.steps)
    ours = b * (n - 1) / max(full[0] - first[0], 1e-9)
    theirs = b * (n - 1) / max(full[1] - first[1], 1e-9) if theirs_run else 0.0
    report(f"greedy decode batch {b}", ours, theirs, decode_flops(config, 1), "tokens/s")

  train_ratio = results["train step 4x128 adamw"]
  decode_ratio = results["greedy decode batch 1"]
  if reference:
    print(f"\ntarget: train step >= 1.0x torch: {train_ratio[0] / train_ratio[1]:.2f}x")
    # The ceilings on this machine: a batch-1 step reads every weight once, and a train step cannot run
    # above the matmul peak.
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(host_params))
    read = weight_read_seconds(param_bytes)
    print(f"ceilings: batch-1 decode reads {param_bytes / 1e6:.0f} MB of weights per token, streamed at "
          f"{param_bytes / read / 1e9:.1f} GB/s -> at most {1 / read:.1f} tokens/s "
          f"(torch: {decode_ratio[1]:.1f}); torch's train step is "
          f"{100 * train_ratio[1] * 3 * forward_flops(config, 1, 128) / 128 / 1e9 / peak:.0f}% MFU")


if __name__ == "__main__":
  main()
