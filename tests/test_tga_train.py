"""TGA training of the tiny config on 8 simulated devices: both stages, a resume, bad records counted;
the guidance term alone moves the projector and raises cos(I_j, C_j) at the guided layers."""
import json
import os

import jax
import numpy as np
import pytest

from configs.tga import tiny
from trainkit.config_files import apply_overrides
from tga_jax import train as tga_train


def small(stage, workdir_data=None, **overrides):
  config = tiny.get_config(f"stage={stage},steps=6")
  config.progress_bar = False
  config.checkpoint.every = 3
  config.checkpoint.use_async = False
  config.eval_every = 3
  config.eval_batches = 1
  config.data.procedural.n = 40
  return apply_overrides(config, overrides)


def rows(workdir, split):
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in records if r["split"] == split]


@pytest.mark.slow
def test_two_stages_with_resume_and_bad_records_counted(tmp_path):
  s1 = str(tmp_path / "s1")
  summary1 = tga_train.train(small(1), s1)
  assert summary1["final_step"] == 6 and os.path.isdir(summary1["exported_params"])

  # Stage 2 data with two bad records: a missing image and an undecodable one.
  s2 = str(tmp_path / "s2")
  tga_train.prepare_data(small(2), s2)
  data_path = os.path.join(s2, "data", "data.json")
  records = json.load(open(data_path))
  records.append({"id": "missing", "image": "images/none.png", "image_caption": "x", "retrieved_caption": "y",
                  "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]})
  open(os.path.join(s2, "data", "images", "broken.png"), "wb").write(b"garbage")
  records.append(dict(records[-1], id="broken", image="images/broken.png"))
  json.dump(records, open(data_path, "w"))

  # A constant learning rate in stage 2: the resumed run below raises total_steps, which a cosine schedule
  # bakes into the compiled step; with a constant one, the resume runs the step already compiled here.
  summary2 = tga_train.train(small(2, **{"init_from": s1, "optimizer.schedule": "constant"}), s2)
  assert summary2["final_step"] == 6
  skipped = summary2["skipped_records"]
  assert skipped.get("missing image", 0) + skipped.get("undecodable image", 0) >= 1
  train_rows = rows(s2, "train")
  assert {"lm_loss", "guide_loss", "cos_ic/1", "cos_rc/3"} <= set(train_rows[-1])
  assert rows(s2, "eval")[-1]["cos_ic/2"] != 0

  resumed = tga_train.train(small(2, **{"init_from": s1, "optimizer.schedule": "constant", "total_steps": 8}),
                            s2)  # resumes from step 6
  assert resumed["final_step"] == 8
  steps = [r["step"] for r in rows(s2, "train")]
  assert steps[-1] == 8 and sorted(set(steps)) == sorted(steps)  # nothing repeated
  # Run records: the resolved config, and throughput over the logging interval (tokens from the masks).
  assert json.load(open(os.path.join(s2, "config.json")))["tga"]["weight"] == 1.0
  assert {"steps_per_s", "tokens_per_s"} <= set(train_rows[-1])

  # Stage 2 with LoRA (rank 2): the LLM's weights move only through rank-2 factors, merged on export
  # into a plain param tree; the vision tower stays as stage 1 left it.
  s3 = str(tmp_path / "s3")
  lora = small(2, **{"init_from": s1, "total_steps": 2})
  lora.lora.rank, lora.lora.alpha = 2, 4.0
  lora.optimizer.lr_groups = (("lora/.*", 0.5),)  # the LLM's factors at half the projector's rate
  tga_train.train(lora, s3)
  before, after = tga_train.load_params(s1), tga_train.load_params(s3)
  assert jax.tree.structure(before) == jax.tree.structure(after)
  jax.tree.map(np.testing.assert_array_equal, before["vision"], after["vision"])
  changed = {jax.tree_util.keystr(path) for path, same in jax.tree_util.tree_flatten_with_path(
      jax.tree.map(np.array_equal, before["llm"], after["llm"]))[0] if not same}
  assert changed == {f"['layers']['{block}']['{name}']['kernel']" for block, names in
                     (("attn", "qkvo"), ("mlp", ("gate", "up", "down"))) for name in names}, changed
  change = after["llm"]["layers"]["attn"]["q"]["kernel"] - before["llm"]["layers"]["attn"]["q"]["kernel"]
  for layer in change:  # [D, heads, head_dim] per layer -> a [D, heads * head_dim] update of rank <= 2
    assert np.linalg.matrix_rank(layer.reshape(layer.shape[0], -1), tol=1e-6) <= 2


@pytest.mark.slow
def test_guidance_alone_reaches_the_projector_and_raises_cosine(tmp_path):
  config = small(2, **{"tga.lm_weight": 0.0, "tga.weight": 1.0})
  module, _, tokenizer = tga_train.build_model(config.model)
  from tga_jax.data import llava as llava_data
  path = tga_train.prepare_data(config, str(tmp_path))
  source = llava_data.prepared(llava_data.LlavaJson(json_path=path, data_dir=str(tmp_path / "tfds"),
                                                    file_format=llava_data.FILE_FORMAT))["train"]
  spec = llava_data.ExampleSpec(template="vicuna_v1", stage=2, max_length=96, caption_max_length=48,
                                use_retrieved=True, caption_template="vicuna_v1")
  parse = llava_data.make_parse(tokenizer, module.config, spec)
  examples = [parse(source[i]) for i in range(8)]
  batch = jax.tree.map(lambda *xs: np.stack(xs), *examples)
  # Jitted: one compile of the whole init instead of one per initialiser op run eagerly.
  params = jax.jit(module.init)(jax.random.PRNGKey(0), batch["input_ids"], batch["pixel_values"],
                                batch["attention_mask"])["params"]
  import flax.linen as nn
  params = nn.meta.unbox(params)
  loss_fn = tga_train.make_loss_fn(module, config.tga, total_steps=10)

  # Guidance-only steps on the projector raise cos(I_j, C_j) at every guided layer.
  import optax
  tx = optax.adam(1e-2)
  opt = tx.init(params["projector"])

  @jax.jit
  def step(projector, opt):
    def f(pr):
      return loss_fn({**params, "projector": pr}, batch, None, 0)
    (_, m), g = jax.value_and_grad(f, has_aux=True)(projector)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(projector, updates), opt, m, g

  # The first step's metrics and gradient are those of the initial params (one compiled program for both).
  projector, opt, metrics, grads = step(params["projector"], opt)
  projector_grad = sum(float(np.abs(np.asarray(g)).sum()) for g in jax.tree.leaves(grads))
  assert projector_grad > 0  # the guidance term is differentiable (the reference's is not)
  for _ in range(14):
    projector, opt, after, _ = step(projector, opt)
  for j in config.tga.layers:
    assert float(after[f"cos_ic/{j}"]) > float(metrics[f"cos_ic/{j}"]) + 0.05, j


def test_bucket_trimmer_cuts_padding_to_the_smallest_fitting_bucket():
  from tga_jax.data.llava import bucket_trimmer
  mask = np.zeros((2, 96), np.int32)
  mask[0, :40], mask[1, :70] = 1, 1
  cap = np.zeros((2, 48), np.int32)
  cap[:, :20] = 1
  batch = {"input_ids": np.arange(192).reshape(2, 96), "attention_mask": mask, "loss_mask": mask > 0,
           "retrieved_mask": mask > 0, "pixel_values": np.zeros((2, 1, 4, 4, 3)), "caption_ids": cap,
           "caption_attention_mask": cap, "caption_mask": cap > 0}
  out = bucket_trimmer((64, 80, 96), (32, 48))(batch)
  assert out["input_ids"].shape == (2, 80) and out["loss_mask"].shape == (2, 80)  # longest is 70
  assert out["caption_ids"].shape == (2, 32) and out["pixel_values"].shape == (2, 1, 4, 4, 3)
  assert out["attention_mask"].sum() == mask.sum()  # no real token is cut


def test_retrieved_dropout_trains_the_same_share_of_records_without_retrieved_text():
  from tga_jax.data import llava as llava_data
  from tga_jax.data.tokenizer import load_tokenizer

  config = tiny.get_config("stage=2")
  module = tga_train.model_architecture(config.model)
  tokenizer = load_tokenizer(config.model.tokenizer)

  def record(i, retrieved="a cube"):
    return {"id": f"r{i}", "problem": "", "images": [np.zeros((32, 32, 3), np.uint8)], "image_caption": "a red cube",
            "retrieved_caption": retrieved, "conversations": json.dumps(
                [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cube."}])}

  def with_retrieved(fraction, ids=range(200)):
    spec = llava_data.ExampleSpec(template=config.data.template, stage=2, max_length=config.data.max_length,
                                  caption_max_length=config.data.caption_max_length, use_retrieved=True,
                                  retrieved_dropout=fraction, caption_template=config.data.caption_template)
    parse = llava_data.make_parse(tokenizer, module.config, spec)
    return {i for i in ids if parse(record(i))["retrieved_mask"].any()}

  assert with_retrieved(0.0) == set(range(200))
  kept = with_retrieved(0.3)
  assert 0.6 < len(kept) / 200 < 0.8  # about 70% keep their retrieved text
  assert with_retrieved(0.3) == kept  # the same records every epoch (and on every host)
  assert kept < with_retrieved(0.1)   # a smaller fraction drops a subset of the same records
  # A dropped record needs no retrieved text; a kept one still does (BadRecord names it).
  dropped = next(i for i in range(200) if i not in kept)
  spec = llava_data.ExampleSpec(template=config.data.template, stage=2, max_length=config.data.max_length,
                                caption_max_length=config.data.caption_max_length, use_retrieved=True,
                                retrieved_dropout=0.3, caption_template=config.data.caption_template)
  parse = llava_data.make_parse(tokenizer, module.config, spec)
  assert not parse(record(dropped, retrieved=""))["retrieved_mask"].any()
  with pytest.raises(llava_data.BadRecord, match="missing retrieved_caption"):
    parse(record(min(kept), retrieved=""))


def test_questions_matching_no_retrieved_pattern_train_without_retrieved_text():
  from tga_jax.data import llava as llava_data
  from tga_jax.data.tokenizer import load_tokenizer

  config = tiny.get_config("stage=2")
  module = tga_train.model_architecture(config.model)
  tokenizer = load_tokenizer(config.model.tokenizer)

  def record(question):
    return {"id": "r0", "problem": "", "images": [np.zeros((32, 32, 3), np.uint8)], "image_caption": "a red cube",
            "retrieved_caption": "a cube", "conversations": json.dumps(
                [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": "A cube."}])}

  def parse(pattern):
    spec = llava_data.ExampleSpec(template=config.data.template, stage=2, max_length=config.data.max_length,
                                  caption_max_length=config.data.caption_max_length, use_retrieved=True,
                                  no_retrieved_pattern=pattern, caption_template=config.data.caption_template)
    return llava_data.make_parse(tokenizer, module.config, spec)

  naming = parse(r"^<image>\nWhat object is shown here\?$")
  assert not naming(record("What object is shown here?"))["retrieved_mask"].any()
  assert naming(record("How do I clean it?"))["retrieved_mask"].any()
  assert parse("")(record("What object is shown here?"))["retrieved_mask"].any()
  with pytest.raises(ValueError, match=r"no_retrieved_pattern='\(' is not a regular expression"):
    parse("(")


def test_logits_at_the_target_positions_give_the_full_loss_and_its_gradients():
  """data.target_buckets: the LM head runs on the target positions only (llava_data.target_positions ->
  logits_at); the loss and every gradient equal those of the logits at every position."""
  import flax.linen as nn
  from tga_jax.data.llava import target_positions
  from tga_jax.models.llama import LlamaConfig, LlamaForCausalLM
  config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, remat_policy="none")
  model = LlamaForCausalLM(config)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 97, (3, 24)).astype(np.int32)
  loss_mask = np.zeros((3, 24), bool)
  loss_mask[0, 5:9], loss_mask[1, 20:24], loss_mask[2, [3, 11, 12]] = True, True, True  # 4, 4, 3 targets
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), ids)["params"])
  batch = target_positions((2, 6, 12))({"input_ids": ids, "loss_mask": loss_mask})
  assert batch["target_index"].shape == (3, 6)  # the smallest bucket holding 4 targets
  assert batch["target_index"][2, :3].tolist() == [2, 10, 11] and batch["target_valid"].sum() == 11

  def full(p):
    return tga_train.lm_loss(model.apply({"params": p}, ids)[0], ids, loss_mask)

  def at_targets(p):
    logits = model.apply({"params": p}, ids, logits_at=batch["target_index"])[0]
    assert logits.shape == (3, 6, 97)
    return tga_train.lm_loss(logits, ids, loss_mask, batch["target_index"], batch["target_valid"])

  (want, want_grads), (got, got_grads) = jax.value_and_grad(full)(params), jax.value_and_grad(at_targets)(params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  # More targets than the largest bucket: every position, the same loss.
  many = target_positions((2,))({"input_ids": ids, "loss_mask": loss_mask})
  assert many["target_index"].shape == (3, 23)


def test_caption_pass_runs_the_layers_up_to_the_deepest_guided_one():
  """The caption pass (a fixed target) stops after the deepest guided layer: the loss and its gradients
  equal those of the whole LLM's caption pass, and the traced program scans 3 of the tiny LLM's 4 layers."""
  import ml_collections
  from tests.tiny_lvlm import random_params
  from tga_jax.guidance import guidance_loss
  from tga_jax.safety.eval_inputs import build_from_config
  module = build_from_config("configs/tga/tiny.py")[0]
  cfg = module.config
  params = random_params(module, seed=4)
  rng = np.random.default_rng(1)
  n = cfg.tokens_per_image
  ids = rng.integers(5, 400, (2, n + 12)).astype(np.int32)
  ids[:, 2:2 + n] = cfg.image_token_id
  retrieved = np.zeros(ids.shape, bool)
  retrieved[0, n + 3:n + 6] = True
  loss_mask = np.zeros(ids.shape, bool)
  loss_mask[:, -4:] = True
  caption_mask = np.ones((2, 7), bool)
  caption_mask[1, 5:] = False
  batch = {"input_ids": ids, "attention_mask": np.ones(ids.shape, np.int32), "loss_mask": loss_mask,
           "pixel_values": rng.standard_normal((2, 1, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(
               np.float32), "retrieved_mask": retrieved, "caption_ids": rng.integers(5, 400, (2, 7)).astype(np.int32),
           "caption_attention_mask": caption_mask.astype(np.int32), "caption_mask": caption_mask}
  tga = ml_collections.ConfigDict(dict(layers=(1, 2), weight=0.5, form="paper", schedule="constant", lm_weight=1.0))
  loss_fn = tga_train.make_loss_fn(module, tga, total_steps=10)

  def whole(p):
    logits, aux = module.apply({"params": p}, ids, batch["pixel_values"], batch["attention_mask"],
                               output_hidden_states=True)
    _, caption = module.apply({"params": jax.lax.stop_gradient(p)}, batch["caption_ids"], None,
                              batch["caption_attention_mask"], output_hidden_states=True)
    guide, _ = guidance_loss(aux["hidden_states"], aux["image_mask"], retrieved, caption["hidden_states"],
                             caption_mask, (1, 2), form="paper", step=0, total_steps=10)
    return tga_train.lm_loss(logits, ids, loss_mask) + 0.5 * guide

  (got, got_grads) = jax.value_and_grad(lambda p: loss_fn(p, batch, None, 0)[0])(params)
  (want, want_grads) = jax.value_and_grad(whole)(params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8)
  program = str(jax.make_jaxpr(lambda p: loss_fn(p, batch, None, 0)[0])(params))
  assert "length=3" in program and "length=4" in program
