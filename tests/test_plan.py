"""The ahead-of-time planner (trainkit/plan.py): the tiny TGA config's real train step compiled for 8
simulated CPU devices and for a TPU v5e 2x2 slice (libtpu, no TPU needed); the FLOP counter on scans and
rematerialisation; the abstract batch equals what the data pipeline yields; the 7B configs' shapes."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.tga import llava15_vicuna7b, mistral7b, tiny
from trainkit import plan as planner

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_matmul_flops_counts_every_scanned_layer_and_each_recomputation():
  layers, d, batch = 3, 16, 4

  def loss(ws, x, policy):
    body = lambda h, w: (jnp.tanh(h @ w), None)  # noqa: E731
    if policy:
      body = jax.checkpoint(body, policy=policy)
    h, _ = jax.lax.scan(body, x, ws)
    return h.sum()

  ws, x = jnp.zeros((layers, d, d)), jnp.zeros((batch, d))
  one = 2 * batch * d * d  # one layer's forward matmul
  assert planner.matmul_flops(jax.make_jaxpr(lambda w: loss(w, x, None))(ws)) == layers * one
  # Backward: dh and dw matmuls per layer; with nothing saved the forward matmul runs again.
  grad = jax.make_jaxpr(jax.grad(lambda w: loss(w, x, None)))(ws)
  assert planner.matmul_flops(grad) == 3 * layers * one
  remat = jax.make_jaxpr(jax.grad(lambda w: loss(w, x, jax.checkpoint_policies.nothing_saveable)))(ws)
  assert planner.matmul_flops(remat) == 4 * layers * one


def test_parse_target_names_kinds_and_rejects_the_rest():
  assert planner.parse_target("v5e:16x16") == ("v5e", "16x16")
  assert planner.parse_target("H200:1x1x8") == ("h200", "1x1x8")
  for bad in ("v5e", "v9:2x2", "cpu:eight"):
    with pytest.raises(ValueError, match="expected <kind>:<topology>"):
      planner.parse_target(bad)
  assert 'device_memory_size: 150754820096' in planner.gpu_target_config(planner.TARGETS["h200"])


def test_example_shapes_are_what_the_data_pipeline_yields():
  from tga_jax import train as tga_train
  from tga_jax.data import llava as llava_data
  from tga_jax.data.tokenizer import load_tokenizer

  config = tiny.get_config("stage=2")
  module = tga_train.model_architecture(config.model)
  spec = llava_data.ExampleSpec(template=config.data.template, stage=2, max_length=config.data.max_length,
                                caption_max_length=config.data.caption_max_length, max_images=1, use_retrieved=True,
                                caption_template=config.data.caption_template)
  parse = llava_data.make_parse(load_tokenizer(config.model.tokenizer), module.config, spec)
  record = {"id": "r0", "problem": "", "images": [np.zeros((32, 32, 3), np.uint8)], "image_caption": "a red cube",
            "retrieved_caption": "a cube", "conversations": json.dumps(
                [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cube."}])}
  example = parse(record)
  shapes = tga_train.example_shapes(config, module.config)
  assert {k: (v.shape, v.dtype) for k, v in shapes.items()} == \
      {k: (np.shape(v), np.asarray(v).dtype) for k, v in example.items()}


def test_7b_configs_build_the_papers_models_without_weights():
  from tga_jax import train as tga_train

  def count(config):
    module = tga_train.model_architecture(config.model)
    shapes = tga_train.example_shapes(config, module.config)
    x = {k: jnp.zeros((1,) + s.shape, s.dtype) for k, s in shapes.items()}
    params = jax.eval_shape(lambda r: module.init(r, x["input_ids"], x["pixel_values"], x["attention_mask"]),
                            jax.random.PRNGKey(0))["params"]
    sizes = {k: sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree)) for k, tree in params.items()}
    return module.config, sizes

  cfg, sizes = count(llava15_vicuna7b.get_config("stage=2"))
  assert cfg.tokens_per_image == 576 and cfg.llm.dtype == "bfloat16" and cfg.llm.remat_policy == "nothing_saveable"
  assert sizes["llm"] == 6_738_415_616  # LLaMA-2-7B / Vicuna-7B
  assert sizes["projector"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
  assert 300e6 < sizes["vision"] < 310e6  # CLIP ViT-L/14-336's vision tower
  cfg, sizes = count(mistral7b.get_config("stage=2"))
  assert sizes["llm"] == 7_241_732_096 and cfg.llm.num_kv_heads == 8


def test_batch_search_predicts_from_two_probes_then_checks_the_neighbours():
  def search(largest, peak, limit=64, max_probes=6):
    asked = []

    def run(batch):
      asked.append(batch // 8)
      return planner.Probe(batch, fits=batch // 8 <= largest, compiled=True, peak=peak(batch // 8))

    best, predicted = planner._search(run, unit=8, limit=limit, budget=100.0, max_probes=max_probes)
    return (best.global_batch // 8 if best else None), predicted, asked

  # Peak 10 + 9k against a budget of 100: the line predicts k = 10, its neighbour 11 fails: 4 compiles.
  assert search(10, lambda k: 10 + 9 * k) == (10, 10, [1, 2, 10, 11])
  # A prediction off the mark: its neighbour fits too, so bisection between 11 and the limit finds 20.
  best, _, asked = search(20, lambda k: 10 + 9 * k, limit=32, max_probes=10)
  assert best == 20 and asked[:4] == [1, 2, 10, 11] and 21 in asked
  assert search(0, lambda k: 10 + 9 * k)[0] is None  # not even one example per batch shard
  assert search(10 ** 6, lambda k: 1.0, limit=4)[0] == 4  # flat peak: stops at the limit


def test_tiny_tga_step_planned_for_8_cpu_devices():
  target = planner.make_target("cpu:8")
  result = planner.plan(tiny.get_config("stage=2,weight=1.0"), target, search=True, max_batch_per_device=1,
                        log=lambda _: None)
  assert result["devices"] == 8 and result["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert result["fits"] and result["compiled"] and result["global_batch"] == 8 and result["tga_weight"] == 1.0
  memory = result["bytes_per_device"]
  # Params and Adam's two moments, replicated on each device (the tiny config's mesh is all data-parallel).
  assert memory["params"] == 4 * result["params"]
  assert memory["opt_state"] >= 2 * 4 * result["trainable_params"]
  assert memory["temp"] > 0 and memory["peak"] >= memory["params"] + memory["opt_state"]
  assert result["flops_per_step"] > 0 and result["compile_s"] > 0
  # The search's limit (1 per device) is the config's own batch: one compile served both.
  assert result["max_batch_per_device"] == 1 and [p["global_batch"] for p in result["probes"]] == [8]
  assert "largest batch that fits" in planner.format_table(result)


def test_a_compiler_error_in_the_search_keeps_the_plan_and_one_at_the_planned_batch_is_raised(monkeypatch):
  """A search probe the compiler cannot build (not an out-of-memory) bounds the search instead of discarding
  the compiles before it; the same error at the planned batch itself stops the plan."""
  real_compile, calls = jax.stages.Lowered.compile, []

  def compile_once_then_fail(self, *args, **kwargs):
    calls.append(1)
    if len(calls) > 1:
      raise jax.errors.JaxRuntimeError("INTERNAL: Couldn't find output tile sizes that satisfy hlo: %dot")
    return real_compile(self, *args, **kwargs)

  monkeypatch.setattr(jax.stages.Lowered, "compile", compile_once_then_fail)
  config = tiny.get_config("stage=2,weight=0.0")
  result = planner.plan(config, planner.make_target("cpu:8"), search=True, max_batch_per_device=2,
                        log=lambda _: None)
  assert result["fits"] and result["max_global_batch"] == 8
  assert [(p["global_batch"], p.get("error", "")[:8]) for p in result["probes"]] == [(8, ""), (16, "INTERNAL")]
  assert "compiler error" in planner.format_table(result) and "at batch 16" in planner.format_table(result)
  with pytest.raises(jax.errors.JaxRuntimeError, match="tile sizes"):
    planner.plan(config, planner.make_target("cpu:8"), search=False, log=lambda _: None)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]'): no TPU topologies")
def test_tiny_tga_step_planned_for_a_tpu_slice_from_the_command_line(tmp_path):
  out = tmp_path / "plan.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "trainkit.plan", "--config=configs/tga/tiny.py:stage=2", "--target=v5e:2x2",
             "--nosearch", f"--json_out={out}", "--config.model.llm.remat_policy=nothing_saveable"]
  # ~30 s on 2 idle cores; the limit only guards against a hang.
  run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result == json.loads(out.read_text().strip())
  assert result["chip"] == "TPU v5e" and result["devices"] == 4 and result["fits"]
  assert result["usable_gib"] == 15.75 and result["budget_gib"] == round(0.9 * 15.75, 2)
  assert result["xla_flops_per_device"] > 0 and result["remat_policy"] == "nothing_saveable"
  assert "peak / device" in run.stdout


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -e '.[tpu]'): no TPU topologies")
def test_a_batch_over_the_chips_memory_is_refused_by_the_tpu_compiler():
  target = planner.make_target("v5e:2x2")
  result = planner.plan(tiny.get_config("stage=2,weight=0.0"), target, batch=4 * 8192, search=False,
                        log=lambda _: None)
  assert not result["fits"] and not result["compiled"] and "RESOURCE_EXHAUSTED" in result["error"]
  assert result["bytes_per_device"]["peak"] > 15.75 * planner.GIB  # what the compiler said it needed


def test_comploss_trainer_is_planned_through_its_package_planner():
  from configs.comploss import tiny as comploss_tiny

  config = comploss_tiny.get_config("c=1")
  step_of = planner.find_planner(config)
  mesh = planner.target_mesh(config.mesh, planner.make_target("cpu:8"))
  planned = step_of(config, mesh, 16)
  assert planned.info["submodels"] == 2 and planned.batch["input_ids"].shape == (16, 32)
  assert planned.info["params"] == planned.info["trainable_params"] > 22_000_000  # MiniLM-L6 and its head
  traced = planned.step.trace(planned.state, planned.batch)
  # 2 FLOPs x 3 (forward, two backward matmuls) x 2 submodels x 512 tokens x the 10.6M weights of MiniLM's six
  # layers, plus attention's own matmuls.
  expected = 2 * 3 * 2 * 16 * 32 * 6 * (4 * 384 * 384 + 2 * 384 * 1536)
  assert expected < planner.matmul_flops(traced.jaxpr) < 1.3 * expected


@pytest.mark.parametrize("arg,task", [("configs/comploss/squad.py", "squad"),
                                      ("configs/comploss/hotpot.py:c_drop=1,c_crop=1", "hotpot")])
def test_extractive_qa_trainer_is_planned_with_its_span_losses(arg, task):
  from trainkit.config_files import load_config

  config = load_config(arg)
  mesh = planner.target_mesh(config.mesh, planner.make_target("cpu:8"))
  planned = planner.find_planner(config)(config, mesh, 8)
  length = config.data.max_length
  views = 1 + config.cmp.n_crop
  if task == "hotpot":  # views as HotpotTrainViews.iterator yields them: [B, V, L] inputs, [B, V] spans
    assert planned.batch["views"]["input_ids"].shape == (8, views, length)
    assert planned.batch["views"]["start"].shape == (8, views)
  else:
    assert planned.batch["input_ids"].shape == (8, length) and planned.batch["end"].shape == (8,)
  assert planned.info["submodels"] == 1 + config.cmp.n_drop + config.cmp.n_crop
  assert f"span extraction ({task})" in planned.info["model"]
  traced = planned.step.trace(planned.state, planned.batch)
  # Each submodel reads its own view of L tokens: 2 x 3 (forward, two backward matmuls) FLOPs per weight and
  # token over MiniLM's six layers, plus attention's own matmuls and the span head.
  per_pass = 2 * 3 * 8 * length * 6 * (4 * 384 * 384 + 2 * 384 * 1536)
  assert per_pass * planned.info["submodels"] < planner.matmul_flops(traced.jaxpr) < 1.4 * per_pass * planned.info["submodels"]
