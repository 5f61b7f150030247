"""The training tests' tiny-data fixture, shared with the ablation tests."""

from tests.train.conftest import tiny_local  # noqa: F401
