"""trainkit.lora on a tiny random LLaMA (layers under nn.scan, as the project runs them): B = 0 is the base
model exactly; the merged forward equals an unmerged one that adds scale * (x @ A) @ B to each adapted
layer's output; a sharded train step moves only the factors; misconfigurations fail naming the culprit."""
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import trainkit
from tga_jax.models.llama import DenseGeneral, LlamaConfig, LlamaForCausalLM

LLAMA = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, max_position_embeddings=64)
TARGETS = ("layers/attn/(q|k|v|o)/kernel", "layers/mlp/(gate|up|down)/kernel")
INPUT_AXES = (("layers/attn/o/kernel", 2), (".*", 1))  # o: [heads, head_dim, D]; the rest: [D or F, ...out]
ADAPTED = [f"layers/attn/{n}" for n in "qkvo"] + [f"layers/mlp/{n}" for n in ("gate", "up", "down")]


def lora_config(**overrides):
  cfg = trainkit.lora.default_config()
  cfg.update(dict(dict(rank=4, alpha=8.0, targets=TARGETS, input_axes=INPUT_AXES), **overrides))
  return cfg


@pytest.fixture(scope="module")
def model():
  """(module, ids int[2, 8], init_base, boxed params, jitted forward). The params are random numpy values
  in the boxes of the abstract init: compiling the model's init costs ~10 s of threefry on 2 cores."""
  module = LlamaForCausalLM(LLAMA)
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, LLAMA.vocab_size)
  init_base = lambda r: module.init(r, ids[:1])["params"]  # noqa: E731
  abstract = jax.eval_shape(init_base, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  values = [np.ones(x.shape, np.float32) if len(x.shape) == 1 or path[-1].key == "scale"
            else rng.normal(0.0, 0.02, x.shape).astype(np.float32)
            for path, x in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(abstract))]
  boxed = nn.meta.replace_boxed(abstract, jax.tree.unflatten(jax.tree.structure(nn.meta.unbox(abstract)), values))
  forward = jax.jit(lambda params, ids: module.apply({"params": params}, ids)[0])
  return module, ids, init_base, boxed, forward


def random_factors(lora, seed: int, std: float = 0.1):
  """Nonzero A and B (the init has B = 0), large enough that the adapters change the logits a lot."""
  rng = np.random.default_rng(seed)  # numpy: an eager jax.random draw per shape costs a threefry compile
  return jax.tree.map(lambda x: rng.normal(0.0, std, x.shape).astype(np.float32), lora)


