import json

import numpy as np
import pandas as pd
import pytest

from fusion_dag.card import CARD_FILES, card_markdown, card_sources, copy_card, model_card
from tests.conftest import TINY, run_snakemake, scheduled_jobs

CLASSES = ["I", "P", "R"]
FUSION = "metadata+thermal_map"
EVALUATION = {"confidence": 0.95, "primary": "metadata"}


def manifest(collapsed=None, allow=False):
    return {
        "classes": CLASSES,
        "modalities": {"thermal_map": {"size": 32}},
        "features": [{"name": "age", "type": "numeric"}],
        "combinations": {"metadata": ["metadata"], FUSION: ["metadata", "thermal_map"]},
        "default_combination": FUSION,
        "fusion": {"metadata_weight": 0.7, "weights": None},
        "final_checks": {"collapsed_branches": collapsed or {}, "allow_collapsed": allow},
        "provenance": {
            "workflow": {"commit": "abc123", "dirty": False},
            "python": "3.11.7",
            "packages": {"scikit-learn": "1.9.1", "unrelated": "0.1"},
            "data": {"samples": {"path": "train.csv", "sha256": "f00d"}},
        },
        "spec_sha256": "5bec",
    }


def headline(not_learned=0):
    rows = []
    for combination, kappa in (("metadata", 0.30), (FUSION, 0.35)):
        row = {"combination": combination, "rows": "complete", "n_folds": 3, "n_repeats": 2}
        row.update(n_rows=90, folds_not_learned=not_learned if "+" in combination else 0)
        for metric in ("kappa", "qwk", "balanced_accuracy", "auc", "brier", "ece"):
            row.update({f"{metric}_mean": kappa, f"{metric}_ci_low": kappa - 0.1})
            row[f"{metric}_ci_high"] = kappa + 0.1
        row.update({f"calibration_slope_{name}": 0.9 for name in CLASSES})
        rows.append(row)
    return pd.DataFrame(rows)


def comparisons():
    return pd.DataFrame(
        {
            "combination": [FUSION],
            "versus": ["metadata"],
            "family": ["primary"],
            "n_rows": [90],
            "kappa_diff_folds": [0.05],
            "kappa_diff_ci_low": [-0.02],
            "kappa_diff_ci_high": [0.12],
            "p_holm": [0.2],
            "detectable_gain": [0.1],
            "verdict": ["inconclusive"],
        }
    )


def training_tables():
    samples = pd.DataFrame(
        {
            "id": [f"v{i}" for i in range(10)],
            "group": [f"p{i // 2}" for i in range(10)],
            "label": ["I", "I", "P", "P", "P", "P", "P", "R", "I", "P"],
            "age": np.arange(10.0),
        }
    )
    # Two visits (v8, v9) have no thermal view.
    images = pd.DataFrame({"modality": "thermal_map", "id": [f"v{i}" for i in range(8)]})
    return samples, images


def subgroups():
    return pd.DataFrame(
        {
            "combination": [FUSION, FUSION, "metadata"],
            "column": "sex",
            "level": ["F", "M", "F"],
            "n_visits": [4, 6, 4],
            "n_patients": [2, 3, 2],
            "small": [True, True, True],
            **{
                f"{metric}{part}": [0.2, 0.4, 0.1]
                for metric in ("kappa", "auc", "ece")
                for part in ("", "_ci_low", "_ci_high")
            },
        }
    )


@pytest.fixture
def sources(tmp_path):
    path = tmp_path / "fusion_results.tsv"
    headline().to_csv(path, sep="\t", index=False)
    return {"headline": path}


def card_of(sources, **changes):
    samples, images = training_tables()
    arguments = {
        "manifest": manifest(),
        "headline": headline(),
        "comparisons": comparisons(),
        "samples": samples,
        "images": images,
        "evaluation": EVALUATION,
        "sources": sources,
        "subgroups": subgroups(),
        "calibration": None,
        **changes,
    }
    return model_card(**arguments)


def test_the_card_has_every_section_from_the_runs_tables(sources):
    card = card_of(sources)
    text = card_markdown(card)
    for section in (
        "Intended use",
        "Data",
        "Members and fusion weights",
        "Cross-validated performance",
        "Primary contrasts",
        "Subgroups",
        "Known limits",
        "Provenance",
    ):
        assert f"## {section}\n" in text
    assert "Decision support, not a diagnosis" in text
    data = card["data"]
    assert (data["visits"], data["patients"]) == (10, 5)
    assert [(c["class"], c["visits"]) for c in data["classes"]] == [("I", 3), ("P", 6), ("R", 1)]
    assert data["missing_images"] == [
        {"modality": "thermal_map", "visits_without": 2, "share_without": 0.2}
    ]
    weights = {c["combination"]: c["weights"] for c in card["models"]["combinations"]}
    assert weights[FUSION] == pytest.approx({"metadata": 0.7, "thermal_map": 0.3})
    rows = card["performance"]["rows"]
    assert [row["combination"] for row in rows] == ["metadata", FUSION]
    assert rows[1]["metrics"]["kappa"] == pytest.approx(
        {"mean": 0.35, "ci_low": 0.25, "ci_high": 0.45}
    )
    assert rows[1]["calibration_slope"] == {"I": 0.9, "P": 0.9, "R": 0.9}
    assert "0.350 [0.250, 0.450]" in text
    assert card["contrasts"][0]["verdict"] == "inconclusive"
    assert "inconclusive" in text
    # The subgroups shown are the default combination's.
    assert {row["combination"] for row in card["subgroups"]} == {FUSION}
    assert card["provenance"]["packages"] == {"scikit-learn": "1.9.1"}
    assert len(card["provenance"]["sources"]["headline"]) == 64
    assert card["prediction_sets"] is None and "## Prediction sets" not in text
    json.dumps(card)


