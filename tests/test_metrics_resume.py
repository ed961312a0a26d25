"""A resumed run's TensorBoard events: the restart marks the restored step, so TensorBoard drops the
interrupted run's later events and each step shows once (metrics.jsonl is trimmed by the loop)."""
import glob
import os
import struct
import subprocess
import sys
import time

from tensorboardX.proto import event_pb2

from trainkit.metrics import MetricsWriter


def events(path):
  """The Event protos of a TFRecord events file (length, crc, payload, crc per record)."""
  data, out, at = open(path, "rb").read(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    event = event_pb2.Event()
    event.ParseFromString(data[at + 12:at + 12 + length])
    out.append(event)
    at += 12 + length + 4
  return out


def test_resumed_writer_purges_tensorboard_events_after_the_restored_step(tmp_path):
  first = MetricsWriter(str(tmp_path))
  for step in range(1, 6):
    first.write(step, {"loss": float(step)})
  first.close()
  time.sleep(1.1)  # events files are named by the second they start in; a real restart is later still
  second = MetricsWriter(str(tmp_path), resumed_at=2)  # restored from the step-2 checkpoint
  second.write(3, {"loss": 30.0})
  second.close()
  files = sorted(glob.glob(os.path.join(tmp_path, "tensorboard", "events.*")), key=os.path.getmtime)
  assert len(files) == 2
  restarts = [e for e in events(files[-1])
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
  # TensorBoard discards every earlier event whose step >= this one: steps 3, 4, 5 of the first run.
  assert [e.step for e in restarts] == [3]


def test_metrics_writer_does_not_load_torch_and_leaves_it_importable(tmp_path):
  # tensorboardX imports torch whenever it is installed (seconds per process that logs); the writer keeps it
  # out, and a later `import torch` (the user's) still works where torch is installed.
  code = ("import importlib.util, sys\n"
          "from trainkit.metrics import MetricsWriter\n"
          f"w = MetricsWriter({str(tmp_path)!r}); w.write(1, {{'loss': 1.0}}); w.close()\n"
          "assert 'torch' not in sys.modules, 'the metrics writer loaded torch'\n"
          "if importlib.util.find_spec('torch') is not None:\n"
          "  import torch; assert torch.zeros(1).shape == (1,)\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
