"""Paths named by data (an image in a JSON record, a shard in a weights index) stay inside their root.

    full = inside_root(image_dir, record["image"], what="image")   # raises OutsideRoot for ../x, /etc/x, ...

The check runs on real paths (symlinks resolved on both sides), so neither `..`, an absolute path nor a
symlink that points out of the root reaches a file outside it. A root that is itself a symlink is fine.
"""
from __future__ import annotations

import os


class OutsideRoot(ValueError):
  """A path from data resolves outside the folder it must stay in."""


def inside_root(root: str, relative: str, what: str = "path") -> str:
  """The real path of `root/relative`; raises OutsideRoot when it leaves `root`.

  Args:
    root: the folder the data may read from (e.g. the image folder, the model folder).
    relative: the path as the data names it.
    what: what the path is, for the message ('image', 'weights shard').
  Raises:
    TypeError when `relative` is not a non-empty string; OutsideRoot (a ValueError) naming both paths.
  """
  if not isinstance(relative, str) or not relative:
    raise TypeError(f"{what} path must be a non-empty string, found {relative!r}")
  if "\x00" in relative:
    raise OutsideRoot(f"{what} {relative!r}: a path with a NUL byte")
  real_root = os.path.realpath(root)
  full = os.path.realpath(os.path.join(real_root, relative))
  if os.path.commonpath([real_root, full]) != real_root:
    raise OutsideRoot(f"{what} {relative!r} resolves to {full}, outside its root {real_root} (paths from data "
                      f"must stay inside the root, also after symlinks)")
  return full
