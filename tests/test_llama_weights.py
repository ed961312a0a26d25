"""Weights in and out: HF safetensors (single, sharded, bf16), GGUF (every supported type, llama.cpp's
q/k row order), export back to an HF folder that transformers loads, and the errors bad input gives."""
import json
import os

import gguf
import jax
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

import tga_jax
from tga_jax.weights import gguf_io

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 97


def tiny_reference(folder=None, kind="llama", seed=0, **fields):
  torch.manual_seed(seed)
  common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
  common.update(fields)
  config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[kind]
  model = model_cls(config_cls(**common)).eval()
  if folder is not None:
    model.save_pretrained(folder)
  return model


def torch_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.numpy()


IDS = np.array([[5, 9, 13, 40, 2, 77, 31, 8], [60, 61, 3, 3, 90, 12, 44, 1]])


@pytest.mark.parametrize("kind,fields", [("llama", {}), ("llama", {"tie_word_embeddings": True}),
                                         ("mistral", {"sliding_window": 4, "head_dim": 32})])
def test_export_reloads_in_transformers_with_the_same_logits(tmp_path, kind, fields):
  tiny_reference(str(tmp_path / "src"), kind, **fields)
  module, params = tga_jax.load_llm(str(tmp_path / "src"))
  # Change the weights, so the export cannot pass by echoing the source file.
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.RandomState(0)
  params = jax.tree.unflatten(tree, [x + 0.05 * rng.randn(*x.shape).astype(x.dtype) for x in leaves])
  out = tga_jax.save_llm_hf(module, params, str(tmp_path / "out"))
  reloaded = (transformers.MistralForCausalLM if kind == "mistral" else transformers.LlamaForCausalLM) \
      .from_pretrained(out).eval()
  ours, _ = module.apply({"params": params}, IDS)
  np.testing.assert_allclose(torch_logits(reloaded, IDS), np.asarray(ours), atol=1e-4, rtol=0)
  # And back: our loader reads what we wrote, bit for bit.
  _, again = tga_jax.load_llm(out)
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_sharded_and_bfloat16_checkpoints(tmp_path):
  reference = tiny_reference(str(tmp_path / "single"))
  reference.save_pretrained(str(tmp_path / "sharded"), max_shard_size="40KB")
  assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors")]) > 2
  _, single = tga_jax.load_llm(str(tmp_path / "single"))
  _, sharded = tga_jax.load_llm(str(tmp_path / "sharded"))
  jax.tree.map(np.testing.assert_array_equal, single, sharded)

  reference.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
  module, bf16 = tga_jax.load_llm(str(tmp_path / "bf16"))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16))
  want = reference.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
  np.testing.assert_array_equal(bf16["layers"]["attn"]["q"]["kernel"][1].reshape(64, -1), want.T)


# ---------------------------------------------------------------- GGUF

