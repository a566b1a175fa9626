import numpy as np
import pandas as pd
import pytest

from fusion_dag.ablation import build_joint_model
from fusion_dag.report import ablation_table
from tests.conftest import TINY, branch_fold, run_snakemake, scheduled_jobs

# Tests that share the session's tiny_run stay on one xdist worker, which builds it once.
pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("tiny_run")]


def test_v1_learns_one_weight_and_v2_none(cached):
    task = branch_fold(cached)
    v1 = build_joint_model(task, 0.7, learned=True)
    v2 = build_joint_model(task, 0.7, learned=False)
    layer = v1.get_layer("fusion_weighted")
    assert len(layer.trainable_weights) == 1
    assert float(1 / (1 + np.exp(-layer.logit.numpy()))) == pytest.approx(0.7)
    assert v2.get_layer("fusion_weighted").trainable_weights == []
    # Both train the image branch from scratch inside the fusion model.
    assert v2.get_layer("thermal_map_conv1").trainable_weights


def test_ablation_table_has_mean_and_std_per_variant():
    records = [
        {
            "combination": "m+t",
            "strategy": "V1",
            "rf_source": "in_sample",
            "fold": f,
            "kappa": k,
            "train_kappa": 0.9,
            "gap": 0.9 - k,
        }
        for f, k in ((1, 0.1), (2, 0.3))
    ]
    table = ablation_table(records, [])
    assert table.loc[0, "kappa_mean"] == pytest.approx(0.2)
    assert table.loc[0, "kappa_std"] == pytest.approx(pd.Series([0.1, 0.3]).std())
    assert table.loc[0, "n_folds"] == 2


def test_ablation_target_reuses_v3_and_builds_the_report(tiny_copy):
    result = run_snakemake(tiny_copy, "--cores", "2", "ablation", config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    # V3 is the fusion rule's finished result: nothing but the V1/V2 training re-runs.
    jobs = scheduled_jobs(result.stdout + result.stderr)
    assert jobs == {"ablation_fold": TINY["cv"]["folds"], "aggregate_ablation": 1, "ablation": 1}
    table = pd.read_csv(tiny_copy / "results/ablation.tsv", sep="\t")
    variants = set(zip(table["strategy"], table["rf_source"], strict=True))
    assert variants == {
        ("V1", "in_sample"),
        ("V1", "out_of_fold"),
        ("V2", "in_sample"),
        ("V2", "out_of_fold"),
        ("V3", "out_of_fold"),
    }
    # How far training moved each variant is recorded, not claimed: V1's learned weight and
    # every variant's epochs and best epoch.
    by_strategy = table.set_index(["strategy", "rf_source"])
    assert by_strategy.loc[("V1", "out_of_fold"), "learned_weight_mean"] == pytest.approx(
        0.7, abs=0.3
    )
    assert by_strategy.loc[("V2", "out_of_fold"), ["learned_weight_mean"]].isna().all()
    assert (by_strategy.loc[["V1", "V2"], "best_epoch_mean"] >= 1).all()
    # Each variant is compared with V3 on the same rows; V3 is not compared with itself.
    gains = table.set_index("strategy")
    variants = gains.loc[["V1", "V2"]]
    assert variants["v3_p_value"].between(0, 1).all()
    # The interval is the corrected t interval around the mean per-fold gain; Holm over the
    # four variants (their own family) never lowers a p-value.
    assert (variants["v3_kappa_gain_ci_low"] <= variants["v3_kappa_gain_folds"]).all()
    assert (variants["v3_kappa_gain_folds"] <= variants["v3_kappa_gain_ci_high"]).all()
    assert (variants["v3_p_holm"] >= variants["v3_p_value"]).all()
    assert set(variants["v3_verdict"]) <= {"V3 better", "V3 worse", "inconclusive"}
    assert pd.isna(gains.loc["V3", "v3_kappa_gain"])
    # V3 is the fusion rule's per-fold result (the ablation averages folds, like its V1/V2).
    per_fold = pd.read_csv(tiny_copy / "results/fusion_results_per_fold.tsv", sep="\t")
    fused = per_fold.loc[per_fold["combination"] == "metadata+thermal_map", "kappa"].mean()
    v3 = table.set_index("strategy").loc["V3", "kappa_mean"]
    assert v3 == pytest.approx(fused)

    report = tiny_copy / "report.html"
    result = run_snakemake(
        tiny_copy, "--report", str(report), "fusion_results", "ablation", config=TINY
    )
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text()
    # The report opens on the run's primary verdicts and headline, not the workflow's summary.
    assert "Does each fusion add to metadata?" in html and "p_holm" in html
    for name in (
        "fusion_results.tsv",
        "fold_kappa.png",
        "confusion_matrices.png",
        "learning_curves_thermal_map.png",
        "weight_sweep_metadata+thermal_map.png",
        "ablation.tsv",
        "kappa_intervals.png",
        "comparisons.png",
        "reliability.png",
        "roc_curves.png",
    ):
        assert name in html, name


def test_fusion_weight_layer_is_a_registered_keras_object():
    import keras

    from fusion_dag.ablation import WeightedFusion

    config = keras.saving.serialize_keras_object(WeightedFusion(0.7, learned=True))
    restored = keras.saving.deserialize_keras_object(config)
    assert (restored.initial_weight, restored.learned) == (0.7, True)
