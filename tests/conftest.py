"""Shared fixtures: every test starts and ends with the default config."""
import pytest

from config import reset_config


@pytest.fixture(autouse=True)
def _default_config():
    reset_config()
    yield
    reset_config()