def unmerged_logits(module, params, lora, cfg, ids):
  """The reference: base weights untouched; each targeted DenseGeneral's output gets
  scale * (x @ A) @ B added by a method interceptor. A and B sit beside the kernel as extra params of the
  same module, so nn.scan hands each layer its own slice of the stacked factors.
  Returns (logits float32[B, T, V], the module paths that were adapted)."""
  scale = cfg.alpha / cfg.rank
  modules = {tuple(path.split("/")[:-1]) for path, _ in _kernel_groups(lora)}
  adapted = set()

  def add_adapter(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name != "__call__" or not isinstance(mod, DenseGeneral) or tuple(mod.path) not in modules:
      return out
    adapted.add(tuple(mod.path))
    a, b = mod.get_variable("params", "lora_a"), mod.get_variable("params", "lora_b")
    xa = jnp.tensordot(args[0], a, axes=a.ndim - 1)  # contracts x's input axes: [B, T, r]
    return out + scale * jnp.tensordot(xa, b, axes=1)

  def run(params, lora, ids):
    extended = jax.tree.map(lambda x: x, params)  # a fresh nested dict to put the factors in
    for path, group in _kernel_groups(lora):
      node = extended
      for key in path.split("/")[:-1]:
        node = node[key]
      node["lora_a"], node["lora_b"] = group["a"], group["b"]
    with nn.intercept_methods(add_adapter):
      return module.apply({"params": extended}, ids)[0]

  return jax.jit(run)(params, lora, ids), adapted


def _kernel_groups(lora):
  """[(kernel path, {'a': A, 'b': B})] sorted by path."""
  groups = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(lora):
    *prefix, last = trainkit.path_str(path).split("/")
    groups.setdefault("/".join(prefix), {})[last] = leaf
  return sorted(groups.items())


def test_factors_have_the_kernel_axes_per_layer_and_b_zero_is_the_base_model_exactly(model):
  _, ids, _, boxed, forward = model
  cfg = lora_config()
  lora = trainkit.init_lora(boxed, cfg, jax.random.PRNGKey(2))
  q, o, down = (lora["layers"]["attn"]["q"]["kernel"], lora["layers"]["attn"]["o"]["kernel"],
                lora["layers"]["mlp"]["down"]["kernel"])
  assert q["a"].value.shape == (2, 32, 4) and q["a"].names == ("layers", "embed", "lora_rank")
  assert q["b"].value.shape == (2, 4, 4, 8) and q["b"].names == ("layers", "lora_rank", "heads", "head_dim")
  assert o["a"].value.shape == (2, 4, 8, 4) and o["a"].names == ("layers", "heads", "head_dim", "lora_rank")
  assert o["b"].value.shape == (2, 4, 32) and o["b"].names == ("layers", "lora_rank", "embed")
  assert down["a"].value.shape == (2, 48, 4) and down["b"].value.shape == (2, 4, 32)
  assert len(_kernel_groups(nn.meta.unbox(lora))) == 7
  a = np.asarray(q["a"].value)
  assert np.all(np.abs(a) <= 1 / np.sqrt(32)) and a.std() > 0.5 / np.sqrt(3 * 32)  # uniform(+-1/sqrt(fan_in))
  assert not np.allclose(a[0], a[1])  # each layer draws its own A
  assert not np.any(np.asarray(q["b"].value))
  # Abstract params give the same shapes and names (what create_train_state traces).
  abstract = jax.eval_shape(lambda: trainkit.init_lora(boxed, cfg, jax.random.PRNGKey(2)))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(lambda x: (x.shape, x.dtype), lora)

  params = nn.meta.unbox(boxed)
  merged = jax.jit(lambda p, f: trainkit.merge_lora(p, f, cfg))(params, nn.meta.unbox(lora))
  jax.tree.map(np.testing.assert_array_equal, merged, params)  # B = 0: W_eff is W bit for bit
  np.testing.assert_array_equal(np.asarray(forward(merged, ids)), np.asarray(forward(params, ids)))


def test_merged_forward_equals_the_unmerged_adapters(model):
  module, ids, _, boxed, forward = model
  cfg = lora_config()
  params = nn.meta.unbox(boxed)
  lora = random_factors(nn.meta.unbox(trainkit.init_lora(boxed, cfg, jax.random.PRNGKey(2))), seed=3)
  merged_logits = forward(jax.jit(lambda p, f: trainkit.merge_lora(p, f, cfg))(params, lora), ids)
  reference, adapted = unmerged_logits(module, params, lora, cfg, ids)
  assert adapted == {tuple(m.split("/")) for m in ADAPTED}  # the interceptor saw every adapted layer
  merged_logits, reference, base_logits = map(np.asarray, (merged_logits, reference, forward(params, ids)))
  size = np.abs(reference).max()
  # The adapters move the logits by a sizeable fraction of their size ...
  assert np.abs(reference - base_logits).max() > 0.05 * size
  # ... and the two orders of summation agree to float32 rounding: x @ (W + sAB) vs x @ W + s(xA)B differ by
  # ~eps32 (1.2e-7) times the contraction lengths (<= 48) per matmul, over 2 layers -> bound 1e-5 * size,
  # more than 1000x below the effect checked above.
  np.testing.assert_allclose(merged_logits, reference, rtol=0, atol=1e-5 * size)


def test_sharded_train_steps_move_only_the_factors(model):
  module, ids, init_base, boxed, forward = model
  cfg = lora_config()
  mesh = trainkit.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = trainkit.DEFAULT_RULES
  init = trainkit.with_lora(init_base, cfg)
  opt = ml_collections.ConfigDict(dict(learning_rate=3e-2, schedule="constant", warmup_steps=0, clip_norm=1.0,
                                       weight_decay=0.0, trainable=trainkit.LORA_TRAINABLE))
  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
  tx, schedule, trainable = trainkit.make_optimizer(opt, 10, abstract)
  # Loaded base weights (the way a pretrained LLM arrives) plus fresh factors; `init` gives the shardings.
  loaded = jax.tree.map(np.asarray, nn.meta.unbox(boxed))
  params = trainkit.attach_lora(loaded, init_base, cfg, jax.random.PRNGKey(7))
  state, shardings = trainkit.create_train_state(init, tx, mesh, rules, seed=0, params=params)

  lora_shardings = shardings.params["lora"]["layers"]["attn"]
  q, o = lora_shardings["q"]["kernel"], lora_shardings["o"]["kernel"]
  P = jax.sharding.PartitionSpec
  assert (q["a"].spec, q["b"].spec) == (P(None, "fsdp", None), P(None, None, "tensor", None))
  assert (o["a"].spec, o["b"].spec) == (P(None, "tensor", None, None), P(None, None, "fsdp"))
  adam = [x for x in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(x, optax.ScaleByAdamState)]
  moments = {trainkit.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(adam[0].mu)}
  assert len(moments) == 14 and all(m.startswith("lora/") for m in moments)  # no optimizer state for the base

  def loss_fn(params, batch, rng):
    del rng
    logits, _ = module.apply({"params": params}, batch["ids"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch["ids"][:, 1:]).mean()
    return loss, {}

  batch_sharding = trainkit.batch_sharding(mesh, rules)
  step = trainkit.make_train_step(trainkit.lora_loss_fn(loss_fn, cfg), tx, shardings, batch_sharding, mesh=mesh,
                                  rules=rules, schedule=schedule, trainable=trainable)
  batch = jax.device_put({"ids": jnp.tile(ids, (4, 1))}, batch_sharding)  # [8, 8]: the same two rows, learnable
  losses = []
  for _ in range(6):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  after = jax.device_get(state.params)
  state, metrics = step(state, batch)  # its loss is the loss at `after`

  jax.tree.map(np.testing.assert_array_equal, after["base"], loaded)  # bit-identical
  assert all(np.abs(g["b"]).max() > 0 for _, g in _kernel_groups(after["lora"]))
  assert losses[-1] < losses[0] - 0.05, losses
  # Export: plain params shaped like the base, only the targeted kernels changed, the trained model's loss.
  exported = jax.device_get(trainkit.merged_lora_params(after, cfg))
  assert jax.tree.structure(exported) == jax.tree.structure(loaded)
  changed = {trainkit.path_str(p) for (p, x), y in zip(jax.tree_util.tree_leaves_with_path(exported),
                                                        jax.tree.leaves(loaded)) if not np.array_equal(x, y)}
  assert changed == {f"{m}/kernel" for m in ADAPTED}
  logits = forward(exported, ids)  # the batch is `ids` tiled, so its mean loss is the same
  exported_loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()
  np.testing.assert_allclose(float(exported_loss), float(metrics["loss"]), rtol=1e-5)


def test_loaded_base_weights_get_the_factors_a_fresh_init_draws(model):
  _, _, init_base, boxed, _ = model
  cfg = lora_config(targets=("layers/mlp/up/kernel",))
  rng = jax.random.PRNGKey(5)
  fake_init = lambda r: boxed  # noqa: E731  (with_lora reads only shapes and names of the base)
  loaded = object()  # attach_lora passes the loaded base through untouched
  attached = trainkit.attach_lora(loaded, init_base, cfg, rng)
  fresh = nn.meta.unbox(trainkit.with_lora(fake_init, cfg)(rng))
  assert attached["base"] is loaded
  jax.tree.map(np.testing.assert_array_equal, attached["lora"], fresh["lora"])


def test_loss_wrapper_passes_merged_params_and_keeps_the_step_argument():
  cfg = lora_config()
  seen = []

  def with_step(params, batch, rng, step):
    seen.append((params, batch, rng, step))
    return 0.0, {}

  def without_step(params, batch, rng):
    seen.append((params, batch, rng))
    return 0.0, {}

  state_params = {"base": {"w": np.ones(3)}, "lora": {}}
  wrapped = trainkit.lora_loss_fn(with_step, cfg)
  assert "step" in inspect.signature(wrapped).parameters
  wrapped(state_params, "batch", "rng", step=4)
  assert "step" not in inspect.signature(trainkit.lora_loss_fn(without_step, cfg)).parameters
  trainkit.lora_loss_fn(without_step, cfg)(state_params, "batch", "rng")
  assert [s[1:] for s in seen] == [("batch", "rng", 4), ("batch", "rng")]
  assert all(list(s[0]) == ["w"] for s in seen)  # the plain (merged) params, not {'base', 'lora'}


def test_misconfigurations_fail_naming_the_path_or_regex(model):
  _, _, _, boxed, _ = model
  rng = jax.random.PRNGKey(0)
  assert not trainkit.lora_enabled(None) and not trainkit.lora_enabled(trainkit.lora.default_config())
  with pytest.raises(ValueError, match="lora.rank=0: LoRA is off"):
    trainkit.init_lora(boxed, trainkit.lora.default_config(), rng)
  with pytest.raises(ValueError, match=r"\['layers/attn/qq/kernel'\] match no parameter"):
    trainkit.init_lora(boxed, lora_config(targets=("layers/attn/qq/kernel", "layers/attn/q/kernel")), rng)
  # [L, D] is 2-D only because of the stacked 'layers' axis: not a kernel.
  with pytest.raises(ValueError, match=r"layers/input_norm/scale .*shape \(2, 32\).*not a kernel"):
    trainkit.init_lora(boxed, lora_config(targets=("layers/input_norm/scale",)), rng)
  with pytest.raises(ValueError, match=r"target layers/attn/o/kernel \(2, 4, 8, 32\) has no lora.input_axes"):
    trainkit.init_lora(boxed, lora_config(input_axes=(("layers/(attn/q|mlp/.*)/kernel", 1),
                                                      ("layers/attn/(k|v)/kernel", 1))), rng)
  with pytest.raises(ValueError, match=r"3 input axes for layers/attn/q/kernel"):
    trainkit.init_lora(boxed, lora_config(targets=("layers/attn/q/kernel",), input_axes=((".*", 3),)), rng)
  with pytest.raises(ValueError, match=r"target layers/attn/k/kernel \(matched by .*\) carries no logical axis names"):
    trainkit.init_lora(nn.meta.unbox(boxed), lora_config(), rng)
  params = nn.meta.unbox(boxed)
  stray = {"layers": {"attn": {"qq": {"kernel": {"a": jnp.zeros((2, 32, 4)), "b": jnp.zeros((2, 4, 4, 8))}}}}}
  with pytest.raises(ValueError, match=r"\['layers/attn/qq/kernel'\] have no matching param"):
    trainkit.merge_lora(params, stray, lora_config())
  wrong = {"layers": {"attn": {"q": {"kernel": {"a": jnp.zeros((2, 32, 4)), "b": jnp.zeros((2, 4, 32))}}}}}
  with pytest.raises(ValueError, match=r"layers/attn/q/kernel: a \(2, 32, 4\) and b \(2, 4, 32\) do not fit"):
    trainkit.merge_lora(params, wrong, lora_config())
