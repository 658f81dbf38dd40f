"""bissl: BiSSL (bilevel self-supervised learning) for classification, detection and segmentation."""
from pathlib import Path

from setuptools import find_packages, setup

_PINS = Path(__file__).parent / "requirements" / "pins.txt"
_DEV_ONLY = {"wheel", "ninja", "pytest", "ruff", "setuptools"}


def _requirements() -> list[str]:
    reqs = []
    for line in _PINS.read_text().splitlines():
        line = line.split("#")[0].strip()
        name = line.split("=")[0].split(">")[0].split("<")[0].split("[")[0]
        if line and name not in _DEV_ONLY:
            reqs.append(line)
    return reqs


setup(
    name="bissl",
    version="0.1.0",
    description="BiSSL: a bilevel stage between self-supervised pretraining and fine-tuning",
    packages=find_packages(include=["bissl_dense", "bissl_dense.*", "classification", "classification.*"]),
    python_requires=">=3.10",
    install_requires=_requirements(),
    extras_require={"dev": ["pytest", "ruff"]},
    entry_points={"console_scripts": ["bissl=bissl_dense.cli:main"]},
)
