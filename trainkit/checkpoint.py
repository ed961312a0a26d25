"""Orbax checkpoints of the train state plus each host's data-iterator state.

Layout: `<workdir>/checkpoints/<step>/state` (sharded arrays, restored straight into their shardings)
and `<step>/data/process_<i>-of-<n>.json` (grain iterator position of host i).

A damaged step (a truncated array file, garbage iterator JSON, ...) is reported by number and file;
`restore_latest` then falls back to the newest step that restores, moving the damaged ones aside to
`<checkpoints>.damaged/<step>` (kept for inspection, and out of the way of the saves that reach those
steps again). With no step that restores it stops and says which folder to remove to start over.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath
from jax.experimental import multihost_utils

from trainkit.state import abstract_with_shardings


class _DropOrbaxInfo(logging.Filter):
  """Orbax logs several INFO lines per save; keep its warnings, drop the chatter (and its warning that a
  type handler is replaced: whole_arrays_from_one_replica_on_cpu replaces the jax.Array one on purpose)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if "orbax" not in record.pathname:
      return True
    message = record.getMessage()
    if message.startswith("Type handler registry") and "overriding" in message:
      return False
    return record.levelno >= logging.WARNING


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
    try:
      state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: the data-iterator state is not valid JSON ({e})") from e
    if not isinstance(state, dict):
      raise ValueError(f"{path}: the data-iterator state must be a JSON object, found {type(state).__name__}")
    return state

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


class CheckpointError(RuntimeError):
  """A checkpoint step cannot be restored (names the step, the file and what to do)."""

  def __init__(self, message: str, step: int | None = None, detail: str | None = None):
    super().__init__(message)
    self.step = step
    self.detail = detail or message  # the message without the advice (restore_latest gives its own)


def _cause(error: BaseException, directory: str) -> str:
  """The most specific message in an exception chain that names a file under `directory` (Orbax wraps
  TensorStore's error, which names the array and file), else the innermost one; its first line."""
  messages = []
  while error is not None and len(messages) < 8:
    text = str(error).strip()
    if text:
      messages.append(f"{type(error).__name__}: {text.splitlines()[0]}")
    error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
  naming = [m for m in messages if directory in m]
  chosen = (naming or messages or ["unknown error"])[-1][:600]
  return chosen + _short_files(chosen)


def _short_files(message: str) -> str:
  """For TensorStore's 'not valid for value of size N ... at local file "DIR"': the files under DIR of exactly
  N bytes, i.e. the file cut short (TensorStore names the array and database, not the data file)."""
  size = re.search(r"value of size (\d+)", message)
  folder = re.search(r'local file "([^"]+)"', message)
  if not size or not folder or not os.path.isdir(folder.group(1)):
    return ""
  hits = [os.path.join(root, name) for root, _, names in os.walk(folder.group(1)) for name in names
          if os.path.getsize(os.path.join(root, name)) == int(size.group(1))]
  return f" (truncated file: {', '.join(sorted(hits)[:3])})" if hits else ""


def _all_processes(ok: bool) -> bool:
  """True when `ok` holds on every process (so all processes fall back to the same step)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def whole_arrays_from_one_replica_on_cpu() -> None:
  """On CPU devices, Orbax's array saving without 'replica parallelism' (as Orbax itself chooses on GPU).

  By default Orbax splits each replicated array into one slice per replica, each written by its own device:
  a slice op compiled per array shape and device (8 simulated CPU devices: 8 compiles per parameter shape,
  seconds per run) to spread writes over devices that share one host's memory anyway. With it off, replica
  0 writes each array whole; the files, and restoring, are the same. Idempotent; Orbax's global registry
  of type handlers is where CheckpointManager and StandardCheckpointer find the handler."""
  if jax.default_backend() != "cpu":
    return
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(handler, "_use_replica_parallel", False):
    handler = copy.copy(handler)
    handler._use_replica_parallel = False
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpointer:
  """Saves when told (`should_save`: every `every` steps), keeps the last `keep`, writes asynchronously."""

  def __init__(self, directory, *, every: int, keep: int = 3, use_async: bool = True):
    quiet_orbax_logs()
    whole_arrays_from_one_replica_on_cpu()
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
    """Returns (state placed with `state_shardings`, data_state or None).

    Raises CheckpointError naming the step, the failing file and the cause when the step cannot be restored.
    """
    items = {"state": ocp.args.StandardRestore(abstract_with_shardings(state_like, state_shardings))}
    if with_data:
      items["data"] = IteratorStateRestore()
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 -- Orbax/TensorStore raise many types; re-raised naming the step
      older = [s for s in self.manager.all_steps() if s < step]
      hint = (f"the newest older step is {max(older)}: resume from it by moving {self.directory / str(step)} "
              f"aside" if older else f"no older step exists: to start over, remove {self.directory}")
      detail = (f"checkpoint step {step} ({self.directory / str(step)}) cannot be restored: "
                f"{_cause(e, str(self.directory))}")
      raise CheckpointError(f"{detail}; {hint}", step, detail) from e
    return restored["state"], (restored["data"] if with_data else None)

  def restore_latest(self, state_like, state_shardings, *, with_data: bool = True):
    """(step, state, data_state) from the newest step that restores; (None, state_like, None) with no checkpoint.

    A step that fails is logged with its number, file and cause, and the next older one is tried; once one
    restores, the damaged newer steps are moved to `<checkpoints>.damaged/<step>` and the fallback is logged.
    Raises CheckpointError (every step listed, and which folder to remove to start over) when none restores.
    """
    failures: list[CheckpointError] = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, data_state = self.restore(step, state_like, state_shardings, with_data=with_data)
        error = None
      except CheckpointError as e:
        error = e
      if not _all_processes(error is None):
        error = error or CheckpointError(f"checkpoint step {step}: another process could not restore it", step)
        absl_logging.error("%s; trying the previous step", error.detail)
        failures.append(error)
        continue
      if failures:
        damaged = [f.step for f in failures]
        moved = self._set_aside(damaged)
        absl_logging.warning("resuming from checkpoint step %d, the newest that restores; damaged step(s) %s "
                             "moved to %s", step, damaged, moved)
      return step, state, data_state
    if failures:
      lines = "\n  ".join(f.detail for f in failures)
      raise CheckpointError(f"no checkpoint in {self.directory} restores:\n  {lines}\nTo start over, remove "
                            f"{self.directory} (or move it aside) and rerun; the run then starts from step 0.")
    return None, state_like, None

  def _set_aside(self, steps: list[int]) -> str:
    """Moves damaged step folders to `<checkpoints>.damaged/` (process 0; the others wait) -> that folder."""
    aside = self.directory.parent / f"{self.directory.name}.damaged"
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target, n = aside / str(step), 1
        while target.exists():
          target, n = aside / f"{step}-{n}", n + 1
        (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("trainkit_checkpoint_set_aside")
    self.manager.reload()
    return str(aside)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
