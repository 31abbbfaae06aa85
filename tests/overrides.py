"""Composing --config override lists for the script tests (a key given twice is an error)."""


def replaced(base, changes):
    """`base` overrides with the keys of `changes` replaced, then `changes` appended."""
    changed = {change.split('=', 1)[0] for change in changes}
    return [item for item in base if item.split('=', 1)[0] not in changed] + list(changes)
