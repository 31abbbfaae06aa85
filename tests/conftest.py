"""Shared fixtures: every test starts and ends with the default config."""
import logging

import utils.tf_compat  # noqa: F401  (before any test module imports tensorpack: TensorFlow's set-up)
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
    """Messages logged during the test through tensorpack's logger, or through the plain logger
    that utils.logs uses in a process that has not imported tensorpack (the datasets alone)."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    loggers = [logging.getLogger(name) for name in ('tensorpack', 'frcnn')]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> the path of a fresh tmpfs of `size` (e.g. '2m') under tmp_path, or None where this
    process may not mount one (tests then inject the write failure instead). Every mount is undone."""
    import subprocess
    mounted = []

    def mount(size):
        path = tmp_path / 'disk{}'.format(len(mounted))
        path.mkdir()
        proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=' + size, 'tmpfs', str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            return None
        mounted.append(path)
        return str(path)

    yield mount
    for path in mounted:
        if subprocess.run(['umount', str(path)], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(['umount', '-l', str(path)])
