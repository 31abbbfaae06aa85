"""modeling/choices.py: the TF-free lists config.py validates against match the real tables."""
import os
import subprocess
import sys

from modeling import backbone, choices, model_box, model_fpn, model_frcnn, model_mrcnn


def test_head_names_are_the_head_tables():
    assert set(choices.BOX_HEAD_NAMES) == set(model_frcnn.BOX_HEADS)
    assert set(choices.MASK_HEAD_NAMES) == set(model_mrcnn.MASK_HEADS)


def test_norms_freeze_stages_proposal_modes_and_layouts_are_the_implemented_ones():
    assert set(choices.NORMS) == set(backbone.NORMS)
    assert set(choices.FREEZE_AT_VALUES) == set(backbone.FREEZE_AT_VALUES)
    assert set(choices.PROPOSAL_MODES) == set(model_fpn.PROPOSAL_MODES)
    assert set(choices.DATA_FORMATS) == set(backbone.DATA_FORMATS) == set(model_box.DATA_FORMATS)


def test_config_validation_imports_no_tensorflow():
    code = 'import sys, config; config.validate_config(); print("tensorflow" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.strip() == 'False'
