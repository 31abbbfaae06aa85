"""The declared keys of a config and the command-line overrides checked against them.

A `KeyTable` holds, for each settable key, its `Spec` (default, one-line description, accepted
types) and, for each key that finalization fills, its description. Overrides are `KEY=VALUE`
strings parsed with `ast.literal_eval` (never `eval`); an unknown key fails and suggests close
matches.
"""
import ast
import copy
import difflib


class Spec:
    """What one key accepts: its default, a one-line description, the accepted types, and for a list
    value a template of its elements (a type tuple, or a list of one template for nested lists)."""

    def __init__(self, default, doc, types, elements=None):
        self.default = default
        self.doc = doc
        self.types = types
        self.elements = elements if elements is not None else _element_template(default)

    def accepts_str(self):
        return str in self.types


class KeyTable:
    """The keys of one config tree, in declaration order.

    specs: 'DATA.TRAIN' -> `Spec`, the keys users set.
    derived: key -> description, the keys `finalize_configs` fills (users don't set them).
    """

    def __init__(self):
        self.specs = {}
        self.derived = {}

    def declare(self, root, key, default, doc, types=None, elements=None):
        """Declare `key` with its default, a one-line description and (optionally) accepted types and,
        for a list value, the accepted types of its elements (taken from the default's elements otherwise);
        put the default into the tree `root`."""
        if types is None:
            types = _types_of(default)
        self.specs[key] = Spec(copy.deepcopy(default), doc, tuple(types), elements)
        _set_leaf(root, key, copy.deepcopy(default))

    def declare_derived(self, root, key, placeholder, doc):
        """A key computed by `finalize_configs`; users don't set it. `root` holds `placeholder` until then."""
        self.derived[key] = doc
        _set_leaf(root, key, placeholder)

    def parse_overrides(self, args):
        """['KEY=VALUE', ...] -> [(key, checked value), ...], raising KeyError/ValueError on the first bad one."""
        parsed = [self._parse_override(arg) for arg in args]
        _check_no_repeated_keys(args, parsed)
        return parsed

    def _parse_override(self, arg):
        """'KEY=VALUE' -> (key, checked value), raising KeyError/ValueError naming the problem."""
        if '=' not in arg:
            raise ValueError("Config override '{}' must look like KEY=VALUE.".format(arg))
        key, text = arg.split('=', 1)
        key = key.strip()
        if key not in self.specs:
            raise self._unknown_key_error(key)
        spec = self.specs[key]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if not spec.accepts_str():
                raise ValueError("Config {}={!r}: not a Python literal; this key takes {}."
                                 .format(key, text, _type_names(spec.types))) from None
            value = text
        if spec.types == (str,) and not isinstance(value, str):
            value = text   # a str key keeps the text as typed, e.g. DATA.BASEDIR=2017
        return key, _check_type(key, value, spec)

    def _unknown_key_error(self, key):
        if key in self.derived:
            return KeyError("Config key '{}' is derived by finalize_configs ({}); it can't be set."
                            .format(key, self.derived[key]))
        hint = self._close_matches(key)
        msg = "Unknown config key '{}'.".format(key)
        if hint:
            msg += ' Did you mean: {}?'.format(', '.join(hint))
        return KeyError(msg)

    def _close_matches(self, key):
        matches = difflib.get_close_matches(key, list(self.specs), n=3, cutoff=0.6)
        if not matches:
            last = key.split('.')[-1]
            matches = [k for k in self.specs if k.split('.')[-1] == last]
        return matches


def combine_overrides(*groups):
    """One override list from several lists of `KEY=VALUE`: a key in a later list replaces it in earlier ones.

    For scripts that build a config from a base and changes; one list given to `update_args`
    may not repeat a key.
    """
    combined = {}
    for group in groups:
        for override in group:
            key = override.split('=', 1)[0].strip()
            combined.pop(key, None)   # the replacement goes where the later list puts it
            combined[key] = override
    return list(combined.values())


def _set_leaf(root, key, value):
    """Set dotted `key` under `root`, creating the sub-trees on the way (root must not be frozen)."""
    node = root
    parts = key.split('.')
    for part in parts[:-1]:
        node = getattr(node, part)
    setattr(node, parts[-1], value)


def _types_of(default):
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (float, int)
    if isinstance(default, str):
        return (str,)
    if isinstance(default, (list, tuple)):
        return (list, tuple)
    raise TypeError('Declare the accepted types of a key whose default is {!r}'.format(default))


def _element_template(default):
    """The element types of a list default: a type tuple, [template] for a list of lists, or None."""
    if not isinstance(default, (list, tuple)) or not default:
        return None
    if all(isinstance(e, (list, tuple)) for e in default):
        inner = _element_template(default[0])
        return [inner] if inner is not None else None
    kinds = {_types_of(e) for e in default}
    return kinds.pop() if len(kinds) == 1 else None


def _check_no_repeated_keys(args, parsed):
    """A key given twice in one list of overrides is a mistake: say which, with both values."""
    first_text = {}
    for arg, (key, _) in zip(args, parsed):
        text = arg.split('=', 1)[1]
        if key in first_text:
            raise ValueError("Config key {} is given twice: {}={} and {}={}; give it once."
                             .format(key, key, first_text[key], key, text))
        first_text[key] = text


def _type_names(types):
    return ' or '.join('None' if t is type(None) else t.__name__ for t in types)


def _check_type(key, value, spec):
    ok = isinstance(value, spec.types)
    if isinstance(value, bool) and bool not in spec.types:
        ok = False   # True is an int in Python, but never a valid count or size
    if not ok:
        raise ValueError("Config {}={!r}: expected {}, got {}."
                         .format(key, value, _type_names(spec.types), type(value).__name__))
    if isinstance(spec.default, float) and isinstance(value, int):
        value = float(value)
    if isinstance(value, (list, tuple)) and spec.elements is not None:
        _check_elements(key, value, spec.elements, value, spec.default)
    if isinstance(value, (list, tuple)) and isinstance(spec.default, (list, tuple)):
        value = type(spec.default)(value)   # lists and tuples are interchangeable on the command line
    return value


def _check_elements(key, value, template, whole, default):
    """Every element of list `value` matches `template` (see Spec), else a ValueError naming `key`
    (`whole` is the value given, `default` the key's default)."""
    for position, element in enumerate(value):
        if isinstance(template, list):
            if not isinstance(element, (list, tuple)):
                raise ValueError('Config {}={!r}: element {} ({!r}) should be a list.'.format(
                    key, whole, position, element))
            _check_elements(key, element, template[0], whole, default)
            continue
        ok = isinstance(element, template) and (bool in template or not isinstance(element, bool))
        if not ok:
            raise ValueError('Config {}={!r}: element {} ({!r}) should be {}{}.'.format(
                key, whole, position, element, _type_names(template),
                ', like the default {!r}'.format(default) if isinstance(default, (list, tuple)) else ''))
