"""End-to-end runs of the Snakemake workflow on a tiny config in a temporary directory."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from tests.conftest import CLASSES, HEADLINE, TINY, run_snakemake

# The tiny run's folds (one repeat).
FOLDS = TINY["cv"]["folds"]

PROBS = [f"prob_{c}" for c in CLASSES]

pytestmark = pytest.mark.workflow

METADATA_ONLY = {**TINY, "combinations": [["metadata"]]}


def read(run, path):
    return pd.read_csv(run / "results" / path, sep="\t")


@pytest.mark.xdist_group("tiny_run")
def test_folds_and_fold_probabilities_follow_the_contract(tiny_run):
    folds = read(tiny_run, "folds.tsv")
    assert list(folds.columns) == ["id", "group", "label", "repeat", "fold"]
    assert folds.groupby(["repeat", "group"])["fold"].nunique().max() == 1
    probs = read(tiny_run, "metadata/repeat1/fold2/probs.tsv")
    assert list(probs.columns) == ["id", "split", *PROBS]
    assert (tiny_run / "results/metadata/repeat1/fold2/model.skops").is_file()
    metrics = json.loads(
        (tiny_run / "results/fusion/metadata/repeat1/fold1/metrics.json").read_text()
    )
    assert (metrics["combination"], metrics["repeat"], metrics["fold"]) == ("metadata", 1, 1)


@pytest.mark.xdist_group("tiny_run")
def test_headline_rows_hold_their_intervals_and_fit_kappa(tiny_run):
    headline = read(tiny_run, "fusion_results.tsv")
    assert headline[["combination", "rows"]].values.tolist() == [
        ["metadata", "complete"],
        ["thermal_map", "complete"],
        ["metadata+thermal_map", "complete"],
        ["metadata+thermal_map", "all"],
    ]
    assert headline.loc[0, ["n_folds", "n_repeats"]].tolist() == [FOLDS, 1]
    # Every interval holds its point estimate.
    metrics = ("kappa", "qwk", "balanced_accuracy", "macro_f1", "auc", "brier", "log_loss", "ece")
    for metric in metrics:
        low, point, high = (headline[f"{metric}_{part}"] for part in ("ci_low", "mean", "ci_high"))
        assert ((low <= point) & (point <= high)).all(), metric
    # The training rows' forest probabilities are out-of-fold: with in-sample ones the gap of
    # the rows with metadata is about 0.7 (docs/ablation.md); out-of-fold it stays near 0 by
    # construction, which this checks. Not a success criterion (docs/evaluation.md).
    assert (headline["gap_mean"].dropna() < 0.2).all()
    # Forests memorise: in-sample kappa is far above the out-of-fold train kappa.
    assert headline.loc[0, "fit_kappa_mean"] > headline.loc[0, "train_kappa_mean"] + 0.3
    assert "| metadata" in (tiny_run / "results/fusion_results.md").read_text()
    # Each image stage says whether its branch learned; the headline counts the folds it did not.
    stages = [
        json.loads(
            (tiny_run / f"results/image/thermal_map/repeat1/fold{fold}/metrics.json").read_text()
        )
        for fold in range(1, FOLDS + 1)
    ]
    not_learned = sum(not stage["learned"] for stage in stages)
    assert all(stage["learned"] != bool(stage["not_learned_reasons"]) for stage in stages)
    assert headline["folds_not_learned"].tolist() == [0, *[not_learned] * 3]
    # The report opens on the run's verdicts and headline.
    front = (tiny_run / "results/report/front_page.rst").read_text()
    assert front.index("Does each fusion add to metadata?") < front.index("Headline")


@pytest.mark.xdist_group("tiny_run")
def test_per_fold_and_out_of_fold_tables_cover_every_partition_and_row(tiny_run):
    per_fold = read(tiny_run, "fusion_results_per_fold.tsv")
    metadata = per_fold[per_fold["combination"] == "metadata"]
    assert metadata[["repeat", "fold"]].values.tolist() == [[1, k] for k in range(1, FOLDS + 1)]
    oof = read(tiny_run, "fusion/metadata/oof.tsv")
    assert list(oof.columns) == ["repeat", "fold", "id", "group", "label", *PROBS]
    folds = read(tiny_run, "folds.tsv")
    headline = read(tiny_run, "fusion_results.tsv")
    assert sorted(oof["id"]) == sorted(folds["id"]) and headline.loc[0, "n_rows"] == len(oof)
    # Each row's out-of-fold prediction comes from the fold that held it out.
    held_out = oof.merge(folds, on=["id", "repeat"], suffixes=("", "_assigned"))
    assert (held_out["fold"] == held_out["fold_assigned"]).all()


@pytest.mark.xdist_group("tiny_run")
def test_comparisons_pair_each_fusion_with_its_members_on_the_same_rows(tiny_run):
    comparisons = read(tiny_run, "comparisons.tsv")
    assert comparisons[["combination", "versus", "family", "rows"]].values.tolist() == [
        ["metadata+thermal_map", "metadata", "primary", "complete"],
        ["metadata+thermal_map", "metadata", "secondary, all visits", "all"],
        ["metadata+thermal_map", "thermal_map", "secondary", "complete"],
    ]
    assert comparisons["primary"].tolist() == [True, False, False]
    assert set(comparisons["verdict"]) <= {"better", "worse", "inconclusive"}
    # Both sides of each comparison are scored on the same rows: the visits with thermal views,
    # or every visit for rows: all.
    fused = read(tiny_run, "fusion/metadata+thermal_map/oof.tsv")
    metadata = read(tiny_run, "fusion/metadata/oof.tsv")
    assert comparisons["n_rows"].tolist() == [len(fused), len(metadata), len(fused)]
    assert len(fused) < len(metadata)


@pytest.mark.xdist_group("tiny_run")
def test_the_analysis_plan_is_written_first_and_recorded_in_provenance(tiny_run):
    plan = json.loads((tiny_run / "results/analysis_plan.json").read_text())
    assert plan["plan"]["primary_family"]["contrasts"] == ["metadata+thermal_map vs metadata"]
    assert (plan["plan"]["alpha"], plan["plan"]["test"]["degrees_of_freedom"]) == (0.05, FOLDS - 1)
    assert plan["earlier"] == []
    written = (tiny_run / "results/analysis_plan.json").stat().st_mtime
    models = [
        *tiny_run.glob("results/metadata/repeat*/fold*/model.skops"),
        *tiny_run.glob("results/image/*/repeat*/fold*/checkpoint.weights.h5"),
    ]
    assert len(models) == 2 * FOLDS and all(written < model.stat().st_mtime for model in models)
    provenance = json.loads((tiny_run / "results/provenance.json").read_text())
    assert provenance["analysis_plan"] == plan
    front = (tiny_run / "results/report/front_page.rst").read_text()
    assert f"Pre-specified in results/analysis_plan.json (written {plan['written']}" in front


@pytest.mark.xdist_group("tiny_run")
def test_rows_all_equals_predicts_scoring_of_the_out_of_fold_member_probabilities(tiny_run):
    from fusion_dag.artifacts import prob_columns
    from fusion_dag.weights import fuse_rows

    columns = prob_columns(CLASSES)
    folds = read(tiny_run, "folds.tsv")
    members = {}
    for member, stage in (("metadata", "metadata"), ("thermal_map", "image/thermal_map")):
        parts = [
            read(tiny_run, f"{stage}/repeat1/fold{k}/probs.tsv").query("split == 'val'")
            for k in range(1, FOLDS + 1)
        ]
        members[member] = pd.concat(parts)[["id", *columns]]
    spec = {"classes": CLASSES, "fusion": {"metadata_weight": 0.7, "weights": None}}
    predicted = fuse_rows(folds, members, ["metadata", "thermal_map"], spec)
    assert set(predicted["members_used"]) == {"metadata", "metadata+thermal_map"}
    truth = predicted["label"].map(CLASSES.index)
    expected = cohen_kappa_score(truth, predicted[columns].to_numpy().argmax(axis=1))
    headline = read(tiny_run, "fusion_results.tsv").set_index(["combination", "rows"])
    row = headline.loc[("metadata+thermal_map", "all")]
    assert row["n_rows"] == len(folds) and row["kappa_mean"] == pytest.approx(expected)
    # On the visits with every member it is the fusion jobs' own scoring.
    fused = read(tiny_run, "fusion/metadata+thermal_map/oof.tsv").set_index("id")[columns]
    complete = predicted.set_index("id").loc[fused.index, columns]
    assert np.abs(complete.to_numpy() - fused.to_numpy()).max() < 1e-5


@pytest.mark.xdist_group("tiny_run")
def test_the_clinical_report_adds_up_to_folds_and_the_prepared_tables(tiny_run):
    folds, samples = read(tiny_run, "folds.tsv"), read(tiny_run, "prepared/samples.tsv")
    view_counts = read(tiny_run, "prepared/view_counts.tsv").set_index("modality")
    flow = read(tiny_run, "report/participants.tsv")
    everyone = flow[flow["repeat"].isna()].set_index(["step", "scope", "label"])["visits"]
    assert everyone[("read", "samples", "all")] == len(samples) == folds["id"].nunique()
    for name in CLASSES:
        assert everyone[("read", "samples", name)] == (samples["label"] == name).sum()
    thermal = view_counts.loc["thermal_map"]
    assert everyone[("without_images", "thermal_map", "all")] == thermal["visits_without_views"]
    assert everyone[("with_images", "thermal_map", "all")] == thermal["visits"]
    per_fold = flow[(flow["scope"] == "folds") & (flow["label"] != "all")]
    counted = per_fold.set_index(["step", "repeat", "fold", "label"])["visits"]
    for (repeat, fold, name), rows in folds.groupby(["repeat", "fold", "label"]):
        assert counted[("validation", repeat, fold, name)] == len(rows)
        same = folds[(folds["repeat"] == repeat) & (folds["label"] == name)]
        assert counted[("training", repeat, fold, name)] == len(same) - len(rows)
    oof = read(tiny_run, "fusion/metadata+thermal_map/oof.tsv")
    fused = flow[(flow["scope"] == "metadata+thermal_map") & (flow["label"] == "all")]
    assert fused.loc[fused["step"] == "validation", "visits"].sum() == len(oof)
    assert fused.loc[fused["step"] == "scored", "visits"].item() == oof["id"].nunique()
    headline = read(tiny_run, "fusion_results.tsv")
    calibration = read(tiny_run, "report/calibration.tsv")
    assert {f"calibration_slope_{c}" for c in CLASSES} <= set(headline.columns)
    assert set(calibration["combination"]) == set(headline["combination"])
    table1 = read(tiny_run, "report/table1.tsv")
    assert {"age", "sex", "label, n (%)", "patients"} <= set(
        table1["variable"].str.split(",").str[0]
    ) | set(table1["variable"])
    curves = read(tiny_run, "report/decision_curves.tsv")
    assert set(curves["decision"]) == {"remodelling", "past_inflammation"}
    assert set(curves["strategy"]) == {"model", "treat_all", "treat_none"}
    subgroups = read(tiny_run, "report/subgroups.tsv")
    assert set(subgroups["column"]) == {"sex", "age", "wound_location"}
    assert subgroups["small"].any()
    for figure in ("flow", "calibration", "decision_curves"):
        assert (tiny_run / f"results/report/{figure}.png").stat().st_size > 0


@pytest.mark.xdist_group("tiny_run")
def test_every_job_writes_its_log(tiny_run):
    for log in [
        "prepare/prepare.log",
        "metadata/repeat1/fold1.log",
        "fusion/metadata/repeat1/fold2.log",
    ]:
        assert (tiny_run / "logs" / log).stat().st_size > 0


def test_metadata_alone_runs_on_a_table_without_image_columns(tmp_path, demo_table):
    table = pd.read_csv(demo_table).drop(columns=["depth_map", "wound_photo"])
    table.to_csv(tmp_path / "clinical.csv", index=False)
    config = {**METADATA_ONLY, "samples": "clinical.csv", "image_dir": "."}
    result = run_snakemake(tmp_path, "--cores", "2", HEADLINE, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    headline = pd.read_csv(tmp_path / "results/fusion_results.tsv", sep="\t")
    assert headline["combination"].tolist() == ["metadata"] and headline.loc[0, "n_folds"] == FOLDS
    assert not (tmp_path / "results/image").exists()


def with_repeated_label_header(table, path):
    """The header repeats ``label``: pandas would read the copy as a feature ``label.1``."""
    text = table.assign(copy=table["label"]).to_csv(index=False)
    path.write_text(text.replace(",copy\n", ",label\n", 1))


def with_cells(column, rows, value):
    def write(table, path):
        table.loc[rows, column] = value
        table.to_csv(path, index=False)

    return write


# Each case: how the table is broken, and the rest of the line after "samples table broken.csv".
@pytest.mark.parametrize(
    ("write", "message"),
    [
        (
            with_cells("label", [2, 7], "Q"),
            ": column 'label' has labels outside classes ['I', 'P', 'R'] ('Q') in data rows 3, 8",
        ),
        (with_repeated_label_header, ": the header repeats column names ('label' in columns 3, "),
        (
            with_cells("age", [4], float("inf")),
            ": feature column 'age' holds infinite values in data rows 5",
        ),
        (None, " does not exist; set 'samples' in the config"),
    ],
    ids=["unknown label", "repeated header", "infinite number", "no such table"],
)
def test_bad_table_stops_before_training_with_one_line(tmp_path, demo_table, write, message):
    if write:
        write(pd.read_csv(demo_table), tmp_path / "broken.csv")
    config = {**METADATA_ONLY, "samples": "broken.csv", "image_dir": str(demo_table.parent)}
    result = run_snakemake(tmp_path, "--cores", "2", "fusion_results", config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"fusion-dag input error: samples table broken.csv{message}" in output
    assert "MissingInputException" not in output and "Traceback" not in output
    assert not (tmp_path / "results/prepared").exists() or not any(
        (tmp_path / "results/prepared").iterdir()
    )
    assert not (tmp_path / "results/metadata").exists()


def test_a_bundle_without_a_manifest_is_one_line_before_anything_runs(tmp_path, demo_table):
    (tmp_path / "copied_bundle").mkdir()
    predict = {"samples": str(demo_table), "bundle": "copied_bundle"}
    config = {**METADATA_ONLY, "predict": predict}
    result = run_snakemake(tmp_path, "--cores", "1", "predict", config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "fusion-dag input error: bundle copied_bundle has no manifest.json; build one with "
        "final_models" in output
    )
    assert "MissingInputException" not in output
    assert not (tmp_path / "results/predict").exists() or not any(
        (tmp_path / "results/predict").iterdir()
    )


def test_a_subgroup_column_the_table_lacks_stops_the_dry_run(tmp_path, demo_table):
    evaluation = {"bootstrap": 100, "confidence": 0.95, "subgroups": ["sex", "shoe_size"]}
    config = {**METADATA_ONLY, "samples": str(demo_table), "image_dir": str(demo_table.parent)}
    result = run_snakemake(tmp_path, "-n", config={**config, "evaluation": evaluation})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Invalid config key 'evaluation.subgroups': ['shoe_size']" in output


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"cv": {"folds": 0, "seed": 42}}, "cv.folds"),
        ({"cv": {"folds": -3, "seed": 42}}, "cv.folds"),
        ({"missing_images": "skip"}, "missing_images"),
        ({"fusion": {"metadata_weight": 1.5}}, "fusion.metadata_weight"),
        ({"colour": "red"}, "(top level)"),
        ({"combinations": [["metadata", "depth"]]}, "combinations"),
        (
            {"evaluation": {"bootstrap": 100, "confidence": 0.95, "decisions": {"x": ["Q"]}}},
            "evaluation.decisions.x",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path, override, key):
    result = run_snakemake(tmp_path, "-n", config={**TINY, **override})
    assert result.returncode != 0
    assert f"Invalid config key '{key}'" in result.stdout + result.stderr


def test_more_folds_than_patients_of_the_rarest_class_stop_the_dry_run(tmp_path, demo_table):
    """Checked at start-up, before any job runs, naming the key, its value, the class and
    its patients."""
    table = pd.read_csv(demo_table, dtype=str, keep_default_na=False)
    keep = table.loc[table["label"] == "R", "patient_id"].unique()[: FOLDS - 1]
    table = table[(table["label"] != "R") | table["patient_id"].isin(keep)]
    table.to_csv(tmp_path / "rare.csv", index=False)
    config = {**METADATA_ONLY, "samples": "rare.csv"}
    result = run_snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    assert (
        f"Invalid config key 'cv.folds': {FOLDS} folds need at least {FOLDS} patients of every "
        f"class, and class R has {FOLDS - 1} in samples table rare.csv"
        in result.stdout
        + result.stderr
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "cv={folds: 0, seed: 42}",
            "Invalid config key 'cv.folds': 0 is less than the minimum of 2",
        ),
        (
            "fusion={metadata_weight: 1.5}",
            "'fusion.metadata_weight': 1.5 is greater than the maximum",
        ),
    ],
)
def test_nested_command_line_values_are_read_as_numbers(tmp_path, override, message):
    """Snakemake passes nested --config values as text; they are checked as numbers."""
    result = run_snakemake(tmp_path, "-n", "--config", override, config=TINY)
    assert result.returncode != 0 and message in result.stdout + result.stderr


def test_keys_naming_two_visits_stop_prepare_and_nothing_trains(tmp_path, demo_table):
    table = pd.read_csv(demo_table, dtype=str, keep_default_na=False)
    copy = table.iloc[[2]].assign(sample_id="P001_V3_again")
    pd.concat([table, copy]).to_csv(tmp_path / "visits.csv", index=False)
    config = {
        **TINY,
        "samples": "visits.csv",
        "image_dir": str(demo_table.parent),
        "modalities": {"thermal_map": {"images": str(demo_table.parent / "thermal_images.csv")}},
        "combinations": [["thermal_map"]],
    }
    result = run_snakemake(tmp_path, "--cores", "2", "fusion_results", config=config)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "fusion-dag input error" in line]
    assert result.returncode != 0 and len(errors) == 1, output[-3000:]
    key = f"{table.loc[2, 'patient_id']}/{int(table.loc[2, 'visit_number'])}"
    assert (
        "the keys ['patient_id', 'visit_number'] (modalities.thermal_map.keys) name more than "
        f"one row: {key} in data rows 3, {len(table) + 1}" in errors[0]
    )
    assert not (tmp_path / "results/image").exists()
    assert not (tmp_path / "results/prepared/images.tsv").exists()
