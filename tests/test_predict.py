"""Final models, the model bundle and ``predict``: an external validation on held-out patients.

The demo's first 120 patients train the final models (``snakemake predict`` builds them, then
the bundle); the other 40 patients, with labels, are the new table.
"""

import shutil

import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import InputError
from fusion_dag.bundle import BundleError, checkpoint_files, load_bundle
from fusion_dag.demo import write_demo
from fusion_dag.predict import prediction_summary, score_table
from fusion_dag.predict_table import new_samples
from fusion_dag.report import external_metrics
from tests.conftest import TINY, run_snakemake, scheduled_jobs

pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("predict")]

COMBINATION = "metadata+depth_map+thermal_map"
PROBS = ["prob_I", "prob_P", "prob_R"]
# Metadata fused with thermal maps (3 channels) and 16-bit depth maps (some visits have none).
EXTERNAL = {
    **TINY,
    "samples": "train.csv",
    "image_dir": ".",
    "modalities": {
        "thermal_map": {"images": "thermal_images.csv", "channels": 3, "size": 24},
        # The training before issue 36 (no standardisation, no warm-up, average pooling): in 3
        # epochs at 24 px its final depth branch predicts one class for every row (measured),
        # which the bundle tests below need.
        "depth_map": {
            "column": "depth_map",
            "channels": 1,
            "value_range": [4100, 4500],
            "standardize": False,
            "warmup_epochs": 0,
            "pooling": "average",
        },
    },
    "combinations": [COMBINATION.split("+")],
    # The only combination run is the primary (evaluation.primary names a combination run).
    "evaluation": {"bootstrap": 200, "confidence": 0.95, "primary": COMBINATION},
    # One image table for both: the new visits' thermal views (the training patients' rows
    # are image rows without a visit there, as the new patients' rows are in training).
    "predict": {"samples": "new.csv", "images": {"thermal_map": "thermal_images.csv"}},
    # Three epochs at 24 px: the depth branch stops at its first plateau (one class for every
    # row). These tests are about the bundle and predict, so the bundle takes it; the refusal
    # has its own test below.
    "final": {"allow_collapsed": True},
}
IMAGE_TABLES = {"thermal_map": "thermal_images.csv"}


def members_present(workdir, table):
    """What each row of ``table`` has: metadata, a depth map, thermal views."""
    views = pd.read_csv(workdir / "thermal_images.csv", dtype=str)
    keys = set(zip(views["patient_id"], views["visit_number"].astype(int), strict=True))
    visits = zip(table["patient_id"], table["visit_number"].astype(int), strict=True)
    has_thermal = np.array([key in keys for key in visits])
    return table["depth_map"].notna().to_numpy(), has_thermal


@pytest.fixture(scope="module")
def external_run(tmp_path_factory):
    """The demo split by patient (120 train, 40 new) and a finished ``predict`` run."""
    workdir = tmp_path_factory.mktemp("external")
    write_demo(workdir / "demo.csv", patients=160, seed=7)
    table = pd.read_csv(workdir / "demo.csv", dtype=str)
    patients = sorted(table["patient_id"].unique())
    new = table["patient_id"].isin(patients[120:])
    table[~new].to_csv(workdir / "train.csv", index=False)
    table[new].to_csv(workdir / "new.csv", index=False)
    result = run_snakemake(workdir, "--cores", "2", "predict", config=EXTERNAL)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return workdir


def test_every_new_row_is_predicted_with_the_members_it_has(external_run):
    new = pd.read_csv(external_run / "new.csv", dtype=str)
    predictions = pd.read_csv(external_run / "results/predict/predictions.tsv", sep="\t")
    assert predictions["id"].tolist() == new["sample_id"].tolist()
    # The 40 new patients never trained the bundle.
    assert predictions["seen_in_training"].eq(False).all()
    assert predictions[PROBS].notna().all().all()
    assert np.allclose(predictions[PROBS].sum(axis=1), 1.0)
    has_depth, has_thermal = members_present(external_run, new)
    no_depth = ~has_depth & has_thermal
    assert no_depth.any() and has_depth.any() and not has_thermal.all()
    used = predictions["members_used"]
    assert (used[no_depth] == "metadata+thermal_map").all()
    assert (used[has_depth & has_thermal] == COMBINATION).all()
    assert (used[has_depth & ~has_thermal] == "metadata+depth_map").all()
    assert predictions.loc[~has_depth, "depth_map_prob_I"].isna().all()
    # A visit without a depth map is scored as metadata + thermal map is in training: 0.7/0.3.
    row = predictions[no_depth].iloc[0]
    expected = [0.7 * row[f"metadata_{c}"] + 0.3 * row[f"thermal_map_{c}"] for c in PROBS]
    assert np.allclose(row[PROBS].to_numpy(dtype=float), expected)
    assert (
        predictions["predicted"]
        == np.array(["I", "P", "R"])[predictions[PROBS].to_numpy().argmax(axis=1)]
    ).all()


