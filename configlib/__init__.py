"""The machinery behind config.py, which declares the keys and finalizes them.

- `attrdict`: `AttrDict`, the tree of values with attribute access that config.py fills;
- `keys`: `KeyTable`, each key's default, description and accepted types, and the parsing and
  checking of command-line overrides against it;
- `validate`: the checks of single values and of combinations that can't work;
- `derive`: the `Derived` record of values resolved from the declared keys and the devices.

Only config.py imports this package (tests/test_layering.py); it imports utils/ and
modeling/params.py, never config.py.
"""
