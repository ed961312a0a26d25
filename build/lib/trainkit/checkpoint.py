"""Orbax checkpoints of the train state plus each host's data-iterator state.

Layout: `<workdir>/checkpoints/<step>/state` (sharded arrays, restored straight into their shardings)
and `<step>/data/process_<i>-of-<n>.json` (grain iterator position of host i).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import orbax.checkpoint as ocp
from etils import epath

from trainkit.state import abstract_with_shardings


class _DropOrbaxInfo(logging.Filter):
  """Orbax logs several INFO lines per save; keep its warnings, drop the chatter."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def quiet_orbax_logs() -> None:
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
      handler.addFilter(_DropOrbaxInfo())


class IteratorStateHandler(ocp.CheckpointHandler):
  """Writes one JSON file per process with that host's iterator state.

  The state is captured when `save` is called, not when an async write runs, so batches drawn
  after the save cannot leak into it.
  """

  def save(self, directory: epath.Path, args: "IteratorStateSave"):
    directory.mkdir(parents=True, exist_ok=True)
    self._file(directory).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: "IteratorStateRestore | None" = None):
    path = self._file(directory)
    if not path.exists():
      raise FileNotFoundError(f"{path}: no data-iterator state for this process; was the checkpoint "
                              f"written with a different number of processes?")
    return json.loads(path.read_text())

  @staticmethod
  def _file(directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
  state: dict


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
  pass


class Checkpointer:
  """Saves when told (`should_save`: every `every` steps), keeps the last `keep`, writes asynchronously."""

  def __init__(self, directory, *, every: int, keep: int = 3, use_async: bool = True):
    quiet_orbax_logs()
    self.every = int(every)
    self.directory = epath.Path(os.path.abspath(directory))  # Orbax requires absolute paths
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=use_async,
            create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Every `every` steps. (Orbax's own rule also saves the first step of a run.)"""
    return step % self.every == 0

  def save(self, step: int, state, data_state: dict | None) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
      items["data"] = IteratorStateSave(data_state)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, state_like, state_shardings, *, with_data: bool = True):
    """Returns (state placed with `state_shardings`, data_state or None)."""
    items = {"state": ocp.args.StandardRestore(abstract_with_shardings(state_like, state_shardings))}
    if with_data:
      items["data"] = IteratorStateRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], (restored["data"] if with_data else None)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
