"""Composing --config override lists for the script tests (a key given twice is an error)."""
from config import combine_overrides


def replaced(base, changes):
    """`base` overrides with the keys of `changes` replaced, then `changes` appended."""
    return combine_overrides(base, changes)
