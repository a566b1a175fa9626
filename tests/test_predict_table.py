"""A new table for prediction checked against the bundle's spec (the end-to-end cases, on a
finished bundle, are in test_predict.py)."""

import pandas as pd
import pytest

from fusion_dag.artifacts import InputError
from fusion_dag.predict_table import typed_column


def test_a_numeric_feature_with_text_is_one_error_naming_rows():
    table = pd.DataFrame({"age": ["61", "seventy", "3,5"]})
    with pytest.raises(InputError, match=r"'age' was numeric in training.*'seventy'.*rows 2"):
        typed_column(table, {"name": "age", "type": "numeric"}, "new.csv")
    text = typed_column(pd.DataFrame({"sex": [" M", "1"]}), {"name": "sex", "type": "text"}, "x")
    assert text.tolist() == ["M", "1"]
    infinite = pd.DataFrame({"age": ["61", "inf"]})
    with pytest.raises(InputError, match="'age' holds infinite values in data rows 2"):
        typed_column(infinite, {"name": "age", "type": "numeric"}, "new.csv")
