"""The clinical report's numbers: calibration slopes, decision curves, subgroups, Table 1 and
the participant flow, on small simulated tables."""

import numpy as np
import pandas as pd
import pytest

from fusion_dag.clinical import (
    calibration_table,
    decision_curves,
    logistic_recalibration,
    participants_table,
    subgroup_levels,
    subgroup_table,
    table_one,
    with_calibration,
)
from fusion_dag.config import ConfigError, check_decisions, check_subgroups

CLASSES = ["I", "P", "R"]


def simulated_oof(n_patients=150, visits=3, repeats=2, folds=3, sharpness=2.0, seed=0):
    """An out-of-fold table whose probabilities are the true ones (perfect calibration):
    labels drawn from softmax(sharpness x latent scores)."""
    rng = np.random.default_rng(seed)
    n = n_patients * visits
    scores = rng.normal(0.0, 1.0, (n, 3)) * sharpness
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in probs])
    groups = np.repeat([f"G{g:03d}" for g in range(n_patients)], visits)
    parts = []
    for repeat in range(1, repeats + 1):
        fold_of = dict(zip(np.unique(groups), rng.integers(1, folds + 1, n_patients), strict=True))
        table = pd.DataFrame(
            {
                "repeat": repeat,
                "fold": [fold_of[g] for g in groups],
                "id": [f"V{i:04d}" for i in range(n)],
                "group": groups,
                "label": np.array(CLASSES)[labels],
            }
        )
        for index, name in enumerate(CLASSES):
            table[f"prob_{name}"] = probs[:, index]
        parts.append(table)
    return pd.concat(parts, ignore_index=True), scores


def test_a_calibrated_model_has_slope_one_and_doubled_logits_slope_one_half():
    rng = np.random.default_rng(1)
    logit = rng.normal(0.0, 1.5, 40_000)
    outcome = rng.random(len(logit)) < 1.0 / (1.0 + np.exp(-logit))
    slope, intercept = logistic_recalibration(outcome, 1.0 / (1.0 + np.exp(-logit)))
    assert slope == pytest.approx(1.0, abs=0.05)
    assert intercept == pytest.approx(0.0, abs=0.05)
    slope, intercept = logistic_recalibration(outcome, 1.0 / (1.0 + np.exp(-2.0 * logit)))
    assert slope == pytest.approx(0.5, abs=0.03)
    assert intercept == pytest.approx(0.0, abs=0.05)
    # Predictions too high on average: a negative intercept.
    _, shifted = logistic_recalibration(outcome, 1.0 / (1.0 + np.exp(-(logit + 1.0))))
    assert shifted == pytest.approx(-1.0, abs=0.05)
    assert np.isnan(logistic_recalibration(np.zeros(10), np.full(10, 0.3))[0])


def test_calibration_table_has_intervals_per_class_and_fills_the_headline():
    oof, _ = simulated_oof()
    table = calibration_table([("model", "complete", oof)], CLASSES, 0.95)
    assert list(table["class"]) == CLASSES
    assert (table["slope_ci_low"] < table["slope"]).all()
    assert (table["slope"] < table["slope_ci_high"]).all()
    assert table["slope"].between(0.7, 1.3).all()
    assert (table["n_rows"] == 450).all()
    counts = oof[oof["repeat"] == 1]["label"].value_counts()
    assert table.set_index("class")["events"].to_dict() == counts.to_dict()
    headline = pd.DataFrame({"combination": ["model"], "rows": ["complete"], "kappa_mean": [0.5]})
    wide = with_calibration(headline, table)
    assert wide["kappa_mean"].iloc[0] == 0.5
    assert wide["calibration_slope_P"].iloc[0] == table.loc[1, "slope"]
    assert wide["calibration_intercept_R"].iloc[0] == table.loc[2, "intercept"]


def test_treat_all_net_benefit_is_prevalence_minus_the_harm_of_false_positives():
    oof, _ = simulated_oof(repeats=1)
    curves = decision_curves({"m": oof}, {"remodelling": ["R"], "late": ["P", "R"]}, ["m"])
    for decision, positive in (("remodelling", ["R"]), ("late", ["P", "R"])):
        rows = curves[curves["decision"] == decision]
        prevalence = oof["label"].isin(positive).mean()
        treat_all = rows[rows["strategy"] == "treat_all"]
        t = treat_all["threshold"].to_numpy()
        expected = prevalence - (1 - prevalence) * t / (1 - t)
        np.testing.assert_allclose(treat_all["net_benefit"], expected, atol=1e-9)
        assert (rows.loc[rows["strategy"] == "treat_none", "net_benefit"] == 0).all()
        # The model's own curve, by hand at t = 0.3.
        model = rows[(rows["strategy"] == "model") & (rows["threshold"] == 0.3)]
        score = oof[[f"prob_{c}" for c in positive]].sum(axis=1)
        treated, events = score >= 0.3, oof["label"].isin(positive)
        by_hand = ((treated & events).sum() - (treated & ~events).sum() * 0.3 / 0.7) / len(oof)
        assert model["net_benefit"].iloc[0] == pytest.approx(by_hand)
    assert decision_curves({"m": oof}, None, ["m"]).empty


