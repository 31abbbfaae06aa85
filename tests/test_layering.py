"""The layers of the project import one way (STYLE.md, "Layers run one way").

Read from the source (every import statement, also those inside functions), not by importing:
- no import cycles between the project's modules;
- utils/ is the ground floor: it imports no other part of the project;
- modeling/ never imports config.py (the models take parameter records, modeling/params.py);
- configlib/ (config.py's machinery) sits between utils/ and config.py: it imports only utils/,
  modeling/params.py and itself, and only config.py (and the tests) import it;
- bench/ and tools/ never import tests/.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIPPED_DIRS = {'.venv', '.git', '__pycache__', 'data', 'train_log', 'build'}


def project_modules(root=ROOT):
    """{dotted module name: path} of every .py file of the project (a package is its __init__)."""
    modules = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith('.'))
        for filename in filenames:
            if filename.endswith('.py'):
                rel = os.path.relpath(os.path.join(dirpath, filename), root)[:-3].split(os.sep)
                if rel[-1] == '__init__':
                    rel = rel[:-1]
                if rel:
                    modules['.'.join(rel)] = os.path.join(dirpath, filename)
    return modules


def _resolve(name, importer, modules):
    """The project module `name` refers to when imported by `importer`, or None (third party)."""
    if name in modules:
        return name
    # A script directory on sys.path (bench/ does that): `import bench_amp` from bench/x.py.
    sibling = '.'.join(importer.split('.')[:-1] + [name])
    if '.' in importer and sibling in modules:
        return sibling
    return None


def imports_of(module, path, modules):
    """The project modules that `module` (at `path`) imports, anywhere in the file."""
    tree = ast.parse(open(path).read(), path)
    is_package = path.endswith('__init__.py')
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                package = module.split('.') if is_package else module.split('.')[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = '.'.join(package + ([base] if base else []))
            names = [base + '.' + alias.name if base else alias.name for alias in node.names] + [base]
        for name in names:
            # `import a.b.c` imports a.b.c itself; `from a.b import c` imports c if it is a module, else a.b.
            target = _resolve(name, module, modules)
            if target is None and '.' in name:
                target = _resolve(name.rsplit('.', 1)[0], module, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph(root=ROOT):
    modules = project_modules(root)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def find_cycle(graph):
    """One import cycle [a, b, ..., a] of `graph` ({module: imported modules}), or None."""
    state = {}

    def visit(module, stack):
        state[module] = 'open'
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 'open':
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = 'done'
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            if cycle:
                return cycle
    return None


def _top(module):
    return module.split('.')[0]


def offenders(graph, importer_top, forbidden_tops):
    """(importer, imported) pairs where a module under `importer_top` imports one under forbidden_tops."""
    return sorted((module, target) for module, targets in graph.items() if _top(module) == importer_top
                  for target in targets if _top(target) in forbidden_tops)


@pytest.fixture(scope='module')
def graph():
    return import_graph()


def test_the_graph_sees_the_project(graph):
    # Guards the reader: were it to miss imports, every rule below would pass vacuously.
    assert 'utils.tf_compat' in graph['modeling.rcnn']
    assert 'modeling.params' in graph['configlib.validate']
    assert 'configlib.keys' in graph['config']
    assert 'utils.tf_compat' in graph['config']      # an import inside finalize_configs
    assert 'modeling.rcnn' in graph['modeling.rcnn_fpn']     # a relative import


def test_no_import_cycles(graph):
    assert find_cycle(graph) is None


def test_utils_is_the_ground_floor(graph):
    above = {_top(module) for module in graph} - {'utils'}
    assert offenders(graph, 'utils', above) == []


def test_no_modeling_module_imports_config(graph):
    assert offenders(graph, 'modeling', {'config', 'configlib'}) == []


# What configlib/ may import: the ground floor, the model's TensorFlow-free choices, itself.
CONFIGLIB_MAY_IMPORT = ('utils', 'modeling', 'modeling.params', 'configlib')


def configlib_offenders(graph):
    """(importer, imported) pairs that break configlib/'s place: it imports something above it, or
    a module other than config.py and the tests imports it."""
    upward = [(module, target) for module, targets in graph.items() if _top(module) == 'configlib'
              for target in targets
              if target not in CONFIGLIB_MAY_IMPORT and _top(target) not in ('utils', 'configlib')]
    users = [(module, target) for module, targets in graph.items()
             if module != 'config' and _top(module) not in ('configlib', 'tests')
             for target in targets if _top(target) == 'configlib']
    return sorted(upward + users)


def test_configlib_sits_between_utils_and_config(graph):
    assert configlib_offenders(graph) == []


@pytest.mark.parametrize('importer', ['bench', 'tools'])
def test_bench_and_tools_never_import_tests(graph, importer):
    assert offenders(graph, importer, {'tests'}) == []


def test_the_rules_catch_an_upward_import(tmp_path):
    """A copy of a small layered tree with the kinds of import the rules forbid."""
    files = {
        'config.py': 'def f():\n    from utils.compat import g\n',
        'utils/__init__.py': '', 'utils/compat.py': 'def g():\n    from config import Devices\n',
        'modeling/__init__.py': '', 'modeling/rcnn.py': 'from . import params\nimport config\n',
        'modeling/params.py': '', 'bench/x.py': 'from tests.helpers import h\n',
        'configlib/__init__.py': '', 'configlib/keys.py': 'from modeling import params\nimport config\n',
        'train.py': 'import config\nfrom configlib.keys import KeyTable\n',
        'tests/__init__.py': '', 'tests/helpers.py': '',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    bad = import_graph(str(tmp_path))
    assert find_cycle(bad) in (['config', 'utils.compat', 'config'], ['utils.compat', 'config', 'utils.compat'])
    assert offenders(bad, 'utils', {'config'}) == [('utils.compat', 'config')]
    assert offenders(bad, 'modeling', {'config'}) == [('modeling.rcnn', 'config')]
    assert offenders(bad, 'bench', {'tests'}) == [('bench.x', 'tests.helpers')]
    assert configlib_offenders(bad) == [('configlib.keys', 'config'), ('train', 'configlib.keys')]