def test_labelled_new_table_gets_metrics_with_patient_intervals(external_run):
    metrics = pd.read_csv(external_run / "results/predict/metrics.tsv", sep="\t")
    assert metrics["predictor"].tolist() == [COMBINATION, "metadata", "depth_map", "thermal_map"]
    fused = metrics.iloc[0]
    assert fused["n_rows"] == len(pd.read_csv(external_run / "new.csv"))
    assert fused["n_groups"] == 40 and fused["n_unscored"] == 0 and fused["n_seen"] == 0
    for metric in ("kappa", "qwk", "balanced_accuracy", "macro_f1", "ece"):
        assert metrics[f"{metric}_ci_low"].le(metrics[metric]).all()
        assert metrics[metric].le(metrics[f"{metric}_ci_high"]).all()
    assert metrics.set_index("predictor").loc["depth_map", "n_unscored"] > 0
    summary = (external_run / "results/predict/summary.md").read_text()
    assert "patient-bootstrap" in summary and "metadata+thermal_map" in summary
    assert "WARNING" not in summary and "never saw" in summary


def test_final_fusion_keeps_the_v3_contract(external_run):
    log = (external_run / f"logs/final_fusion/{COMBINATION}.log").read_text()
    for modality in ("depth_map", "thermal_map"):
        assert f"Loaded weights for layer: {modality}_conv1" in log
        assert f"Frozen layer: {modality}_conv1" in log
        assert f"Frozen {modality} branch reproduces the image stage on" in log
    assert "Fusion weights: RF=0.70, Image=0.30" in log
    # Final models train on every labelled row: no cross-validation job ran.
    assert not (external_run / "results/folds.tsv").exists()
    assert not (external_run / "results/image").exists()


def bundle_predictions(bundle, table, workdir):
    """Predict ``table`` in this process with ``bundle`` (what the predict job does)."""
    spec = load_bundle(bundle)
    members = spec["combinations"][COMBINATION]
    tables = {m: workdir / t for m, t in IMAGE_TABLES.items()}
    samples, images = new_samples(table, workdir, spec, members, tables)
    return score_table(bundle, spec, members, samples, images, (1, 1))


def test_predicting_the_training_table_reproduces_the_final_fusion(external_run):
    bundle = external_run / "results/final/bundle"
    predictions = bundle_predictions(bundle, external_run / "train.csv", external_run)
    final = pd.read_csv(external_run / f"results/final/fusion/{COMBINATION}/probs.tsv", sep="\t")
    both = final.merge(predictions, on="id", suffixes=("_final", ""))
    assert len(both) == len(final) > 300
    difference = np.abs(both[PROBS].to_numpy() - both[[f"{c}_final" for c in PROBS]].to_numpy())
    assert difference.max() <= 1e-6
    # Every visit's patient trained the bundle: marked, and no metric presented as performance.
    assert predictions["seen_in_training"].eq(True).all()
    members = COMBINATION.split("+")
    evaluation = {**EXTERNAL["evaluation"], "bootstrap": 20}
    metrics = external_metrics(predictions, members, ["I", "P", "R"], evaluation, 0)
    assert metrics.empty
    summary = prediction_summary(predictions, metrics, members, "bundle")
    assert f"WARNING: {len(predictions)} rows of 120 patients were in the bundle's" in summary
    assert "No metrics: every labelled visit's patient trained the bundle" in summary
    assert "kappa" not in summary


def test_a_copied_bundle_predicts_identically(external_run, tmp_path):
    copy = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(external_run / "results/final/bundle", copy)
    moved = bundle_predictions(copy, external_run / "new.csv", external_run)
    here = bundle_predictions(
        external_run / "results/final/bundle", external_run / "new.csv", external_run
    )
    pd.testing.assert_frame_equal(moved, here)
    # And the predict job wrote the same (its table holds float32 values as text).
    written = pd.read_csv(external_run / "results/predict/predictions.tsv", sep="\t")
    columns = [c for c in written.columns if "prob_" in c]
    assert np.allclose(moved[columns], written[columns], atol=1e-7, equal_nan=True)
    assert moved["members_used"].tolist() == written["members_used"].tolist()


