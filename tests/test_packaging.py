"""What `pip install .` ships: every package and subpackage, no scripts (configs/, launch/), and CLIs that
import and explain themselves from the installed files alone (outside the checkout)."""
import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("trainkit", "tga_jax", "comploss_jax")
CLI_MODULES = ("tga_jax.train", "tga_jax.chat", "tga_jax.annotate", "tga_jax.safety.analyze",
               "tga_jax.safety.evaluate", "tga_jax.miniature.reproduce", "comploss_jax.train",
               "comploss_jax.train_qa", "trainkit.cli")


def package_sources() -> list[str]:
  return sorted(os.path.relpath(p, ROOT) for package in PACKAGES
                for p in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True))


def test_packages_never_import_scripts_or_configs():
  offenders = []
  for path in package_sources():
    for number, line in enumerate(open(os.path.join(ROOT, path)), 1):
      if re.match(r"\s*(from|import)\s+(configs|launch|bench|tests)\b", line):
        offenders.append(f"{path}:{number}: {line.strip()}")
  assert not offenders, "packages import scripts that `pip install .` does not ship:\n" + "\n".join(offenders)


def test_method_packages_import_each_other_only_in_the_miniature():
  offenders = []
  for path in package_sources():
    other = {"tga_jax": "comploss_jax", "comploss_jax": "tga_jax"}.get(path.split(os.sep)[0])
    if other is None or path.startswith(os.path.join("tga_jax", "miniature")):
      continue
    for number, line in enumerate(open(os.path.join(ROOT, path)), 1):
      if re.match(rf"\s*(from|import)\s+{other}\b", line):
        offenders.append(f"{path}:{number}: {line.strip()}")
  assert not offenders, "\n".join(offenders)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  # Built from a copy of what setup.py reads, so the build leaves no build/ folder in the checkout.
  source = tmp_path_factory.mktemp("source")
  shutil.copy(os.path.join(ROOT, "setup.py"), source)
  for package in PACKAGES:
    shutil.copytree(os.path.join(ROOT, package), source / package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  out = tmp_path_factory.mktemp("wheel")
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                         str(out), str(source)], capture_output=True, text=True, timeout=300)
  if proc.returncode != 0 and "No module named" in proc.stderr:
    pytest.skip(f"cannot build a wheel offline here: {proc.stderr[-300:]}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  (path,) = glob.glob(str(out / "*.whl"))
  return path


def test_wheel_ships_every_module_and_no_script(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  missing = [p for p in package_sources() if p.replace(os.sep, "/") not in names]
  assert not missing, f"not in the wheel (a folder without __init__.py?): {missing}"
  assert not [n for n in names if n.split("/")[0] in ("configs", "launch", "bench", "tests", "notebooks")]


def test_cli_modules_import_and_explain_themselves_from_the_installed_files(wheel, tmp_path):
  site = tmp_path / "site"
  zipfile.ZipFile(wheel).extractall(site)
  env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  code = ("import importlib, sys\n"
          f"for name in {CLI_MODULES!r}:\n"
          "  module = importlib.import_module(name)\n"
          f"  assert module.__file__.startswith({str(site)!r}), module.__file__\n"
          "print('imported', len(sys.modules))\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for module in ("tga_jax.train", "comploss_jax.train"):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--config" in proc.stdout and "--workdir" in proc.stdout and "Examples:" in proc.stdout
  proc = subprocess.run([sys.executable, "-m", "tga_jax.chat", "--help"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  text = " ".join(proc.stdout.split())  # argparse wraps the help lines
  assert proc.returncode == 0 and "--image" in text and "(default: smollm2-135m-instruct)" in text
  assert "RuntimeWarning" not in proc.stderr
