"""Packaging beyond pyproject.toml: the Avro schemas ship inside the package.

``schemas/`` at the top of the repository is the source of truth (other languages read it
there); it is installed as the package ``producer.schemas``, so an editable install, a wheel and
the Docker image all find the same files through ``importlib.resources``.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["producer", "producer.*"]), "producer.schemas"],
    package_dir={"producer.schemas": "schemas"},
    package_data={"producer": ["py.typed"], "producer.schemas": ["*.avsc", "history/*/*.avsc"]},
)