def test_a_tampered_bundle_is_refused_naming_the_file(external_run, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(external_run / "results/final/bundle", copy)
    checkpoint = copy / checkpoint_files("thermal_map")[0]
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"thermal_map/checkpoint.weights.h5 does not match"):
        load_bundle(copy)


def test_swapped_checkpoints_are_refused_even_with_matching_hashes(external_run, tmp_path):
    """The manifest's hashes rewritten to fit swapped files: the sidecars still name them."""
    import json

    copy = tmp_path / "bundle"
    shutil.copytree(external_run / "results/final/bundle", copy)
    thermal, depth = checkpoint_files("thermal_map"), checkpoint_files("depth_map")
    for a, b in zip(thermal, depth, strict=True):
        (copy / a).rename(copy / "swap")
        (copy / b).rename(copy / a)
        (copy / "swap").rename(copy / b)
    manifest = json.loads((copy / "manifest.json").read_text())
    for a, b in zip(thermal, depth, strict=True):
        manifest["files"][a], manifest["files"][b] = manifest["files"][b], manifest["files"][a]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"checkpoint.json does not match.*modality"):
        load_bundle(copy)


def test_a_hand_edited_manifest_is_refused(external_run, tmp_path):
    """Classes reordered by hand would relabel every prediction: the spec's hash refuses it."""
    import json

    copy = tmp_path / "bundle"
    shutil.copytree(external_run / "results/final/bundle", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["classes"] = manifest["classes"][::-1]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest.json was edited: its model spec"):
        load_bundle(copy)
    # Its hash removed too: refused as a wrong hash is, never skipped.
    del manifest["spec_sha256"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest.json records no spec_sha256: its model spec"):
        load_bundle(copy)


def test_a_new_image_table_giving_no_view_is_one_error_naming_its_key(external_run, tmp_path):
    """Not a TypeError in the box checks nor Keras scoring 0 views in the predictions job."""
    spec = load_bundle(external_run / "results/final/bundle")
    members = spec["combinations"][COMBINATION]
    views = pd.read_csv(external_run / "thermal_images.csv", dtype=str)
    views.iloc[:0].to_csv(tmp_path / "header.csv", index=False)
    views.assign(patient_id="X" + views["patient_id"]).to_csv(tmp_path / "x.csv", index=False)
    for table, message in [
        ("header.csv", r"header.csv \(predict.images.thermal_map\) has a header but no data rows"),
        ("x.csv", r"x.csv: none of its \d+ rows names a visit of samples table .*new.csv"),
    ]:
        with pytest.raises(InputError, match=message):
            new_samples(
                external_run / "new.csv",
                external_run,
                spec,
                members,
                {"thermal_map": tmp_path / table},
            )
    # A table for a modality the bundle does not read from one (a typo) is named, not ignored.
    with pytest.raises(InputError, match=r"the bundle reads no thermal from an image table \(its"):
        new_samples(external_run / "new.csv", external_run, spec, members, {"thermal": "x.csv"})


def test_missing_words_and_their_ids_survive_into_the_predictions(external_run, tmp_path):
    """An id 'NA', a patient 'null' and a category 'None' are data through both predict jobs."""
    from fusion_dag.artifacts import write_tsv
    from fusion_dag.predict_table import read_new_samples

    table = pd.read_csv(external_run / "new.csv", dtype=str, keep_default_na=False).head(6)
    table.loc[0, "sample_id"], table.loc[1, "patient_id"], table.loc[2, "sex"] = (
        "NA",
        "null",
        "None",
    )
    table.to_csv(tmp_path / "new.csv", index=False)
    spec = load_bundle(external_run / "results/final/bundle")
    members = spec["combinations"][COMBINATION]
    tables = {m: external_run / t for m, t in IMAGE_TABLES.items()}
    samples, images = new_samples(tmp_path / "new.csv", external_run, spec, members, tables)
    write_tsv(samples, tmp_path / "samples.tsv")
    again = read_new_samples(tmp_path / "samples.tsv", spec)
    assert again.loc[0, "id"] == "NA" and again.loc[1, "group"] == "null"
    assert again.loc[2, "sex"] == "None"
    predictions = score_table(
        external_run / "results/final/bundle", spec, members, again, images, (1, 1)
    )
    assert predictions["id"].tolist() == samples["id"].tolist()


def test_a_manifest_that_is_not_json_is_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text("{\n  classes: [I, P, R]\n")
    with pytest.raises(BundleError, match="manifest.json is not JSON: Expecting property name"):
        load_bundle(tmp_path)


def test_a_bundle_path_that_is_missing_or_a_file_says_so(tmp_path):
    with pytest.raises(BundleError, match="nowhere does not exist; set predict.bundle"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(BundleError, match="is a file; set predict.bundle to the folder"):
        load_bundle(tmp_path / "manifest.json")


def test_a_new_table_without_the_bundles_id_column_says_to_add_it(external_run, tmp_path):
    table = pd.read_csv(external_run / "new.csv", dtype=str).drop(columns=["sample_id"])
    table.to_csv(tmp_path / "new.csv", index=False)
    spec = load_bundle(external_run / "results/final/bundle")
    members = spec["combinations"][COMBINATION]
    tables = {m: external_run / t for m, t in IMAGE_TABLES.items()}
    with pytest.raises(InputError, match="add it to the new table: the bundle's models"):
        new_samples(tmp_path / "new.csv", external_run, spec, members, tables)
    with pytest.raises(InputError, match=r"'predict.images': the bundle reads thermal_map from"):
        new_samples(external_run / "new.csv", external_run, spec, members)


def test_the_bundle_records_each_modalitys_image_layout(external_run):
    spec = load_bundle(external_run / "results/final/bundle")
    thermal = spec["modalities"]["thermal_map"]
    assert thermal["keys"] == ["patient_id", "visit_number"] and thermal["path"] == "file"
    assert thermal["box"] == ["x_min", "y_min", "x_max", "y_max"]
    assert thermal["box_margin"] == 0.25 and thermal["aggregation"] == "mean"
    assert spec["modalities"]["depth_map"]["column"] == "depth_map"


def test_the_manifest_records_the_collapsed_final_branches_it_was_allowed_to_bundle(external_run):
    """The fixture's 3-epoch final depth branch predicts one class for every training row
    (measured); with final.allow_collapsed the bundle takes it and says so."""
    from fusion_dag.bundle import collapsed_branches

    final = external_run / "results/final/image"
    probs = {
        m: pd.read_csv(final / m / "probs.tsv", sep="\t") for m in ("thermal_map", "depth_map")
    }
    collapsed = collapsed_branches(probs, ["I", "P", "R"])
    assert collapsed, "no final branch collapsed: the override path is no longer exercised here"
    checks = load_bundle(external_run / "results/final/bundle")["final_checks"]
    assert checks == {"collapsed_branches": collapsed, "allow_collapsed": True}
    log = (external_run / "logs/bundle/bundle.log").read_text()
    assert f"Final image branch {next(iter(collapsed))} predicts class" in log


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["age"]), "no feature column 'age'"),
        (lambda t: t.assign(label=t["label"].replace("R", "X")), "labels outside classes"),
        (
            lambda t: t.assign(depth_map="../" + t["depth_map"]),
            "points outside image_dir",
        ),
    ],
    ids=["missing feature", "unknown label", "image outside image_dir"],
)
def test_bad_new_table_is_one_error_and_no_predictions(external_run, tmp_path, change, message):
    workdir = tmp_path / "run"
    shutil.copytree(external_run, workdir, symlinks=True)
    shutil.rmtree(workdir / "results/predict")
    change(pd.read_csv(workdir / "new.csv", dtype=str)).to_csv(workdir / "bad.csv", index=False)
    config = {**EXTERNAL, "predict": {"samples": "bad.csv", "images": IMAGE_TABLES}}
    result = run_snakemake(workdir, "--cores", "1", "predict", config=config)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "fusion-dag input error" in line]
    assert len(errors) == 1 and message in errors[0] and "bad.csv" in errors[0], result.stderr
    assert not (workdir / "results/predict/predictions.tsv").exists()
    assert not (workdir / "results/predict/samples.tsv").exists()


