"""Installable package tree: tga_jax, comploss_jax and the shared trainkit runtime.

The stack is pinned on purpose (see shared/ENVIRONMENT.md): these libraries move fast and break.
TensorFlow is deliberately absent; tfds and ScaNN are used through their TF-free paths.
"""
from setuptools import find_packages, setup

JAX_VERSION = "0.10.2"

INSTALL_REQUIRES = [
    f"jax=={JAX_VERSION}",
    f"jaxlib=={JAX_VERSION}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.24.0",
    "tokenizers>=0.23,<0.24",
    "safetensors>=0.8,<0.9",
    "tensorflow-datasets==4.9.10",
    "importlib_resources",  # etils.epath needs it for tfds builders defined outside tfds
    "scann==1.4.2",
    "ml-collections==1.1.0",
    "grain==0.2.18",
    "gguf>=0.19,<0.20",
    "absl-py",
    "tqdm",
    "tensorboardX>=2.6,<2.7",
    "matplotlib",
    "pillow",
    "scikit-learn",  # the digits demo data and reference metrics
    "numpy",
]

EXTRAS_REQUIRE = {
    # torch is the numerical reference in tests and benchmarks only, never a run-time dependency.
    # The exact pin matters: an unpinned torch pulls a multi-GB CUDA build.
    # libtpu (jax[tpu], a 213 MB wheel) lets tests compile for TPU topologies without a TPU (trainkit/plan.py).
    "test": ["pytest", "pytest-xdist==3.8.0", "torch==2.13.0", "accelerate==1.15.0", f"jax[tpu]=={JAX_VERSION}"],
    "tpu": [f"jax[tpu]=={JAX_VERSION}"],
    "gpu": [f"jax[cuda12]=={JAX_VERSION}"],
}

setup(
    name="tga-comploss-jax",
    version="0.1.0",
    description="JAX/Flax reimplementations of Text-Guided Alignment (TGA) and the comparative loss",
    python_requires=">=3.11,<3.14",  # jax/jaxlib 0.10.2, scann 1.4.2, grain 0.2.18 wheels exist for 3.11-3.13
    packages=find_packages(include=["trainkit*", "tga_jax*", "comploss_jax*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
