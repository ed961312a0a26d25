"""Grain input pipelines: seeded shuffle, per-host sharding, bad-record skipping, global arrays.

The iterator is a `grain.DatasetIterator`: its `get_state()` is saved with every checkpoint, so a
resumed run continues on exactly the next batch.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np
from absl import logging


class BadRecord(ValueError):
  """Raised by a parse function for a record to count, log and skip (never crash the run)."""


class SkipCounter:
  """Thread-safe count of skipped records by reason; the run summary reports it."""

  def __init__(self):
    self._lock = threading.Lock()
    self.counts: dict[str, int] = {}

  def add(self, reason: str) -> None:
    with self._lock:
      self.counts[reason] = self.counts.get(reason, 0) + 1

  @property
  def total(self) -> int:
    return sum(self.counts.values())


def skipping(parse: Callable, counter: SkipCounter, describe: Callable[[object], str] = repr) -> Callable:
  """Wraps parse(record) so that BadRecord becomes None (filtered out), counted and logged."""
  def wrapped(record):
    try:
      return parse(record)
    except BadRecord as e:
      counter.add(str(e).split(":")[0])
      logging.warning("skipping bad record %s: %s", describe(record)[:200], e)
      return None
  return wrapped


def make_train_iterator(
    source,
    *,
    global_batch_size: int,
    seed: int,
    parse: Callable | None = None,
    num_epochs: int | None = None,
    skip_counter: SkipCounter | None = None,
    worker_threads: int = 2,
    batch_transform: Callable | Sequence[Callable] | None = None,
) -> grain.DatasetIterator:
  """Shuffled (reshuffled every epoch), host-sharded, parsed, batched iterator.

  Args:
    source: random-access source (`len`, `__getitem__`): a list, a tfds data source, ...
    global_batch_size: examples per step over all hosts; each host yields its 1/process_count.
    parse: record -> dict of numpy arrays; may raise BadRecord to skip the record.
    num_epochs: None repeats forever (train by steps).
    batch_transform: host-local batch -> batch, or a sequence of them applied in order, after batching
      (e.g. trimming padding to a length bucket); being maps, they keep the iterator's checkpointed
      position exact.
  Yields dicts of numpy arrays with leading dim global_batch_size / process_count.
  """
  hosts = jax.process_count()
  if global_batch_size % hosts:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by {hosts} processes")
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(num_epochs)
  ds = host_blocks(ds, global_batch_size // hosts, jax.process_index(), hosts)
  if parse is not None:
    counter = skip_counter if skip_counter is not None else SkipCounter()
    ds = ds.map(skipping(parse, counter)).filter(lambda x: x is not None)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=worker_threads, prefetch_buffer_size=4))
  ds = ds.batch(global_batch_size // hosts, drop_remainder=True)
  for transform in [batch_transform] if callable(batch_transform) else batch_transform or ():
    ds = ds.map(transform)
  return iter(ds)


def host_blocks(ds: grain.MapDataset, block: int, host: int, hosts: int) -> grain.MapDataset:
  """Host `host`'s records: block k of this host is records [(k * hosts + host) * block, ... + block).

  So each global batch is the same consecutive records as on one process, and host h's part is its
  h-th contiguous slice -- the rows `make_array_from_process_local_data` gives to its devices. Batches
  (and per-row randomness such as dropout masks) are then identical to a single-process run.
  """
  if hosts == 1:
    return ds
  def record(index: int):
    k, offset = divmod(index, block)
    return ds[(k * hosts + host) * block + offset]

  # Whole global batches only: a trailing partial one could not be split evenly over the hosts.
  return grain.MapDataset.range(len(ds) // (block * hosts) * block).map(record)


def to_global(local_batch, sharding: jax.sharding.NamedSharding):
  """Host-local numpy batch -> global jax.Arrays laid out with `sharding` (works multi-host)."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


class LocalBuilderMessages:
  """Mixin for tfds builders that read local files: says so, instead of tfds' "Downloading and preparing
  dataset Unknown size (download: Unknown size, ...)" (nothing is downloaded)."""

  def _log_download_bytes(self) -> None:
    print(f"Building the {self.name} dataset from local files into {self.data_dir} (offline; once)", flush=True)

  def _log_download_done(self) -> None:
    print(f"Built {self.name} at {self.data_dir}; later runs reuse it", flush=True)
