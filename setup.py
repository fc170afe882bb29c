"""Build entry point. Metadata lives in pyproject.toml; compiled extensions are added here."""

from setuptools import setup

setup()
