"""Reading tables without changing them silently: headers, missing cells, numbers, patients."""

import logging

import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import InputError
from fusion_dag.tables import (
    clean_groups,
    feature_column,
    normalise_labels,
    read_table,
)


def write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_repeated_header_name_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, "id,label,age,label\na,I,3,I\n")
    with pytest.raises(InputError, match=r"repeats column names \('label' in columns 2, 4\)"):
        read_table(path)


def test_a_name_repeated_only_by_surrounding_spaces_is_refused_too(tmp_path):
    path = write(tmp_path, "id,label,label \na,I,I\n")
    with pytest.raises(InputError, match="'label' in columns 2, 3"):
        read_table(path)


def test_pandas_missing_words_are_data_unless_listed(tmp_path):
    path = write(tmp_path, "id,smoking,age\na,None,3\nb,NA,4\nc,null,\nd,n/a,5\n")
    table = read_table(path)
    assert table["smoking"].tolist() == ["None", "NA", "null", "n/a"]
    assert table["age"].isna().tolist() == [False, False, True, False]
    listed = read_table(path, na_values=["NA", "n/a"])
    assert listed["smoking"].isna().tolist() == [False, True, False, True]


def test_header_names_lose_surrounding_spaces(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        table = read_table(write(tmp_path, "id, label ,age\na,I,3\n"))
    assert list(table.columns) == ["id", "label", "age"]
    assert "header names read without surrounding spaces" in caplog.text


def test_spreadsheet_padding_is_dropped_and_rows_keep_their_numbers(tmp_path, caplog):
    """Two empty trailing columns and an empty middle row, as Excel exports them."""
    path = write(tmp_path, "id,label,age,,\na,I,3,,\n,,,,\nb,P,x,,\n")
    with caplog.at_level(logging.INFO):
        table = read_table(path)
    assert list(table.columns) == ["id", "label", "age"]
    assert "dropped 2 columns with no header and no data" in caplog.text
    assert "dropped 1 rows with no data (data rows 2)" in caplog.text
    # The row after the empty one is still named as data row 3.
    with pytest.raises(InputError, match="in data rows 3"):
        normalise_labels(table["age"], ["3", "4"], "age", path)


def test_a_column_with_data_but_no_header_is_refused(tmp_path):
    with pytest.raises(InputError, match="column 3 has no header but holds data"):
        read_table(write(tmp_path, "id,label,\na,I,7\n"))


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("", "t.csv", "is empty: it has no header and no rows"),
        ("id\tlabel\na\tI\n", "t.csv", "looks tab-separated: name it .tsv"),
    ],
)
def test_empty_and_mislabelled_files_say_what_they_are(tmp_path, text, name, message):
    with pytest.raises(InputError, match=message):
        read_table(write(tmp_path, text, name))


def test_a_folder_given_as_the_table_is_named(tmp_path):
    (tmp_path / "visits.csv").mkdir()
    with pytest.raises(InputError, match="visits.csv is a folder, not a table file"):
        read_table(tmp_path / "visits.csv")


def test_infinite_numbers_are_an_error_naming_column_and_rows():
    column = pd.Series(["1.5", "inf", "2", "-Infinity"])
    with pytest.raises(InputError, match="'bmi' holds infinite values in data rows 2, 4"):
        feature_column(column, "bmi", "t.csv")


def test_a_few_stray_texts_in_a_numeric_column_warn_and_are_read_as_missing(caplog):
    cells = [str(v) for v in range(20, 38)] + ["#DIV/0!", ">90"]
    with caplog.at_level(logging.WARNING):
        column = feature_column(pd.Series(cells), "age", "t.csv")
    assert column.dtype == float and column.isna().tolist() == [False] * 18 + [True, True]
    assert column.iloc[:18].tolist() == [float(v) for v in range(20, 38)]
    assert "'age' is numeric but for 2 cells ('#DIV/0!', '>90' in data rows 19, 20)" in (
        caplog.text
    )


def test_a_mostly_text_column_stays_text_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        column = feature_column(pd.Series(["M", "F", "F", "3"]), "sex", "t.csv")
    assert column.dtype == object and column.tolist() == ["M", "F", "F", "3"]
    assert caplog.text == ""


