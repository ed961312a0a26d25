"""One run per workdir: a lock file, created exclusively, held for the run's life.

    lock = hold_workdir(workdir)        # raises WorkdirLocked naming the run that holds it
    try:
      ...                                # train
    finally:
      lock.release()

    @holds_workdir_lock                  # the same around a function with a `workdir` argument
    def train_loop(config, workdir, ...): ...

`<workdir>/run.lock` holds the holder's pid, host, start time and command line. It is created with
O_CREAT | O_EXCL, so of two runs starting at once exactly one gets it. A lock left by a process that died
on this host (its pid is gone, or now belongs to a process started later) is stale: it is taken over, with
a log line naming the dead holder. A lock from another host cannot be checked from here: the error says so
and which file to remove once that run is known to be gone.

Multi-host jobs: process 0 alone takes the lock and tells the others whether it got it, so the job holds
one lock and every process stops when another run holds the workdir.
"""
from __future__ import annotations

import atexit
import datetime
import functools
import inspect
import json
import os
import socket
import sys
import time
import uuid

from absl import logging

LOCK_NAME = "run.lock"
# A lock file that stays unreadable (empty, cut short) this long after it was last written is stale: its
# writer died between creating and filling it.
UNREADABLE_GRACE_S = 10.0

_held: dict[str, "WorkdirLock"] = {}  # real lock path -> the lock this process holds there


class WorkdirLocked(RuntimeError):
  """Another run holds the workdir."""


