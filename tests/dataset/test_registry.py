"""DatasetRegistry: lazy factories, re-registration, metadata (plain and lazy), error messages."""
import pytest

from dataset import DatasetRegistry, DatasetSplit


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    """Each test gets its own registry; the process-wide one is restored afterwards."""
    monkeypatch.setattr(DatasetRegistry, '_registry', {})
    monkeypatch.setattr(DatasetRegistry, '_metadata', {})
    monkeypatch.setattr(DatasetRegistry, '_prefixes', {})


class _Split(DatasetSplit):
    def __init__(self, tag):
        self.tag = tag


def test_register_is_lazy_and_get_builds_a_new_split():
    calls = []

    def factory():
        calls.append(1)
        return _Split('a')

    DatasetRegistry.register('toy_a', factory)
    assert calls == []
    split = DatasetRegistry.get('toy_a')
    assert isinstance(split, _Split) and split.tag == 'a'
    assert DatasetRegistry.names() == ['toy_a']


def test_registering_again_replaces():
    DatasetRegistry.register('toy', lambda: _Split('old'))
    DatasetRegistry.register('toy', lambda: _Split('new'))
    assert DatasetRegistry.get('toy').tag == 'new'


def test_register_rejects_non_callable():
    with pytest.raises(TypeError, match='toy'):
        DatasetRegistry.register('toy', _Split('x'))


def test_unknown_name_lists_registered_names():
    DatasetRegistry.register('toy_a', lambda: _Split('a'))
    DatasetRegistry.register('toy_b', lambda: _Split('b'))
    with pytest.raises(KeyError, match="'toy_c'.*toy_a, toy_b"):
        DatasetRegistry.get('toy_c')


def test_metadata_and_its_errors():
    DatasetRegistry.register_metadata('toy', 'class_names', ['BG', 'x'])
    DatasetRegistry.register_metadata('toy', 'note', 1)
    assert DatasetRegistry.get_metadata('toy', 'class_names') == ['BG', 'x']
    with pytest.raises(KeyError, match="'colors'.*class_names, note"):
        DatasetRegistry.get_metadata('toy', 'colors')
    with pytest.raises(KeyError, match="'other'.*toy"):
        DatasetRegistry.get_metadata('other', 'class_names')
    DatasetRegistry.register_metadata('toy', 'note', 2)
    assert DatasetRegistry.get_metadata('toy', 'note') == 2


def test_lazy_metadata_is_evaluated_once_on_first_use():
    calls = []

    def read_names():
        calls.append(1)
        return ['BG', 'a', 'b']

    DatasetRegistry.register_lazy_metadata('toy', 'class_names', read_names)
    assert calls == []
    assert DatasetRegistry.get_metadata('toy', 'class_names') == ['BG', 'a', 'b']
    assert DatasetRegistry.get_metadata('toy', 'class_names') == ['BG', 'a', 'b']
    assert calls == [1]


def test_lazy_metadata_failure_is_not_cached():
    outcomes = [FileNotFoundError('missing json'), ['BG', 'a']]

    def read_names():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    DatasetRegistry.register_lazy_metadata('toy', 'class_names', read_names)
    with pytest.raises(FileNotFoundError):
        DatasetRegistry.get_metadata('toy', 'class_names')
    assert DatasetRegistry.get_metadata('toy', 'class_names') == ['BG', 'a']
