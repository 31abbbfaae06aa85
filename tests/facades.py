"""Checks of a facade module (common.py, eval.py): a module that offers names of other modules
under the names tensorpack's example users know, and holds no code of its own."""
import ast


def facade_problems(module):
    """What keeps `module` from being a pure facade, as a list of messages (empty: none).

    A facade holds a docstring, `from ... import` statements and `__all__` only; `__all__` offers
    exactly the names it imports, and each of them is an attribute of the module.
    """
    tree = ast.parse(open(module.__file__).read(), module.__file__)
    problems, imported = [], []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            imported.extend(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == ['__all__']:
            continue
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):   # the docstring
            problems.append('line {}: {} in a facade'.format(node.lineno, type(node).__name__))
    offered = list(getattr(module, '__all__', []))
    if sorted(offered) != sorted(imported):
        problems.append('__all__ differs from the imported names: offers {}, imports {}'.format(
            sorted(set(offered) - set(imported)), sorted(set(imported) - set(offered))))
    problems.extend('__all__ names a missing {!r}'.format(name) for name in offered if not hasattr(module, name))
    return problems
