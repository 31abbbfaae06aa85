"""The demo recipe: the command-line overrides that `make demo` gives train.py and predict.py.

They live in tools/demo_recipe.txt, one override per line, with `$(DATA_DIR)` standing for the
Makefile's DATA_DIR. The Makefile reads that file with `$(shell cat ...)` and Python with
`demo_overrides`; both split it at whitespace, so an override may not contain a space.

    .venv/bin/python -m tools.demo_recipe [DATA_DIR]    # prints the overrides on one line
"""
import os
import sys

RECIPE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo_recipe.txt')
DATA_DIR_PLACEHOLDER = '$(DATA_DIR)'


def demo_overrides(data_dir='data', recipe_file=RECIPE_FILE):
    """The recipe's overrides as a list of 'KEY=VALUE' strings, `$(DATA_DIR)` replaced by `data_dir`."""
    with open(recipe_file) as f:
        overrides = f.read().split()
    malformed = [o for o in overrides if '=' not in o]
    if not overrides or malformed:
        raise ValueError('{} must hold KEY=VALUE overrides, one per line; found {}'.format(
            recipe_file, malformed or 'none'))
    return [o.replace(DATA_DIR_PLACEHOLDER, data_dir) for o in overrides]


if __name__ == '__main__':
    print(' '.join(demo_overrides(*sys.argv[1:2])))
