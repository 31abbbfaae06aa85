"""Shared fixtures: every test starts and ends with the default config."""
import logging

import pytest

from config import reset_config


def pytest_report_header(config):
    """Which oneDNN setting this run tests (make test runs the model tests with both)."""
    from utils.tf_compat import onednn_status
    return onednn_status()


@pytest.fixture(autouse=True)
def _default_config():
    reset_config()
    yield
    reset_config()


@pytest.fixture
def log_messages():
    """Messages logged through tensorpack's logger during the test."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger('tensorpack').addHandler(handler)
    yield records
    logging.getLogger('tensorpack').removeHandler(handler)
