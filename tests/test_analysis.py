"""The safety analysis: Algorithm 1 (top-1 and top-5) on hand-built logit stacks, the logit lens against
the model's own logits, refusal ids from the tokenizer, and the analysis CLI on a tiny random checkpoint."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tga_jax.safety import analysis

K = 7  # the refusal id of the hand-built stacks (vocabulary of 10)


def stack(*rows):
  """Probability rows (each listing {token: p}, the rest shared evenly) -> logits float[L+1, 10]."""
  out = []
  for row in rows:
    p = np.full(10, (1.0 - sum(row.values())) / (10 - len(row)))
    for token, value in row.items():
      p[token] = value
    out.append(np.log(p))
  return np.asarray(out, np.float32)


# p_0 uniform; layer 1 raises K most (ignored: Algorithm 1 starts at l = 2); layer 2 raises token 0 most
# and K second; layer 3 raises K most; layer 4 hands the top-1 to token 1.
REFUSING = stack({}, {K: 0.3}, {0: 0.3, K: 0.32}, {0: 0.1, K: 0.7}, {1: 0.6, K: 0.2})
# K never rises most nor wins: the activation layer defaults to 1 and there is no end layer.
SILENT = stack({}, {2: 0.3}, {2: 0.4, K: 0.05}, {3: 0.5, K: 0.04}, {3: 0.6, K: 0.03})


def test_algorithm1_top1_and_top5_on_hand_built_stacks():
  top1 = jax.tree.map(np.asarray, analysis.safety_layers(REFUSING, (K,), top_k=1))
  top5 = jax.tree.map(np.asarray, analysis.safety_layers(REFUSING, (K,), top_k=5))
  assert int(top1["activation"]) == 3  # D_3's argmax is K
  assert int(top5["activation"]) == 2  # K is second in D_2: inside the reference's top 5
  assert int(top1["end"]) == 3 and int(top5["end"]) == 3  # K is p_l's top-1 at layers 2 and 3, not 4
  np.testing.assert_allclose(top1["refusal_prob"], [0.1, 0.3, 0.32, 0.7, 0.2], rtol=1e-5)

  none = analysis.safety_layers(SILENT, (K,), top_k=1)
  assert int(none["activation"]) == 1 and int(none["end"]) == -1
  # A batch of stacks gives per-sample answers; an extra id in K changes only what it should.
  both = analysis.safety_layers(np.stack([REFUSING, SILENT]), (K,), top_k=1)
  assert np.asarray(both["activation"]).tolist() == [3, 1] and np.asarray(both["end"]).tolist() == [3, -1]
  with_two = analysis.safety_layers(SILENT, (K, 2), top_k=1)
  assert int(with_two["activation"]) == 2 and int(with_two["end"]) == 2  # token 2: top of D_2 and of p_1, p_2


def test_top5_needs_a_refusal_id_among_the_five_largest_increases():
  # Layer 2 raises tokens 0..5 more than K: K is sixth, outside the top 5; layer 3 puts it first.
  ranked = stack({}, {}, {0: 0.15, 1: 0.145, 2: 0.14, 3: 0.135, 4: 0.13, 5: 0.125, K: 0.11},
                 {K: 0.9}, {K: 0.9})
  assert int(analysis.safety_layers(ranked, (K,), top_k=5)["activation"]) == 3
  assert int(analysis.safety_layers(ranked, (K,), top_k=1)["end"]) == 4


def test_logit_lens_matches_the_model_at_the_last_layer():
  from tga_jax.models.llama import LlamaConfig, LlamaForCausalLM
  cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=3, num_heads=2, num_kv_heads=1,
                    head_dim=8, remat_policy="none", tie_word_embeddings=False)
  model = LlamaForCausalLM(cfg)
  ids = jnp.asarray([[3, 4, 5, 6], [7, 8, 9, 0]])
  mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0]])  # right padding: the second row ends at position 1
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), ids)["params"])

  @jax.jit
  def run(params):
    logits, aux = model.apply({"params": params}, ids, mask, output_hidden_states=True)
    last = analysis.last_position(aux["hidden_states"], mask)
    return logits, aux["hidden_states"], analysis.lens_logits(cfg, params, last)  # lens: [L+1, B, V]

  logits, hidden, lens = run(params)
  np.testing.assert_allclose(lens[-1], logits[jnp.arange(2), jnp.asarray([3, 1])], rtol=1e-5, atol=1e-5)
  # An inner layer: final norm, then the LM head.
  h = hidden[1, 0, 3]
  normed = h * jax.lax.rsqrt(jnp.mean(h * h) + cfg.rms_norm_eps) * params["final_norm"]["scale"]
  np.testing.assert_allclose(lens[1, 0], normed @ params["lm_head"]["kernel"], rtol=1e-4, atol=1e-5)


def test_span_attention_and_cosines():
  attention = jnp.asarray(np.random.default_rng(0).dirichlet(np.ones(5), size=(2, 1, 3)), jnp.float32)  # [L, B, H, T]
  span = jnp.asarray([[True, True, False, False, False]])
  np.testing.assert_allclose(analysis.span_attention(attention, span), attention[..., :2].sum((-1, -2)), rtol=1e-6)
  a = jnp.asarray([[[1.0, 0.0]], [[1.0, 1.0]]])  # [L+1=2, B=1, D=2]
  b = jnp.asarray([[[0.0, 1.0]], [[2.0, 2.0]]])
  np.testing.assert_allclose(analysis.span_cosines(a, b), [[0.0], [1.0]], atol=1e-6)


def test_summary_averages_over_samples():
  def run(attention, ends, means):
    return {"attention": np.asarray(attention, np.float32), "end": np.asarray(ends),
            "refusal_prob": np.zeros((3, 2), np.float32), "activation/top1": np.asarray([2, 1]),
            "activation/top5": np.asarray([2, 2]), "span_means": np.asarray(means, np.float32)}
  # [L+1=3, N=2, D=2] means; the image run is the text run rotated by 90 degrees in sample 1 at layer 0.
  text_means = [[[1, 0], [1, 0]], [[1, 1], [0, 1]], [[0, 1], [0, 2]]]
  image_means = [[[1, 0], [0, 1]], [[1, 1], [0, 1]], [[0, 1], [0, 1]]]
  out = analysis.summarise(run([[0.2, 0.4], [0.5, 0.7]], [3, -1], image_means),
                           run([[0.1, 0.3], [0.0, 1.0]], [-1, -1], text_means))
  assert out["num_samples"] == 2 and out["num_layers"] == 2
  np.testing.assert_allclose(out["cosine"], [0.5, 1.0, 1.0], atol=1e-6)
  # Attention is the mean over samples (the reference keeps the last sample's only).
  np.testing.assert_allclose(out["attention"]["image"], [0.3, 0.6], atol=1e-6)
  np.testing.assert_allclose(out["attention"]["text"], [0.2, 0.5], atol=1e-6)
  assert out["activation_layer"]["image"]["top1"]["mean"] == 1.5
  assert out["activation_layer"]["text"]["top5"]["mean"] == 2
  assert out["end_layer"]["image"] == {"mean": 3.0, "found": 1, "per_sample": [3, -1]}
  assert out["end_layer"]["text"]["mean"] is None and out["end_layer"]["text"]["found"] == 0


def test_refusal_ids_come_from_the_tokenizer():
  from tga_jax.safety.eval_inputs import build_from_config
  tokenizer = build_from_config("configs/tga/tiny.py")[1]  # SmolLM2's; cached for the CLI test below
  ids = analysis.refusal_token_ids(tokenizer, ("Sorry", "I", "unable"))
  words = {tokenizer.decode([i]) for i in ids}
  assert {"Sorry", "I", " I", " unable"} <= words
  assert "un" not in words  # the first piece of a split word is no refusal
  with pytest.raises(ValueError, match="empty"):
    analysis.refusal_token_ids(tokenizer, ("Sorry", " "))


def test_analysis_cli_on_tiny_checkpoints_writes_json_and_plots(tmp_path):
  from tests.tiny_lvlm import save_random_workdir
  from tga_jax.safety import analyze
  base = save_random_workdir(str(tmp_path / "base"), seed=0)
  tga = save_random_workdir(str(tmp_path / "tga"), seed=1)
  out = str(tmp_path / "analysis")
  from tga_jax.data import procedural
  benign_scenes = [s for s in procedural.SCENES if not s.toxic]
  benign = procedural.write_llava_dataset(str(tmp_path / "benign"), procedural.make_records(
      6, seed=4, image_size=32, scenes=benign_scenes), stage=2)
  analyze.main([f"--model=baseline={base}", f"--compare=tga={tga}", "--data=procedural:n=7,seed=3",
                f"--out={out}", "--refusal-phrases=Sorry,I,cannot", "--batch-size=8", f"--benign-data={benign}"])
  report = json.load(open(os.path.join(out, "analysis.json")))
  assert report["num_benign_pairs"] == 6
  for r in report["models"].values():
    for run in ("text", "image"):
      assert len(r["probe"][run]["accuracy"]) == 5 and -1 <= r["probe"][run]["first_layer"] <= 4
  assert report["num_pairs"] == 7 and set(report["models"]) == {"baseline", "tga"}
  for r in report["models"].values():
    assert r["num_samples"] == 7 and r["num_layers"] == 4
    assert len(r["cosine"]) == 5 and all(-1.0 <= c <= 1.0 for c in r["cosine"])
    for run in ("text", "image"):
      assert len(r["attention"][run]) == 4 and all(0.0 < a <= 4.0 + 1e-4 for a in r["attention"][run])  # 4 heads
      assert len(r["refusal_prob"][run]) == 5
      for k in ("top1", "top5"):
        layers = r["activation_layer"][run][k]["per_sample"]
        assert len(layers) == 7 and all(1 <= v <= 4 for v in layers)
      assert all(-1 <= v <= 4 for v in r["end_layer"][run]["per_sample"])
      assert r["end_layer"][run]["found"] == sum(v >= 0 for v in r["end_layer"][run]["per_sample"])
    assert r["refusal_ids"] and len(r["refusal_tokens"]) == len(r["refusal_ids"])
  assert report["models"]["baseline"]["cosine"] != report["models"]["tga"]["cosine"]
  for name in analyze.PLOTS + ("probe.png",):
    path = os.path.join(out, name)
    assert path in report["plots"] and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_linear_probe_finds_the_first_separable_layer():
  rng = np.random.default_rng(0)
  labels = np.r_[np.ones(20, int), np.zeros(20, int)]
  noise = rng.normal(size=(3, 40, 8)).astype(np.float32)
  states = noise.copy()
  states[2, :, 0] += 4.0 * (2 * labels - 1)  # only layer 2 carries the label
  accuracy = analysis.probe_accuracies(states, labels)
  assert accuracy[2] == 1.0 and max(accuracy[:2]) < 0.8
  assert analysis.first_layer_at(accuracy, 0.9) == 2 and analysis.first_layer_at(accuracy[:2], 0.9) == -1
  with pytest.raises(ValueError, match="2 samples of each class"):
    analysis.probe_accuracies(states[:, :21], labels[:21] * 0 + np.r_[np.ones(20, int), 0])


def test_analysis_cli_errors_name_the_problem(tmp_path):
  from tga_jax.safety import analyze
  with pytest.raises(FileNotFoundError, match="nowhere"):
    analyze.main(["--model=nowhere", "--data=procedural:n=7", f"--out={tmp_path}"])
  with pytest.raises(ValueError, match="unknown option 'size'"):
    analyze.main([f"--model={tmp_path}", "--data=procedural:size=3", f"--out={tmp_path}"])