def test_fusion_and_fold_changes_retrain_no_final_model(external_run):
    config = {**EXTERNAL, "fusion": {"metadata_weight": 0.6, "weights": None}}
    result = run_snakemake(external_run, "-n", "predict", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = scheduled_jobs(result.stdout + result.stderr)
    assert "final_image" not in jobs and "final_metadata" not in jobs
    assert jobs["final_fusion"] == 1 and jobs["bundle"] == 1 and jobs["predictions"] == 1
    # Final models do not depend on the folds.
    config = {**EXTERNAL, "cv": {"folds": 2, "repeats": 3, "seed": 42}}
    result = run_snakemake(external_run, "-n", "predict", config=config)
    jobs = scheduled_jobs(result.stdout + result.stderr)
    assert not {"final_image", "final_metadata", "final_fusion"} & set(jobs), jobs


def test_predict_without_a_table_names_the_key(tmp_path):
    result = run_snakemake(tmp_path, "-n", "predict", config=TINY)
    assert result.returncode != 0
    assert "Invalid config key 'predict.samples'" in result.stdout + result.stderr


def test_a_collapsed_final_branch_stops_the_bundle_naming_it(external_run, tmp_path):
    """The final thermal branch made to predict class P everywhere (as a branch stuck at its
    first plateau does): with final.allow_collapsed false the bundle job stops with one line
    naming it and writes no bundle (the override is the fixture's own run, above)."""
    workdir = tmp_path / "run"
    shutil.copytree(external_run, workdir, symlinks=True)
    shutil.rmtree(workdir / "results/final/bundle")
    probs_file = workdir / "results/final/image/thermal_map/probs.tsv"
    probs = pd.read_csv(probs_file, sep="\t")
    probs[PROBS] = [0.2, 0.7, 0.1]
    probs.to_csv(probs_file, sep="\t", index=False)
    # Only the bundle re-runs: the final fusion would (rightly) refuse the edited probabilities.
    arguments = [
        "--cores",
        "1",
        # The bundle alone: final_models also wants the model card, which needs the CV.
        "results/final/bundle",
        "--rerun-triggers",
        "params",
        "--forcerun",
        "bundle",
    ]
    refused = {**EXTERNAL, "final": {"allow_collapsed": False}}
    result = run_snakemake(workdir, *arguments, config=refused)
    assert result.returncode != 0
    output = (result.stdout + result.stderr).splitlines()
    errors = [line for line in output if line.startswith("fusion-dag input error")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "thermal_map predicts class P for every training row" in errors[0]
    assert "final: {allow_collapsed: true}" in errors[0] and "patience" in errors[0]
    assert not (workdir / "results/final/bundle").exists()


def test_predict_explain_writes_each_new_visits_contributions_and_heatmaps(external_run):
    config = {**EXTERNAL, "predict": {**EXTERNAL["predict"], "explain": True}}
    result = run_snakemake(external_run, "--cores", "2", "predict", config=config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # Only the explanations run: the predictions and the models are up to date.
    assert scheduled_jobs(result.stdout + result.stderr) == {"predict_explain": 1, "predict": 1}
    predictions = pd.read_csv(external_run / "results/predict/predictions.tsv", sep="\t")
    table = pd.read_csv(external_run / "results/predict/contributions.tsv", sep="\t")
    assert table["id"].tolist() == predictions["id"].tolist()
    members = COMBINATION.split("+")
    parts = table[[f"contribution_{m}" for m in members]].sum(axis=1)
    np.testing.assert_allclose(parts, table["prob_predicted"], atol=1e-6)
    chosen = np.searchsorted(["I", "P", "R"], predictions["predicted"])
    scored = predictions[PROBS].to_numpy()[np.arange(len(predictions)), chosen]
    np.testing.assert_allclose(table["prob_predicted"], scored, atol=1e-12)
    # A visit without a depth map gets no depth contribution (weight 0).
    no_depth = predictions["depth_map_prob_I"].isna()
    assert (table.loc[no_depth, "weight_depth_map"] == 0).all()
    # One heatmap per new visit with the image, for each image member.
    for modality, column in [
        ("depth_map", "depth_map_prob_I"),
        ("thermal_map", "thermal_map_prob_I"),
    ]:
        folder = external_run / "results/predict/heatmaps" / modality
        rows = pd.read_csv(folder / "heatmaps.tsv", sep="\t")
        assert sorted(rows["id"]) == sorted(predictions.loc[predictions[column].notna(), "id"])
        # A bundled branch recorded as predicting one class is marked on its heatmaps.
        collapsed = load_bundle(external_run / "results/final/bundle")["final_checks"]
        assert rows["one_class"].eq(modality in collapsed["collapsed_branches"]).all()
        assert all((folder / name).is_file() for name in rows["file"])


def test_predicting_the_training_table_is_a_warning(external_run, caplog):
    import logging

    spec = load_bundle(external_run / "results/final/bundle")
    tables = {m: external_run / t for m, t in IMAGE_TABLES.items()}
    with caplog.at_level(logging.WARNING):
        new_samples(external_run / "train.csv", external_run, spec, ["metadata"], {})
        assert "is the table the bundle was trained on" in caplog.text
        caplog.clear()
        new_samples(external_run / "new.csv", external_run, spec, ["metadata"], tables)
    assert "trained on" not in caplog.text