def test_a_subgroup_with_shuffled_labels_has_kappa_near_zero_and_the_others_keep_theirs():
    oof, _ = simulated_oof(n_patients=300, repeats=1, sharpness=4.0)
    site = np.where(oof["group"].str[1:].astype(int) % 2 == 0, "A", "B")
    rng = np.random.default_rng(3)
    shuffled = oof["label"].to_numpy().copy()
    in_b = site == "B"
    shuffled[in_b] = rng.permutation(shuffled[in_b])
    oof["label"] = shuffled
    samples = pd.DataFrame({"id": oof["id"], "group": oof["group"], "label": oof["label"]})
    samples["site"] = site
    samples["age"] = np.arange(len(samples)) % 50 + 40.0
    evaluation = {"bootstrap": 200, "confidence": 0.95}
    table = subgroup_table({"m": oof}, samples, ["site", "age"], ["m"], CLASSES, evaluation, 1)
    by_site = table[table["column"] == "site"].set_index("level")
    assert by_site.loc["A", "kappa"] > 0.5
    assert abs(by_site.loc["B", "kappa"]) < 0.1
    assert by_site.loc["B", "kappa_ci_low"] < 0 < by_site.loc["B", "kappa_ci_high"]
    assert not by_site["small"].any()
    assert (table[table["column"] == "age"]["n_visits"].sum()) == len(samples)


def test_subgroup_levels_band_numbers_keep_missing_and_flag_small_levels():
    values = pd.Series([40.0, 50.0, 60.0, 70.0, 80.0, np.nan, 45.0, 55.0])
    levels = subgroup_levels(values)
    assert levels.iloc[5] == "missing"
    assert levels.drop(5).nunique() == 4
    assert levels.iloc[0] == "[40, 45]" and levels.iloc[4] == "[70, 80]"
    assert subgroup_levels(pd.Series(["M", None, "F"])).tolist() == ["M", "missing", "F"]
    oof, _ = simulated_oof(n_patients=40, repeats=1)
    samples = oof[["id", "group", "label"]].assign(rare=np.where(oof.index < 12, "x", "y"))
    evaluation = {"bootstrap": 100, "confidence": 0.95}
    table = subgroup_table({"m": oof}, samples, ["rare"], ["m"], CLASSES, evaluation, 1)
    flagged = table.set_index("level")["small"]
    assert flagged["x"] and not flagged["y"]


def test_table_one_summarises_each_column_by_class_with_missing_counts():
    samples = pd.DataFrame(
        {
            "id": [f"V{i}" for i in range(9)],
            "group": ["a", "a", "b", "c", "c", "d", "e", "f", "g"],
            "label": ["I", "P", "R", "I", "P", "R", "I", "P", "R"],
            "age": [50.0, 52.0, np.nan, 60.0, 61.0, 70.0, 40.0, 45.0, 80.0],
            "sex": ["M", "M", "F", "F", "F", None, "M", "F", "M"],
        }
    )
    table = table_one(samples, CLASSES)
    assert list(table.columns) == ["variable", "level", "missing", "overall", *CLASSES]
    age = table[table["variable"].str.startswith("age")].iloc[0]
    assert age["missing"] == "1"
    assert age["I"] == "50.0 [45.0,55.0]"
    sex = table[table["variable"].str.startswith("sex")].set_index("level")
    assert sex.loc["F", "missing"] == "1"
    assert sex.loc["F", "overall"] == "4 (50.0)"
    assert "None" not in sex.index
    shares = table[table["variable"] == "label, n (%)"].iloc[0]
    assert shares["I"] == "3 (33.3)"
    patients = table[table["variable"] == "patients"].iloc[0]
    assert patients["overall"] == "7" and patients["I"] == "3"


def test_participants_add_up_from_the_table_read_to_every_fold():
    oof, _ = simulated_oof(n_patients=30, repeats=2)
    folds = oof[["id", "group", "label", "repeat", "fold"]]
    samples = folds[folds["repeat"] == 1][["id", "group", "label"]]
    with_view = samples["id"].iloc[:-5]
    views = pd.DataFrame({"modality": "thermal", "id": np.repeat(with_view, 2)})
    counts = pd.DataFrame({"modality": ["thermal"], "rows_without_visit": [3]})
    scored = oof[oof["id"].isin(with_view)]
    table = participants_table(samples, views, counts, folds, {"thermal": scored}, CLASSES)
    everyone = table[(table["label"] == "all") & table["repeat"].isna()].set_index(
        ["step", "scope"]
    )
    assert everyone.loc[("read", "samples"), "visits"] == 90
    assert everyone.loc[("with_images", "thermal"), "visits"] == 85
    assert everyone.loc[("with_images", "thermal"), "images"] == 170
    assert everyone.loc[("without_images", "thermal"), "visits"] == 5
    assert everyone.loc[("image_rows_without_visit", "thermal"), "images"] == 3
    assert everyone.loc[("scored", "thermal"), "visits"] == 85
    per_fold = table[(table["scope"] == "folds") & (table["label"] == "all")]
    validation = per_fold[per_fold["step"] == "validation"].groupby("repeat")["visits"].sum()
    assert (validation == 90).all()
    both = per_fold.groupby(["repeat", "fold"])["visits"].sum()
    assert (both == 90).all()


def test_decisions_and_subgroups_are_checked_at_start_up():
    config = {
        "classes": CLASSES,
        "samples": "s.csv",
        "columns": {"id": "sample_id", "group": "patient_id", "label": "label", "exclude": ["x"]},
        "evaluation": {"decisions": {"late": ["P", "R"]}, "subgroups": ["sex"]},
    }
    check_decisions(config)
    check_subgroups(config, ["sample_id", "patient_id", "label", "sex", "x"])
    for wrong in (["Q"], [], CLASSES):
        config["evaluation"]["decisions"] = {"bad": wrong}
        with pytest.raises(ConfigError, match="evaluation.decisions.bad"):
            check_decisions(config)
    for column in ("age", "x", "patient_id"):
        config["evaluation"]["subgroups"] = [column]
        with pytest.raises(ConfigError, match=f"evaluation.subgroups.*{column}"):
            check_subgroups(config, ["sample_id", "patient_id", "label", "sex", "x"])
