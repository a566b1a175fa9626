"""The backbone names: one table the schema, the branch builder and the feature cache agree on."""

import importlib
import subprocess
import sys

import yaml

from fusion_dag.backbones import BACKBONES, SMALL_CNN
from tests.conftest import REPO


def test_the_schema_accepts_exactly_the_small_cnn_and_the_table_s_backbones():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    accepted = schema["$defs"]["image_settings"]["properties"]["backbone"]["enum"]
    assert set(accepted) == {SMALL_CNN, *BACKBONES}


def test_each_backbone_is_a_keras_application_with_its_own_preprocessing():
    import keras

    for name, module in BACKBONES.items():
        assert callable(getattr(keras.applications, name)), name
        preprocessing = importlib.import_module(f"keras.applications.{module}")
        assert callable(preprocessing.preprocess_input), module


def test_reading_the_names_loads_no_tensorflow():
    """The feature cache's checks import this module before a job's log captures TensorFlow's
    start-up messages; importing Keras here would print them to the terminal."""
    code = (
        "import sys; import fusion_dag.backbones; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO / "workflow/scripts")},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
