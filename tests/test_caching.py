"""Stage caching, proven through Snakemake itself: dry runs after one completed tiny run."""

import json
import re
import shutil

import pytest

from tests.conftest import TINY, run_snakemake, scheduled_jobs

# The tiny run's folds (one repeat).
FOLDS = TINY["cv"]["folds"]

# Tests that share the session's tiny_run stay on one xdist worker, which builds it once.
pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("tiny_run")]

# Jobs that only summarise cached results: tables, diagnostics, figures and the target; and the
# analysis plan (a changed cv design is a changed plan).
# Jobs that read finished models' outputs and train nothing.
AGGREGATION = {
    "analysis_plan",
    "clinical_report",
    "fold_table",
    "oof",
    "plot_evaluation",
    "aggregate_results",
    "diagnostics",
    "plot_fold_kappa",
    "plot_confusion_matrices",
    "plot_learning_curves",
    "plot_weight_sweep",
    "provenance",
    "fusion_results",
}


def dry_run(workdir, config):
    result = run_snakemake(workdir, "-n", "fusion_results", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    return scheduled_jobs(result.stdout + result.stderr)


def test_full_run_writes_a_row_per_combination_and_contract_logs(tiny_run):
    table = (tiny_run / "results/fusion_results.tsv").read_text().splitlines()
    assert [line.split("\t")[:2] for line in table[1:]] == [
        ["metadata", "complete"],
        ["thermal_map", "complete"],
        ["metadata+thermal_map", "complete"],
        ["metadata+thermal_map", "all"],
    ]
    log = (tiny_run / "logs/fusion/metadata+thermal_map/repeat1/fold2.log").read_text()
    assert "Loaded weights for layer: thermal_map_conv1" in log
    assert "Frozen layer: thermal_map_probs" in log
    assert "Fusion weights: RF=0.70, Image=0.30" in log
    assert (tiny_run / "results/image/thermal_map/repeat1/fold2/checkpoint.weights.h5").is_file()
    assert "Epoch 1/3" in (tiny_run / "logs/image/thermal_map/repeat1/fold1.log").read_text()


def test_nothing_changed_schedules_nothing(tiny_run):
    assert dry_run(tiny_run, TINY) == {}


def test_fusion_weight_change_reruns_only_fusion(tiny_run):
    jobs = dry_run(tiny_run, {**TINY, "fusion": {"metadata_weight": 0.5}})
    # Only the folds of metadata+thermal_map use the weight.
    assert jobs.pop("fusion") == FOLDS
    assert set(jobs) <= AGGREGATION and jobs["aggregate_results"] == 1


def test_learning_fusion_weights_retrains_no_model(tiny_run):
    fusion = {"metadata_weight": 0.7, "learn": ["weights", "temperature"]}
    jobs = dry_run(tiny_run, {**TINY, "fusion": fusion})
    # Every fold of every combination learns (a temperature even for a member alone, so the
    # forest's out-of-fold probabilities, which the clinical report reads, change too); no
    # image or metadata job runs again.
    assert jobs.pop("fusion") == 3 * FOLDS and jobs.pop("learned") == 3
    assert set(jobs) <= AGGREGATION and jobs["aggregate_results"] == 1


def test_label_screen_retrains_each_folds_forest_and_branch(tiny_run):
    jobs = dry_run(tiny_run, {**TINY, "label_screen": {"method": "confident_learning"}})
    assert jobs.pop("screen") == FOLDS and jobs.pop("metadata") == FOLDS
    assert jobs.pop("image") == FOLDS and jobs.pop("fusion") == 3 * FOLDS and jobs.pop("oof") == 3
    assert "prepare" not in jobs and "image_cache" not in jobs and "folds" not in jobs


def test_a_changed_confidence_replaces_the_plan_and_retrains_nothing(tiny_copy):
    config = {**TINY, "evaluation": {"confidence": 0.9}}
    result = run_snakemake(tiny_copy, "-n", "fusion_results", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    jobs = scheduled_jobs(output)
    assert jobs.pop("analysis_plan") == 1 and jobs.pop("aggregate_results") == 1
    # The intervals' confidence is the headline's and the clinical report's.
    assert set(jobs) <= {
        "clinical_report",
        "plot_evaluation",
        "plot_fold_kappa",
        "provenance",
        "fusion_results",
    }
    # Said at start, before any job: the plan on record and what changed.
    assert output.index("WARNING: the analysis plan differs from results/analysis_plan.json") < (
        output.index("Job stats:")
    )
    assert "confidence: 0.95 -> 0.9" in output and "alpha: 0.05 -> 0.1" in output
    # The plan job replaces the record in place and keeps the plan it replaced.
    before = json.loads((tiny_copy / "results/analysis_plan.json").read_text())
    result = run_snakemake(tiny_copy, "--cores", "1", "results/analysis_plan.json", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((tiny_copy / "results/analysis_plan.json").read_text())
    assert after["plan"]["alpha"] == 0.1 and after["written"] >= before["written"]
    assert after["earlier"] == [
        {"written": before["written"], "replaced": after["written"], "plan": before["plan"]}
    ]
    log = (tiny_copy / "logs/analysis_plan/analysis_plan.log").read_text()
    assert "WARNING" in log and "confidence: 0.95 -> 0.9" in log
    assert "analysis_plan" not in dry_run(tiny_copy, config)  # written once per change


def test_box_margin_change_recrops_that_modality_only(tiny_run):
    modalities = {"thermal_map": {**TINY["modalities"]["thermal_map"], "box_margin": 0.4}}
    jobs = dry_run(tiny_run, {**TINY, "modalities": modalities})
    assert jobs.pop("image_cache") == 1 and jobs.pop("image") == FOLDS
    assert jobs.pop("fusion") == 2 * FOLDS
    assert set(jobs) <= AGGREGATION and jobs["aggregate_results"] == 1


def test_image_setting_change_never_reruns_metadata(tiny_run):
    jobs = dry_run(tiny_run, {**TINY, "image_model": {**TINY["image_model"], "epochs": 4}})
    assert jobs.pop("image") == FOLDS and jobs.pop("fusion") == 2 * FOLDS
    assert set(jobs) <= AGGREGATION and jobs["aggregate_results"] == 1


def test_deleted_checkpoint_retrains_exactly_that_image_job(tiny_copy):
    (tiny_copy / "results/image/thermal_map/repeat1/fold2/checkpoint.weights.h5").unlink()
    jobs = dry_run(tiny_copy, TINY)
    assert jobs.pop("image") == 1 and jobs.pop("fusion") == 2
    assert set(jobs) <= AGGREGATION and jobs["aggregate_results"] == 1


def test_changed_checkpoint_reruns_exactly_its_fusion_jobs(tiny_copy):
    """The checkpoint itself is a declared input of fusion (not only the image probabilities).

    Its bytes change (fold 1's weights copied over fold 2's); touching alone would not do, as
    Snakemake compares checksums of small files before rerunning on a newer timestamp.
    """
    stage = tiny_copy / "results/image/thermal_map"
    shutil.copyfile(
        stage / "repeat1/fold1/checkpoint.weights.h5", stage / "repeat1/fold2/checkpoint.weights.h5"
    )
    result = run_snakemake(tiny_copy, "-n", "fusion_results", config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    jobs = scheduled_jobs(output)
    assert "image" not in jobs and jobs.pop("fusion") == 2
    assert set(jobs) <= AGGREGATION
    fusion_jobs = set(re.findall(r"rule fusion:\n(?:    .*\n)*?    wildcards: (.*)", output))
    assert fusion_jobs == {
        "combination=metadata+thermal_map, repeat=1, fold=2",
        "combination=thermal_map, repeat=1, fold=2",
    }


def test_raising_repeats_trains_only_the_new_partition(tiny_run):
    config = {**TINY, "cv": {**TINY["cv"], "repeats": 2}}
    result = run_snakemake(tiny_run, "-n", "fusion_results", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    jobs = scheduled_jobs(output)
    assert (jobs.pop("folds"), jobs.pop("metadata"), jobs.pop("image")) == (1, FOLDS, FOLDS)
    assert jobs.pop("fusion") == 3 * FOLDS and set(jobs) <= AGGREGATION
    trained = re.findall(
        r"rule (?:folds|metadata|image|fusion):\n(?:    .*\n)*?    wildcards: (.*)", output
    )
    assert trained and all("repeat=2" in wildcards for wildcards in trained)
    ablation = run_snakemake(tiny_run, "-n", "ablation", config=config)
    assert ablation.returncode == 0, ablation.stderr[-3000:]
    assert scheduled_jobs(ablation.stdout + ablation.stderr)["ablation_fold"] == 2 * FOLDS


def test_image_alone_needs_no_metadata(tmp_path):
    jobs = dry_run(tmp_path, {**TINY, "combinations": [["thermal_map"]]})
    assert "metadata" not in jobs and jobs["image"] == FOLDS and jobs["fusion"] == FOLDS


def test_fusion_waits_for_the_pretrained_checkpoint(tmp_path):
    # The fusion alone: it is the primary too (evaluation.primary names a combination run).
    config = {**TINY, "combinations": [["metadata", "thermal_map"]]}
    config["evaluation"] = {"primary": "metadata+thermal_map"}
    result = run_snakemake(tmp_path, "--dag", "dot", "fusion_results", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    nodes = {}
    edges = set()
    for line in result.stdout.splitlines():
        line = line.strip()
        if "[label" in line and "->" not in line:
            node, label = line.split("[label", 1)
            nodes[node.strip()] = label.split('"')[1].split("\\n")[0]
        elif "->" in line:
            source, target = (part.strip().rstrip(";") for part in line.split("->"))
            edges.add((source, target))
    rules = {(nodes[a], nodes[b]) for a, b in edges}
    assert ("image", "fusion") in rules and ("metadata", "fusion") in rules


def test_job_counts_come_from_a_job_table_or_an_explicit_nothing_to_do():
    nothing = "Building DAG of jobs...\nNothing to be done (all requested files are present)."
    assert scheduled_jobs(nothing) == {}
    with pytest.raises(AssertionError, match="no job table"):
        scheduled_jobs("WorkflowError: the DAG could not be built")
