"""`AttrDict`: the tree of config values with attribute access, as in tensorpack's example."""
import pprint


class AttrDict:
    """A tree of config values with attribute access.

    Before `freeze()`, reading a missing attribute creates a sub-tree (so declarations can
    write `_C.DATA.TRAIN = ...`); after it, unknown keys raise instead of silently creating
    new ones, which is how typos in code are caught. `update_args` checks overrides against
    the `KeyTable` of the tree's class (config.py's `Config`); a plain AttrDict has none.
    """

    _frozen = False
    _key_table = None

    def __getattr__(self, name):
        if self._frozen or name.startswith('_'):
            raise AttributeError(name)
        child = AttrDict()
        setattr(self, name, child)
        return child

    def __setattr__(self, name, value):
        if self._frozen and name not in self.__dict__:
            raise AttributeError("Config is frozen; '{}' is not a config key.".format(name))
        super().__setattr__(name, value)

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __str__(self):
        return pprint.pformat(self.to_dict(), indent=1, width=100, compact=True)

    __repr__ = __str__

    def to_dict(self):
        """A nested plain dict of the values (for logging and pickling into workers)."""
        return {k: v.to_dict() if isinstance(v, AttrDict) else v
                for k, v in self.__dict__.items() if not k.startswith('_')}

    @property
    def derived(self):
        """The `Derived` values of the last `finalize_configs` of this config."""
        derived = self.__dict__.get('_derived')
        if derived is None:
            raise AttributeError('The config has no derived values yet: call finalize_configs first.')
        return derived

    def freeze(self, frozen=True):
        object.__setattr__(self, '_frozen', frozen)
        for value in self.__dict__.values():
            if isinstance(value, AttrDict):
                value.freeze(frozen)

    def update_args(self, args):
        """Apply command-line overrides such as `['TRAIN.BASE_LR=0.02', 'MODE_FPN=True']`.

        Values are parsed with `ast.literal_eval` and checked against the key's declared
        types. Either every override applies or, on the first bad one, none does.
        """
        if self._key_table is None:
            raise TypeError('This AttrDict has no declared keys to check overrides against; '
                            'update the root of a config (config.config or config.new_config()).')
        for key, value in self._key_table.parse_overrides(args):
            node, leaf = resolve_parent(self, key)
            was_frozen = node._frozen
            node.freeze(False)
            setattr(node, leaf, value)
            node.freeze(was_frozen)

    # Comparing configs is almost always a bug (a config vs. a value of it).
    def __eq__(self, _):
        raise NotImplementedError('AttrDict does not support comparison.')

    def __ne__(self, _):
        raise NotImplementedError('AttrDict does not support comparison.')

    __hash__ = None


def resolve_parent(root, key):
    """(the node holding dotted `key` under `root`, the key's last part); the node must exist."""
    node = root
    parts = key.split('.')
    for part in parts[:-1]:
        node = node.__dict__[part]
    return node, parts[-1]
