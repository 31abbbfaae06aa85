"""eval.py, the face of the inference/ package (its pieces are tested in tests/inference/)."""
import eval as evaluation

from tests.facades import facade_problems


def test_eval_is_a_facade_offering_every_name_it_imports():
    assert facade_problems(evaluation) == []
