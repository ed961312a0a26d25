"""Device mesh from config: axes `data`, `fsdp`, `tensor`.

`data` and `fsdp` both split the batch; `fsdp` also splits parameters and optimizer state;
`tensor` splits the inner dimensions of matmuls (heads, MLP width, vocabulary).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills at most one `-1` axis with the devices the others leave; checks the product.

  Returns {axis: size} in MESH_AXES order; axes missing from `axis_sizes` get size 1.
  """
  axis_sizes = dict(axis_sizes.items())  # also accepts a ConfigDict
  unknown = set(axis_sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh: unknown axes {sorted(unknown)}; the mesh axes are {MESH_AXES}")
  sizes = {name: int(axis_sizes.get(name, 1)) for name in MESH_AXES}
  fill = [name for name, size in sizes.items() if size == -1]
  bad = {name: size for name, size in sizes.items() if size == 0 or size < -1}
  if bad or len(fill) > 1:
    raise ValueError(f"mesh: sizes must be positive, with at most one -1 to fill; got {sizes}")
  known = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if num_devices % known:
      raise ValueError(
          f"mesh: {sizes} cannot fill {fill[0]!r}: the other axes multiply to {known}, which does not "
          f"divide the {num_devices} devices. Choose sizes whose product divides {num_devices}.")
    sizes[fill[0]] = num_devices // known
  elif known != num_devices:
    raise ValueError(
        f"mesh: {sizes} multiply to {known} but there are {num_devices} devices. Make the product "
        f"equal {num_devices}, or set one axis to -1 to take the remaining devices.")
  return sizes


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds a (data, fsdp, tensor) mesh with Auto axis types (GSPMD-style sharding propagation).

  Args:
    axis_sizes: e.g. `config.mesh` = {'data': -1, 'fsdp': 2, 'tensor': 1}.
    devices: defaults to all devices of all processes.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_mesh_shape(axis_sizes, len(devices))
  shape = tuple(sizes[name] for name in MESH_AXES)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if len(devices) == len(jax.devices()):
    # make_mesh picks a topology-aware device order (ICI rings on TPU).
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)
