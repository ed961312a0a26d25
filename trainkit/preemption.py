"""How the step loop learns of a preemption notice (SIGTERM) without a collective on every step.

    with PreemptionWatch(start_step) as watch:
      ...
      if watch.check(step, boundary=...):   # every process returns True at the same step
        save, exit 143

The way is picked once, when the watch starts (`mode`):
  'local'      one process: a SIGTERM handler sets a flag, read each step. No communication.
  'sync'       several processes and JAX's preemption sync manager (started by `jax.distributed.initialize`
               unless `jax_enable_preemption_service` is off; it runs on CPU, GPU and TPU alike). Its own
               SIGTERM handler, installed at initialize, tells the coordination service; every process
               then agrees on the step after the furthest one's current step, and
               `multihost_utils.reached_preemption_sync_point(step)` -- a local lookup -- says True there.
               No Python SIGTERM handler is installed: one would replace the sync manager's. Orbax's
               CheckpointManager is kept from asking the sync point itself (see `PreemptionWatch`).
  'collective' several processes without the sync manager (turned off, jax.distributed not initialized,
               or a Python SIGTERM handler already installed, which hides SIGTERM from it): the SIGTERM
               flag is OR-ed over processes with a host collective, only on the boundary steps the caller
               marks (the same steps on every process, or the collectives would not pair up).
`stats` counts the host collectives this process ran for it, so tests can show ordinary steps run none.
"""
from __future__ import annotations

import signal

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

MODES = ("local", "sync", "collective")

# This process's record, read by tests and benchmarks: the last watch's mode and the host-level
# collectives that watches ran (each is a cross-process allgather plus a blocking fetch).
stats = {"mode": None, "host_collectives": 0}


class PreemptionWatch:
  """Context manager: installs what `mode` needs on entry, restores the SIGTERM handler on exit.

  start_step: the step training resumes from. The sync manager compares the last step each process
  reported, so it is told the start before the first step (otherwise a notice arriving while the first
  step compiles would be set to step 1 of a run resumed at step 1000, and never be reached).
  checkpoint_manager: the run's orbax CheckpointManager, if any. Orbax asks the sync point itself
  (`reached_preemption`), also from its save-finalize thread with the step being finalized: that moves
  this process's last reported step backwards, so the agreed stop step can be one this process has already
  passed while the others stop there -- they wait for it in the checkpoint's collectives forever (seen
  in the 2-process test). trainkit decides saves itself (`force=True`), so in 'sync' mode the manager's
  question is answered False here without asking JAX, and the loop alone reports steps.
  """

  def __init__(self, start_step: int = 0, checkpoint_manager=None):
    self.start_step = int(start_step)
    self.raised = False
    self.mode = None
    self._installed = False
    self._previous = None
    self._manager = checkpoint_manager

  def __enter__(self):
    self.mode = self._pick_mode()
    stats["mode"] = self.mode
    if self.mode != "sync":
      self._install_handler()
    elif self._manager is not None:
      self._manager.reached_preemption = _not_asked  # an instance attribute: shadows the method
    logging.info("preemption notices: %s mode", self.mode)
    return self

  def _pick_mode(self) -> str:
    if jax.process_count() == 1:
      return "local"
    if not jax.distributed.is_initialized():  # processes joined some other way: no coordination service
      return "collective"
    if callable(signal.getsignal(signal.SIGTERM)):
      logging.warning("a Python SIGTERM handler is installed: it hides SIGTERM from JAX's preemption sync "
                      "manager, so processes agree on preemption with a collective at checkpoint/log steps")
      return "collective"
    try:  # asks with the start step: the probe also reports where this process starts
      multihost_utils.reached_preemption_sync_point(self.start_step)
    except RuntimeError:  # jax_enable_preemption_service is off
      return "collective"
    return "sync"

  def _install_handler(self) -> None:
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    except ValueError:  # not the main thread (e.g. a notebook worker): no preemption handling
      logging.warning("not on the main thread: SIGTERM cannot be caught, preemption will not be handled")

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint after the current step, then exiting")
    self.raised = True

  def check(self, step: int, boundary: bool) -> bool:
    """Whether to save and stop after `step` (just dispatched). Call it once for every step, on every
    process, with the same `boundary`: True on the steps where the 'collective' mode may communicate."""
    if self.mode == "local":
      return self.raised
    if self.mode == "sync":
      return multihost_utils.reached_preemption_sync_point(step)
    return boundary and any_process(self.raised)

  def __exit__(self, *exc):
    if self._manager is not None and self._manager.__dict__.get("reached_preemption") is _not_asked:
      del self._manager.reached_preemption
    if self._installed:
      # signal.signal hands back None for a handler not set from Python; SIG_DFL is what Python started with.
      signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
      self._installed = False


def _not_asked(step: int) -> bool:
  del step
  return False


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any: a host-level collective (counted in `stats`)."""
  stats["host_collectives"] += 1
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
