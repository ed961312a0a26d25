"""Helpers shared by config files (configs import nothing from the packages, only ml_collections)."""


def parse(arg: str, **defaults):
  """'k=v,k2=v2' -> the defaults updated, each value cast to its default's type; unknown keys fail."""
  values = dict(defaults)
  for item in filter(None, arg.split(",")):
    key, _, value = item.partition("=")
    if key not in values:
      raise ValueError(f"config arg {key!r}: expected one of {sorted(values)}")
    values[key] = type(values[key])(value)
  return values