def test_a_patient_number_written_two_ways_is_one_patient(caplog):
    table = pd.DataFrame({"patient": ["2", "2.0", "3", "007", "7"]})
    with caplog.at_level(logging.WARNING):
        groups = clean_groups(table, "patient", "t.csv")
    assert groups.tolist() == ["2", "2", "3", "007", "007"]
    assert "writes 2 patient numbers more than one way" in caplog.text
    text_ids = pd.DataFrame({"patient": ["P2", "P2.0"]})
    assert clean_groups(text_ids, "patient", "t.csv").tolist() == ["P2", "P2.0"]


def test_numeric_labels_match_numeric_classes_written_another_way():
    labels = normalise_labels(pd.Series(["1.0", "2", " 3 "]), ["1", "2", "3"], "grade", "t.csv")
    assert labels.tolist() == ["1", "2", "3"]
    with pytest.raises(InputError, match=r"outside classes \['1', '2', '3'\] \('4.0'\)"):
        normalise_labels(pd.Series(["4.0"]), ["1", "2", "3"], "grade", "t.csv")


def test_parquet_repeats_nothing_and_missing_words_stay_data(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"id": ["a", "b"], "smoking": ["NA", None], "age": [1.0, np.nan]}).to_parquet(path)
    table = read_table(path)
    assert table["smoking"].tolist() == ["NA", None]
    assert read_table(path, na_values=["NA"])["smoking"].isna().all()


def test_a_trailing_separator_and_blank_lines_keep_columns_and_row_numbers(tmp_path):
    """Spreadsheets end rows with a separator; a blank line still counts as a row of the file."""
    path = write(tmp_path, "id,label,age\na,I,3,\n\nb,Q,4,\n")
    table = read_table(path)
    assert list(table.columns) == ["id", "label", "age"]
    assert table["id"].tolist() == ["a", "b"] and table["age"].tolist() == ["3", "4"]
    with pytest.raises(InputError, match=r"\('Q'\) in data rows 3;"):
        normalise_labels(table["label"], ["I", "P"], "label", path)


def test_a_parquet_files_own_index_is_not_the_row_number(tmp_path):
    path = tmp_path / "t.parquet"
    frame = pd.DataFrame({"id": ["a", "b"], "label": ["I", "Q"]}, index=["x", "y"])
    frame.to_parquet(path)
    table = read_table(path)
    with pytest.raises(InputError, match=r"\('Q'\) in data rows 2;"):
        normalise_labels(table["label"], ["I", "P"], "label", path)


def test_decimal_commas_are_numbers_cell_by_cell_beside_stray_text(caplog):
    cells = ["36,5", "37", "38,25"] * 4 + ["#DIV/0!"]
    with caplog.at_level(logging.WARNING):
        column = feature_column(pd.Series(cells), "temperature", "t.csv")
    assert column.dtype == float
    assert column.iloc[:3].tolist() == [36.5, 37.0, 38.25] and pd.isna(column.iloc[-1])
    assert "for 1 cells ('#DIV/0!'" in caplog.text


def test_numbers_are_compared_exactly_and_only_when_written_plainly():
    long_ids = pd.DataFrame({"patient": ["12345678901234567890", "12345678901234567891"]})
    assert clean_groups(long_ids, "patient", "t.csv").nunique() == 2
    with pytest.raises(InputError, match=r"\('1_0'\)"):
        normalise_labels(pd.Series(["1_0"]), ["10", "20"], "grade", "t.csv")
    with pytest.raises(InputError, match=r"\('1e1'\)"):
        normalise_labels(pd.Series(["1e1"]), ["10", "20"], "grade", "t.csv")


def test_rows_are_numbered_as_the_files_rows_without_an_id_column(tmp_path):
    from fusion_dag.tables import clean_ids

    table = read_table(write(tmp_path, "label,age\nI,3\n,\nP,4\n"))
    assert clean_ids(table, None, "t.csv").tolist() == ["1", "3"]


def test_a_bundle_made_before_na_values_reads_pandas_missing_words(tmp_path):
    path = write(tmp_path, "id,smoking\na,NA\nb,yes\n")
    assert read_table(path, na_values=None)["smoking"].isna().tolist() == [True, False]
    assert read_table(path)["smoking"].isna().tolist() == [False, False]


def test_a_txt_table_is_split_by_whichever_separator_its_header_uses(tmp_path):
    assert list(read_table(write(tmp_path, "id,label\na,I\n", "t.txt")).columns) == ["id", "label"]
    assert list(read_table(write(tmp_path, "id\tlabel\na\tI\n", "u.txt")).columns) == [
        "id",
        "label",
    ]
