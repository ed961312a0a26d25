"""Our decoder vs transformers' torch LlamaForCausalLM / MistralForCausalLM on tiny random models.

Logits and every hidden state (transformers' counting: embeddings, each layer, final norm) within 1e-4
in float32, with left and right padding; GQA, tied and untied embeddings, rope scaling, sliding window.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tga_jax
from tga_jax.models.llama import LlamaConfig, LlamaForCausalLM

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
VOCAB = 97

CASES = {
    "llama_gqa_untied": dict(kind="llama", num_key_value_heads=2),
    "llama_mha_tied": dict(kind="llama", num_key_value_heads=4, tie_word_embeddings=True),
    "llama3_rope": dict(kind="llama", num_key_value_heads=1, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "llama_linear_rope": dict(kind="llama", num_key_value_heads=2, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    "mistral_window": dict(kind="mistral", num_key_value_heads=2, sliding_window=5, head_dim=24),
}


def make_reference(folder, kind="llama", seed=0, **fields):
  """A tiny random HF model saved with save_pretrained into `folder`; returns the torch model."""
  torch.manual_seed(seed)
  common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-5,
                attn_implementation="eager")
  common.update(fields)
  if kind == "mistral":
    model = transformers.MistralForCausalLM(transformers.MistralConfig(**common))
  else:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
  model.eval()
  # Norm weights start at 1 in HF; randomise them so a swapped or missing norm cannot pass unnoticed.
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.copy_(1 + 0.2 * torch.randn_like(param))
  model.save_pretrained(folder)
  return model


def batch(seed=0, length=13):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, VOCAB, (3, length))
  left = np.ones_like(ids)
  left[1, :5] = 0
  left[2, :9] = 0
  right = left[:, ::-1].copy()
  return ids, left, right


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
  folder = str(tmp_path_factory.mktemp(request.param))
  reference = make_reference(folder, **CASES[request.param])
  module, params = tga_jax.load_llm(folder)
  return request.param, reference, module, params


@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_logits_and_hidden_states_match_transformers(pair, padding):
  name, reference, module, params = pair
  ids, left, right = batch()
  mask = {"none": np.ones_like(ids), "left": left, "right": right}[padding]
  with torch.no_grad():
    out = reference(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True,
                    output_attentions=True)
  logits, aux = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m, output_hidden_states=True,
                                                     output_last_attention=True))(params, ids, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(logits)[real], out.logits.numpy()[real], atol=TOL, rtol=0)
  want = np.stack([h.numpy() for h in out.hidden_states])
  got = np.asarray(aux["hidden_states"])
  assert got.shape == want.shape == (module.config.num_layers + 1,) + ids.shape + (64,)
  np.testing.assert_allclose(got[:, real], want[:, real], atol=TOL, rtol=0)

  # The attention of each row's last real token, every layer and head.
  last = np.array([np.nonzero(row)[0].max() for row in mask])
  want_attention = np.stack([a.numpy()[np.arange(len(ids)), :, last] for a in out.attentions])
  got_attention = np.asarray(aux["last_attention"])
  assert got_attention.shape == (3, len(ids), 4, ids.shape[1])
  np.testing.assert_allclose(got_attention * real[None, :, None], want_attention * real[None, :, None],
                             atol=TOL, rtol=0)


def test_sliding_window_changes_the_result():
  """The window really restricts attention: with no window the later positions differ."""
  config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
                       num_kv_heads=1, head_dim=16, model_type="mistral", sliding_window=3)
  ids = np.arange(3, 13)[None]
  variables = jax.jit(LlamaForCausalLM(config).init)(jax.random.PRNGKey(0), ids)
  windowed, _ = jax.jit(LlamaForCausalLM(config).apply)(variables, ids)
  full, _ = jax.jit(LlamaForCausalLM(LlamaConfig(**{**config.__dict__, "sliding_window": None})).apply)(variables, ids)
  np.testing.assert_allclose(windowed[:, :3], full[:, :3], atol=1e-6)
  assert np.abs(np.asarray(windowed[:, 3:] - full[:, 3:])).max() > 1e-3


def test_params_carry_logical_axis_names():
  config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, attention_bias=True, mlp_bias=True)
  boxed = jax.eval_shape(lambda r: LlamaForCausalLM(config).init(r, jnp.zeros((1, 4), jnp.int32)),
                         jax.random.PRNGKey(0))["params"]
  allowed = {"embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "layers"}
  leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert len(leaves) == 19  # embedding, final norm, lm_head + 16 per layer
  for path, leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= allowed, (path, leaf.names)
    assert (leaf.names[0] == "layers") == (jax.tree_util.keystr(path).startswith("['layers']")), path
  assert boxed["layers"]["attn"]["q"]["kernel"].names == ("layers", "embed", "heads", "head_dim")
  assert boxed["layers"]["attn"]["k"]["kernel"].names == ("layers", "embed", "kv_heads", "head_dim")


def test_remat_policies_give_the_same_gradients():
  config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, remat_policy="none")
  ids = np.arange(2, 18).reshape(2, 8)
  params = jax.jit(lambda r: nn.meta.unbox(LlamaForCausalLM(config).init(r, ids)["params"]))(jax.random.PRNGKey(1))

  def grads(cfg):
    def loss(p):
      logits, _ = LlamaForCausalLM(cfg).apply({"params": p}, ids)
      return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])
    return jax.jit(jax.grad(loss))(params)

  base = grads(config)
  other = grads(LlamaConfig(**{**config.__dict__, "remat_policy": "nothing_saveable"}))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), base, other)


def test_bfloat16_matmuls_stay_close_to_float32(tmp_path):
  make_reference(str(tmp_path), num_key_value_heads=2)
  ids, left, _ = batch()
  module32, params = tga_jax.load_llm(str(tmp_path))
  module16, _ = tga_jax.load_llm(str(tmp_path), dtype="bfloat16")
  logits32, _ = module32.apply({"params": params}, ids, left)
  logits16, _ = module16.apply({"params": params}, ids, left)
  assert logits16.dtype == jnp.float32
  real = left.astype(bool)
  assert np.abs(np.asarray(logits16 - logits32)[real]).max() < 0.05


def test_unscanned_layers_match_the_scan(pair):
  """scan_layers=False (what generation uses) on unstacked params: the same logits and taps."""
  name, _, module, params = pair
  ids, left, _ = batch()
  loop = LlamaForCausalLM(LlamaConfig(**{**module.config.__dict__, "scan_layers": False}))
  unstacked = tga_jax.unstack_layers(params)
  assert "layers" not in unstacked and f"layers_{module.config.num_layers - 1}" in unstacked
  jax.tree.map(np.testing.assert_array_equal, tga_jax.stack_layers(unstacked), params)
  want, want_aux = module.apply({"params": params}, ids, left, output_hidden_states=True, output_last_attention=True)
  got, got_aux = jax.jit(lambda p: loop.apply({"params": p}, ids, left, output_hidden_states=True,
                                              output_last_attention=True))(unstacked)
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(got_aux["hidden_states"], want_aux["hidden_states"], atol=1e-5)
  np.testing.assert_allclose(got_aux["last_attention"], want_aux["last_attention"], atol=1e-6)