def llama_cpp_permute(w, heads):
  """llama.cpp's converter: per head, rows [half, i] -> [i, half] (written here from its description)."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_k_blocks(qtype, rows, cols, rng):
  """Raw Q4_K / Q6_K rows: random quants with small, finite float16 scales (gguf cannot quantise K types)."""
  block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
  raw = rng.randint(0, 256, (rows, cols // block_size, type_size)).astype(np.uint8)
  # Two float16 scales per block as 4 bytes: Q4_K starts with (d, dmin); Q6_K ends with d.
  scales = rng.uniform(0.002, 0.02, (rows, cols // block_size, 2)).astype(np.float16).view(np.uint8)
  if qtype == Q.Q4_K:
    raw[..., 0:4] = scales
  else:
    raw[..., -2:] = scales[..., :2]
  return raw.reshape(rows, -1)


def write_gguf(path, weights, types, config, rng, arch="llama"):
  """Writes HF-named float weights as a llama.cpp-style GGUF. Returns the HF-layout weights a correct
  reader must produce (the dequantised values, in HF row order)."""
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(config["layers"])
  writer.add_context_length(64)
  writer.add_embedding_length(config["hidden"])
  writer.add_feed_forward_length(config["ffn"])
  writer.add_head_count(config["heads"])
  writer.add_head_count_kv(config["kv_heads"])
  writer.add_rope_freq_base(10000.0)
  writer.add_layer_norm_rms_eps(1e-6)
  writer.add_vocab_size(VOCAB)
  names = {v: k for k, v in gguf_io._GLOBAL_NAMES.items()}
  expected = {}
  for i, (name, w) in enumerate(sorted(weights.items())):
    gguf_name = names.get(name)
    if gguf_name is None:
      layer = name.split(".")[2]
      part = ".".join(name.split(".")[3:-1])
      short = {v: k for k, v in gguf_io._LAYER_NAMES.items()}[part]
      gguf_name = f"blk.{layer}.{short}.weight"
    heads = config["heads"] if "q_proj" in name else config["kv_heads"] if "k_proj" in name else None
    stored = llama_cpp_permute(w, heads) if heads else w
    qtype = types[i % len(types)] if w.ndim == 2 else Q.F32
    if qtype in (Q.Q4_K, Q.Q6_K):
      raw = random_k_blocks(qtype, stored.shape[0], stored.shape[1], rng)
    elif qtype == Q.F32:
      raw = stored.astype(np.float32)
    elif qtype == Q.F16:
      raw = stored.astype(np.float16)
    else:
      raw = gguf.quants.quantize(stored.astype(np.float32), qtype)
    values = gguf.quants.dequantize(raw.view(np.uint8) if qtype not in (Q.F32, Q.F16) else raw, qtype)
    values = np.asarray(values, np.float32).reshape(stored.shape)
    expected[name] = gguf_io.unpermute_rows(values, heads) if heads else values
    writer.add_tensor(gguf_name, raw, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return expected


def test_unpermute_inverts_llama_cpp_permute():
  w = np.arange(12 * 64 * 3, dtype=np.float32).reshape(12 * 64, 3)
  for heads in (1, 3, 12):
    np.testing.assert_array_equal(gguf_io.unpermute_rows(llama_cpp_permute(w, heads), heads), w)


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_every_type_matches_transformers_on_the_dequantised_weights(tmp_path, tied):
  # K-quants work on 256-wide rows: hidden 256, ffn 512.
  shape = dict(hidden=256, ffn=512, heads=4, kv_heads=2, layers=2)
  reference = tiny_reference(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                             tie_word_embeddings=tied, rms_norm_eps=1e-6)
  weights = {k: v.numpy() for k, v in reference.state_dict().items() if not (tied and k == "lm_head.weight")}
  types = [Q.Q4_K, Q.Q6_K, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16, Q.F32]
  path = str(tmp_path / "tiny.gguf")
  expected = write_gguf(path, weights, types, shape, np.random.RandomState(1))
  # The reference runs on exactly the dequantised weights.
  state = {k: torch.tensor(v) for k, v in expected.items()}
  if tied:
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
  reference.load_state_dict(state)
  module, params = tga_jax.load_llm(path)
  assert module.config.tie_word_embeddings == tied
  assert (module.config.num_heads, module.config.num_kv_heads, module.config.head_dim) == (4, 2, 64)
  logits, _ = module.apply({"params": params}, IDS)
  # Random K-quant blocks make large weights (logits ~100): compare relative to that scale.
  want = torch_logits(reference, IDS)
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-5 * np.abs(want).max(), rtol=0)


# ---------------------------------------------------------------- bad input

def test_folder_without_config(tmp_path):
  tiny_reference(str(tmp_path))
  os.remove(tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match=r"no config\.json.*model\.safetensors"):
    tga_jax.load_llm(str(tmp_path))


def test_truncated_safetensors(tmp_path):
  tiny_reference(str(tmp_path))
  path = tmp_path / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
    tga_jax.load_llm(str(tmp_path))


def test_unsupported_architecture(tmp_path):
  tiny_reference(str(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"config\.json: architectures=\['GPT2LMHeadModel'\].*not supported.*"
                                       r"LlamaForCausalLM"):
    tga_jax.load_llm(str(tmp_path))
  gguf_path = str(tmp_path / "x.gguf")
  writer = gguf.GGUFWriter(gguf_path, "gpt2")
  writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"x\.gguf: general\.architecture='gpt2' is not supported"):
    tga_jax.load_llm(gguf_path)


def test_one_error_lists_every_bad_tensor(tmp_path):
  from safetensors.numpy import load_file, save_file
  tiny_reference(str(tmp_path))
  tensors = load_file(str(tmp_path / "model.safetensors"))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  del tensors["model.norm.weight"]
  tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((7, 64), np.float32)
  tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
  tensors["model.layers.5.mlp.up_proj.weight"] = np.zeros((112, 64), np.float32)
  save_file(tensors, str(tmp_path / "model.safetensors"))
  with pytest.raises(tga_jax.WeightsError) as error:
    tga_jax.load_llm(str(tmp_path))
  message = str(error.value)
  assert "5 tensor(s)" in message
  for line in ("missing: model.layers.1.mlp.up_proj.weight (112, 64)", "missing: model.norm.weight (64,)",
               "shape: model.layers.0.self_attn.k_proj.weight is (7, 64), expected (32, 64)",
               "unexpected: model.layers.0.extra.weight (3,)",
               "unexpected: model.layers.5.mlp.up_proj.weight (layer 5; the config has 2 layers)"):
    assert line in message, message


def test_unknown_name_and_non_model_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'no-such-model' is neither an existing path nor a known model"):
    tga_jax.load_llm("no-such-model")
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(ValueError, match=r"notes\.txt: expected an HF model folder or a GGUF file"):
    tga_jax.load_llm(str(tmp_path / "notes.txt"))
  os.makedirs(tmp_path / "empty")
  (tmp_path / "empty" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                              "vocab_size": 8}))
  with pytest.raises(ValueError, match=r"config\.json: missing fields \['hidden_size'"):
    tga_jax.load_llm(str(tmp_path / "empty"))
