"""Grain pipeline: seeded order, exact resume from a saved position, bad records counted and skipped."""
import logging

import numpy as np

import trainkit


def parse(record):
  if record % 10 == 3:
    raise trainkit.BadRecord(f"odd record: id {record} ends in 3")
  return {"x": np.int64(record)}


def take(iterator, n):
  return [next(iterator)["x"].tolist() for _ in range(n)]


def test_same_seed_same_order_and_epochs_reshuffle():
  a = trainkit.make_train_iterator(list(range(8)), global_batch_size=4, seed=1, parse=lambda r: {"x": np.int64(r)})
  b = trainkit.make_train_iterator(list(range(8)), global_batch_size=4, seed=1, parse=lambda r: {"x": np.int64(r)})
  first, second = take(a, 4), take(b, 4)
  assert first == second
  assert sorted(first[0] + first[1]) == list(range(8)) and sorted(first[2] + first[3]) == list(range(8))
  assert first[:2] != first[2:]  # the second epoch is a different permutation


def test_restored_position_gives_exactly_the_next_batches():
  it = trainkit.make_train_iterator(list(range(100)), global_batch_size=8, seed=3, parse=parse)
  take(it, 5)
  saved = it.get_state()
  expected = take(it, 4)
  fresh = trainkit.make_train_iterator(list(range(100)), global_batch_size=8, seed=3, parse=parse)
  fresh.set_state(saved)
  assert take(fresh, 4) == expected


def test_bad_records_are_counted_logged_and_skipped(caplog):
  caplog.set_level(logging.WARNING)
  counter = trainkit.SkipCounter()
  it = trainkit.make_train_iterator(list(range(100)), global_batch_size=9, seed=0, parse=parse,
                                    num_epochs=1, skip_counter=counter)
  seen = [x for batch in it for x in batch["x"].tolist()]
  assert len(seen) == 90 and not any(x % 10 == 3 for x in seen)
  assert counter.counts == {"odd record": 10} and counter.total == 10
  assert "skipping bad record 13: odd record: id 13 ends in 3" in caplog.text

