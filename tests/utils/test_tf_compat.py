"""utils/tf_compat.py's choice of Keras: tensorpack's layers need the legacy Keras 2 (tf_keras)
under TensorFlow >= 2.16, and tf.keras is resolved once per process. Each case runs in a fresh
interpreter, because the choice cannot be undone inside one."""
import os
import subprocess
import sys

import pytest

from utils.tf_compat import TF_VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERAS_3_ARRIVED = (2, 16)


def run_python(code, **env):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    environment.pop('TF_USE_LEGACY_KERAS', None)   # as a user's shell: utils.tf_compat sets it
    environment.update(env)
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=environment,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


# what tensorpack's l2 regularizer (the weight decay of every model) computes on a v1 variable:
# Keras 3 rejects the variable's dtype, float32_ref
WEIGHT_DECAY_ON_A_VARIABLE = '''
from tensorpack.models import l2_regularizer
w = tf.get_variable('W', shape=[2], initializer=tf.ones_initializer())
print('decay', l2_regularizer(0.5)(w).dtype.base_dtype.name)
'''


def test_project_first_then_tensorpack_gives_tensorpack_a_working_keras():
    result = run_python('from utils.tf_compat import tf\n' + WEIGHT_DECAY_ON_A_VARIABLE)
    assert result.returncode == 0, result.stdout
    assert 'decay float32' in result.stdout


@pytest.mark.skipif(TF_VERSION < KERAS_3_ARRIVED, reason='TensorFlow {}.{} has only Keras 2'.format(*TF_VERSION))
def test_tensorpack_imported_first_is_a_clear_import_error():
    result = run_python('import tensorpack\nimport utils.tf_compat\n')
    assert result.returncode != 0
    assert 'tf.keras is Keras 3' in result.stdout
    assert 'import utils.tf_compat (or any module of this project) before' in result.stdout


@pytest.mark.skipif(TF_VERSION < KERAS_3_ARRIVED, reason='TensorFlow {}.{} has only Keras 2'.format(*TF_VERSION))
def test_legacy_keras_turned_off_by_the_user_is_a_clear_import_error():
    result = run_python('import utils.tf_compat\n', TF_USE_LEGACY_KERAS='0')
    assert result.returncode != 0
    assert "TF_USE_LEGACY_KERAS turns it off" in result.stdout
    assert "(it is '0')" in result.stdout


@pytest.mark.skipif(TF_VERSION >= KERAS_3_ARRIVED, reason='the order matters from TensorFlow 2.16 on')
def test_before_keras_3_the_import_order_does_not_matter():
    result = run_python('import tensorpack\nfrom utils.tf_compat import tf\n' + WEIGHT_DECAY_ON_A_VARIABLE)
    assert result.returncode == 0, result.stdout
    assert 'decay float32' in result.stdout