def _process_start(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  except OSError:
    return True
  return True


def describe(holder: dict) -> str:
  command = " ".join(holder.get("argv", []))[:200]
  return (f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started')}"
          + (f" ({command})" if command else ""))


class WorkdirLock:
  """The lock file of one workdir; `acquire()` takes it or raises WorkdirLocked, `release()` removes it."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.info: dict | None = None

  @property
  def held(self) -> bool:
    return self.info is not None

  def acquire(self) -> "WorkdirLock":
    os.makedirs(self.workdir, exist_ok=True)
    key = os.path.realpath(self.path)
    if key in _held:
      raise WorkdirLocked(f"{self.workdir}: this process already runs in this workdir ({self.path}); one run "
                          f"per workdir")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": list(sys.argv), "token": uuid.uuid4().hex}
    for _ in range(5):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read(self.path)
        stale = self._stale_reason(holder)
        if stale is None:
          raise WorkdirLocked(self._held_message(holder)) from None
        self._take_over(holder, stale)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
      self.info = info
      _held[key] = self
      atexit.register(self.release)
      return self
    raise WorkdirLocked(f"{self.path}: could not take the workdir lock (other runs keep taking it)")

  def release(self) -> None:
    """Removes the lock file if it is still this lock's (idempotent)."""
    if self.info is None:
      return
    key = os.path.realpath(self.path)
    current = self._read(self.path)
    if isinstance(current, dict) and current.get("token") == self.info["token"]:
      try:
        os.unlink(self.path)
      except FileNotFoundError:
        pass
    _held.pop(key, None)
    self.info = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

  @staticmethod
  def _read(path: str):
    """The lock's JSON dict; 'missing' if gone; None if unreadable (after a short wait for its writer)."""
    for attempt in range(5):
      try:
        with open(path) as f:
          holder = json.load(f)
        if isinstance(holder, dict):
          return holder
      except FileNotFoundError:
        return "missing"
      except (OSError, ValueError):
        pass
      time.sleep(0.05 * (attempt + 1))
    return None

  def _stale_reason(self, holder) -> str | None:
    """Why the existing lock is stale, or None when it may belong to a live run."""
    if holder == "missing":
      return "it was removed meanwhile"
    if holder is None:
      try:
        age = time.time() - os.path.getmtime(self.path)
      except FileNotFoundError:
        return "it was removed meanwhile"
      return f"it is unreadable and {age:.0f} s old" if age > UNREADABLE_GRACE_S else None
    if not isinstance(holder.get("host"), str) or not holder["host"]:
      return f"it names no host ({holder.get('host')!r})"
    if holder["host"] != socket.gethostname():
      return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
      return f"it names no valid pid ({pid!r})"
    if pid == os.getpid() and os.path.realpath(self.path) not in _held:
      return "this process took it earlier and did not release it"
    if not _alive(pid):
      return f"process {pid} is no longer running"
    start = _process_start(pid)
    if holder.get("process_start") and start and start != holder["process_start"]:
      return f"pid {pid} now belongs to a different process"
    return None

  def _take_over(self, holder, reason: str) -> None:
    """Moves the stale lock aside (atomically, so two runs cannot both take it over) and logs it."""
    if holder == "missing":
      return
    aside = f"{self.path}.stale-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return  # another run moved it first; the next attempt sees what is there now
    moved = self._read(aside)
    if holder is not None and moved != holder:  # raced: it was someone's fresh lock; put it back
      try:
        os.link(aside, self.path)
      except OSError:
        pass
      os.unlink(aside)
      return
    os.unlink(aside)
    what = describe(holder) if isinstance(holder, dict) else "an unreadable lock"
    logging.warning("%s: taking over a stale workdir lock held by %s: %s", self.path, what, reason)

  def _held_message(self, holder) -> str:
    if not isinstance(holder, dict):
      return (f"{self.workdir}: another run is creating the workdir lock {self.path} right now; one run per "
              f"workdir")
    same_host = holder.get("host") == socket.gethostname()
    advice = ("wait for it to finish or stop it" if same_host else
              f"it runs on another host, so it cannot be checked from here: if it is gone, remove {self.path}")
    return (f"{self.workdir} is in use by another run: {describe(holder)}; lock file {self.path}. One run per "
            f"workdir: {advice}, or use another --workdir.")


class _NoLock:
  """What processes other than 0 hold in a multi-host job (process 0 holds the job's lock)."""
  held = False

  def release(self) -> None:
    pass


_job_locks = 0  # hold_workdir calls so far: every process counts the same, so each call has its own key
AGREE_TIMEOUT_MS = 30 * 60 * 1000  # how long processes 1.. wait for process 0 to reach the lock


def hold_workdir(workdir: str):
  """Takes the workdir lock for this run (multi-host: process 0 takes it for the job); returns an object
  with `release()`. Raises WorkdirLocked on every process when another run holds the workdir.

  Process 0 tells the others through the coordination service's key-value store (no device collective,
  so no process waits on a compiled program while another is still starting); without a coordination
  service (processes joined some other way) through `broadcast_one_to_all`.
  """
  global _job_locks
  import jax

  if jax.process_count() == 1:
    return WorkdirLock(workdir).acquire()
  _job_locks += 1
  lock, error = _NoLock(), ""
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir).acquire()
    except WorkdirLocked as e:
      error = str(e)
  verdict = _agree(f"trainkit_workdir_lock_{_job_locks}", error or "ok")
  if verdict != "ok":
    raise WorkdirLocked(verdict if jax.process_index() else error)
  return lock


def _agree(key: str, value: str) -> str:
  """Process 0's `value`, on every process."""
  import jax

  client = None
  if jax.distributed.is_initialized():
    from jax._src import distributed  # the coordination client jax.distributed.initialize started

    client = distributed.global_state.client
  if client is not None:
    if jax.process_index() == 0:
      client.key_value_set(key, value)
      return value
    return client.blocking_key_value_get(key, AGREE_TIMEOUT_MS)
  import numpy as np
  from jax.experimental import multihost_utils

  if int(multihost_utils.broadcast_one_to_all(np.int32(value == "ok"))):
    return "ok"
  return value if value != "ok" else "process 0 found the workdir in use by another run (see its log)"


def holds_workdir_lock(function):
  """Decorates a function with a `workdir` argument (trainkit.train_loop): the workdir lock is taken before
  it runs and released when it returns or raises."""
  signature = inspect.signature(function)

  @functools.wraps(function)
  def wrapped(*args, **kwargs):
    workdir = signature.bind(*args, **kwargs).arguments["workdir"]
    lock = hold_workdir(workdir)
    try:
      return function(*args, **kwargs)
    finally:
      lock.release()

  return wrapped
