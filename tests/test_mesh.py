import jax
import pytest

from trainkit.mesh import make_mesh, resolve_mesh_shape


def test_minus_one_fills_remaining_devices():
  assert resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert resolve_mesh_shape({"fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "tensor": 1}


@pytest.mark.parametrize("sizes, message", [
    ({"data": -1, "fsdp": 3}, "does not divide the 8 devices"),
    ({"data": 2, "fsdp": 2}, "multiply to 4 but there are 8 devices"),
    ({"data": -1, "fsdp": -1}, "at most one -1"),
    ({"data": 8, "model": 1}, "unknown axes ['model']"),
])
def test_bad_sizes_name_the_problem(sizes, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
    resolve_mesh_shape(sizes, 8)


def test_mesh_on_simulated_devices_and_on_a_subset():
  mesh = make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  single = make_mesh({"data": -1}, devices=jax.devices()[:1])
  assert single.devices.size == 1