def test_without_subgroups_the_card_says_nothing_of_them(sources):
    card = card_of(sources, subgroups=None)
    assert card["subgroups"] is None
    assert "## Subgroups" not in card_markdown(card)


def test_limits_name_unlearned_folds_collapsed_overrides_and_missing_images(sources):
    quiet = card_of(sources, headline=headline(not_learned=0), subgroups=None)
    assert not any("learned nothing" in limit for limit in quiet["limits"])
    card = card_of(
        sources,
        headline=headline(not_learned=2),
        manifest=manifest(collapsed={"thermal_map": "P"}, allow=True),
    )
    limits = card["limits"]
    assert any("learned nothing in 2 of 6" in limit for limit in limits)
    assert any(
        "thermal_map branch predicts class P" in limit and "final.allow_collapsed" in limit
        for limit in limits
    )
    assert any("2 of 10 training visits (20%) have no thermal_map" in limit for limit in limits)
    assert any("2 subgroup levels" in limit for limit in limits)
    text = card_markdown(card)
    assert "final.allow_collapsed" in text and "learned nothing in 2 of 6" in text


def test_prediction_sets_appear_when_the_bundle_is_calibrated(sources):
    summary = {
        "method": "split-conformal",
        "calibration_visits": 90,
        "cross_validated": {"coverage": 0.9, "visits": 90, "set_coverage": 0.91, "set_size": 1.6},
    }
    card = card_of(sources, calibration={FUSION: summary})
    text = card_markdown(card)
    assert "## Prediction sets" in text and "coverage 0.910, mean set size 1.60" in text


def test_predict_copies_the_card_found_beside_the_default_bundle(tmp_path):
    bundle = tmp_path / "results/final/bundle"
    bundle.mkdir(parents=True)
    folders = card_sources(bundle, bundle)
    assert folders == [bundle, bundle.parent]
    assert card_sources(tmp_path / "elsewhere", bundle) == [tmp_path / "elsewhere"]
    out = tmp_path / "predict"
    out.mkdir()
    assert copy_card(folders, out) is None
    for name in CARD_FILES:
        (bundle.parent / name).write_text(name)
    assert copy_card(folders, out) == bundle.parent
    assert (out / "model_card.md").read_text() == "model_card.md"
    # A card inside the bundle folder (copied with it) comes first.
    for name in CARD_FILES:
        (bundle / name).write_text("inside")
    assert copy_card(folders, out) == bundle
    assert (out / "model_card.json").read_text() == "inside"
    # Another bundle without a card: the stale card is removed.
    assert copy_card([tmp_path / "elsewhere"], out) is None
    assert not (out / "model_card.md").exists()


@pytest.mark.workflow
def test_final_models_schedule_the_card_and_predict_does_not(tmp_path, demo_table):
    result = run_snakemake(tmp_path, "-n", "final_models", config=TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = scheduled_jobs(result.stdout + result.stderr)
    assert jobs["model_card"] == 1 and jobs["bundle"] == 1
    # The card reports the cross-validation, so final_models now runs it.
    assert jobs["aggregate_results"] == 1 and jobs["clinical_report"] == 1
    images = {"thermal_map": str(demo_table.parent / "thermal_images.csv")}
    config = {**TINY, "predict": {"samples": str(demo_table), "images": images}}
    result = run_snakemake(tmp_path, "-n", "predict", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = scheduled_jobs(result.stdout + result.stderr)
    assert jobs["predictions"] == 1 and jobs["bundle"] == 1
    assert not {"model_card", "aggregate_results", "fusion", "image", "folds"} & set(jobs), jobs
    assert "predict_card" not in jobs  # predictions copies a card it finds
    # Both in one invocation: the card is copied once it exists, whatever ran first.
    result = run_snakemake(tmp_path, "-n", "final_models", "predict", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = scheduled_jobs(result.stdout + result.stderr)
    assert jobs["predict_card"] == 1 and jobs["model_card"] == 1 and jobs["predictions"] == 1
    # A given bundle keeps its own card, which predictions copies: no predict_card.
    given = {**config, "predict": {**config["predict"], "bundle": "shipped_bundle"}}
    result = run_snakemake(tmp_path, "-n", "final_models", "predict", config=given)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = scheduled_jobs(result.stdout + result.stderr)
    assert jobs["model_card"] == 1 and "predict_card" not in jobs


def test_temporal_validation_is_shown_and_a_fall_over_time_is_a_limit(sources):
    row = {"combination": FUSION, "n_patients": 12, "n_rows": 40}
    for metric in ("kappa", "qwk", "balanced_accuracy", "auc", "brier", "ece"):
        row |= {metric: 0.15, f"{metric}_ci_low": 0.05, f"{metric}_ci_high": 0.25}
        row |= {f"cv_{metric}": 0.35, f"cv_{metric}_ci_low": 0.25, f"cv_{metric}_ci_high": 0.45}
    temporal = pd.DataFrame([row])
    evaluation = {**EVALUATION, "temporal": {"column": "visit_date", "test": 0.3}}
    card = card_of(sources, temporal=temporal, evaluation=evaluation)
    text = card_markdown(card)
    assert "## Temporal validation" in text and "0.150 [0.050, 0.250]" in text
    assert card["data"]["order"] == "patients ordered by their first visit_date"
    assert any("12 later patients kappa was 0.150" in limit for limit in card["limits"])
    # Within the cross-validated estimate: shown, and no limit.
    temporal.loc[0, "kappa_ci_high"] = 0.40
    card = card_of(sources, temporal=temporal, evaluation=evaluation)
    assert not any("later patients" in limit for limit in card["limits"])
    assert card_of(sources)["temporal"] is None
    json.dumps(card)
