"""Ships the top-level conf/ inside the package as ``vau.conf`` (metadata lives in pyproject.toml).

The configs stay at the top of the repository, where researchers edit them; a non-editable install or a wheel
carries them as package data, so ``python -m vau fit`` works from any folder.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["vau", "vau.*"]), "vau.conf"],
    package_dir={"vau.conf": "conf"},
)
