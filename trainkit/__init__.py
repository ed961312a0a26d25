"""trainkit: the one sharded-training runtime that tga_jax and comploss_jax share.

A trainer reads top to bottom (multi-host: `trainkit.distributed.initialize_from_env()` runs first;
the shared command line, trainkit/cli.py, does it):

    mesh = trainkit.make_mesh(config.mesh)
    tx, schedule, trainable = trainkit.make_optimizer(config.optimizer, config.total_steps, abstract_params)
    state, shardings = trainkit.create_train_state(init_params, tx, mesh, config.rules, config.seed)
    step = trainkit.make_train_step(loss_fn, tx, shardings, trainkit.batch_sharding(mesh, config.rules),
                                    mesh=mesh, rules=config.rules, schedule=schedule, trainable=trainable,
                                    grad_accum_steps=config.optimizer.grad_accum_steps)
    data = trainkit.make_train_iterator(source, global_batch_size=..., seed=..., parse=...)
    state = trainkit.train_loop(config, workdir, state, shardings, step, data, batch_sharding)

Ahead of time: a trainer that defines `plan_step(config, mesh, global_batch) -> trainkit.PlannedStep` (its
own step on abstract arguments) can be compiled for a TPU slice or GPU node that this machine does not
have: `python -m trainkit.plan --config=<file> --target=v5e:16x16` (trainkit/plan.py).

LoRA (`config.lora`, trainkit/lora.py): `init = trainkit.with_lora(init, config.lora)`, state params
{'base', 'lora'} with `optimizer.trainable = trainkit.LORA_TRAINABLE`, `trainkit.lora_loss_fn(loss_fn,
config.lora)`, and `trainkit.merged_lora_params(state.params, config.lora)` (plain params) for export.

No model code and no science lives here.
"""
from trainkit.checkpoint import Checkpointer
from trainkit.config_files import apply_overrides, load_config, load_config_module
from trainkit.data import BadRecord, SkipCounter, make_train_iterator, to_global
from trainkit import lora
from trainkit.lora import TRAINABLE as LORA_TRAINABLE
from trainkit.lora import attach_lora, init_lora, lora_loss_fn, with_lora
from trainkit.lora import enabled as lora_enabled
from trainkit.lora import merge as merge_lora
from trainkit.lora import merged_params as merged_lora_params
from trainkit.loop import NonFiniteError, Preempted, train_loop, update_summary, write_json
from trainkit.matmul import contract_last
from trainkit.mesh import MESH_AXES, make_mesh
from trainkit.metrics import MetricsWriter, read_jsonl
from trainkit.optim import make_optimizer, make_schedule, trainable_mask
from trainkit.sharding import DEFAULT_RULES, batch_sharding, logical_to_shardings, path_str
from trainkit.state import TrainState, abstract_train_state, create_train_state
from trainkit.step import PlannedStep, make_train_step

__all__ = [
    "BadRecord", "Checkpointer", "apply_overrides", "contract_last", "load_config", "load_config_module", "DEFAULT_RULES", "MESH_AXES", "MetricsWriter", "NonFiniteError",
    "PlannedStep", "Preempted", "SkipCounter", "TrainState", "abstract_train_state", "batch_sharding",
    "create_train_state",
    "logical_to_shardings", "make_mesh", "make_optimizer", "make_schedule", "make_train_iterator",
    "make_train_step", "path_str", "read_jsonl", "to_global", "train_loop", "trainable_mask",
    "update_summary", "write_json",
    "LORA_TRAINABLE", "attach_lora", "init_lora", "lora", "lora_enabled", "lora_loss_fn", "merge_lora",
    "merged_lora_params", "with_lora",
]
