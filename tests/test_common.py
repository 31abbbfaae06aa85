"""common.py, the face of the dataflow's image and geometry helpers (their tests live in
tests/dataflow/ and tests/utils/test_failures.py)."""
import common

from tests.facades import facade_problems


def test_common_is_a_facade_offering_every_name_it_imports():
    assert facade_problems(common) == []
