import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import InputError, prob_columns
from fusion_dag.bundle import combination_fusion, with_learned_fusion
from fusion_dag.folds import early_stopping_split
from fusion_dag.learn import (
    apply_temperature,
    choosing_visits,
    fit_temperature,
    grid_weights,
    learned_fusion,
    learned_metrics,
    learned_table,
    simplex_grid,
    temper_table,
)
from tests.conftest import CLASSES

COLUMNS = prob_columns(CLASSES)
SPLIT = {"thermal": {"validation_fraction": 0.25, "seed": 44}}


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def draw(probs, rng):
    """One class index per row, drawn from the row's probabilities."""
    return (rng.random((len(probs), 1)) > probs.cumsum(axis=1)).sum(axis=1)


def test_the_simplex_grid_covers_every_weighting_summing_to_one():
    grid = simplex_grid(3, 0.05)
    assert len(grid) == 231 and np.allclose(grid.sum(axis=1), 1.0) and (grid >= 0).all()
    assert len(simplex_grid(2, 0.05)) == 21 and [0.3, 0.7] in simplex_grid(2, 0.05).round(9)


def test_the_grid_finds_a_planted_best_weight():
    """Labels drawn from 0.3 x A + 0.7 x B: that mixture has the smallest expected log loss."""
    rng = np.random.default_rng(0)
    n = 6000
    a, b = rng.dirichlet([0.7] * 3, n), rng.dirichlet([0.7] * 3, n)
    y = draw(0.3 * a + 0.7 * b, rng)
    weights = grid_weights({"metadata": a, "thermal": b}, y)
    assert weights["metadata"] == pytest.approx(0.3, abs=0.051)
    assert weights["metadata"] + weights["thermal"] == pytest.approx(1.0)
    # A member that is pure noise gets (almost) nothing.
    noise = rng.dirichlet([0.7] * 3, n)
    assert grid_weights({"metadata": a, "thermal": b, "noise": noise}, y)["noise"] <= 0.05


def test_an_overconfident_model_gets_a_temperature_of_about_two():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=1.5, size=(8000, 3))
    y = draw(softmax(logits), rng)
    assert fit_temperature(softmax(2 * logits), y) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(softmax(logits), y) == pytest.approx(1.0, rel=0.1)
    tempered = apply_temperature(softmax(2 * logits), 2.0)
    assert np.allclose(tempered, softmax(logits))


def fold_inputs(seed=0, patients=60):
    """A repeat's fold table (3 folds by patient), the metadata stage's probabilities (inner
    out-of-fold on training rows) and an image stage's (visits with views only), for fold 2."""
    rng = np.random.default_rng(seed)
    visits = rng.integers(1, 4, patients)
    group = np.repeat([f"p{i:02d}" for i in range(patients)], visits)
    folds = pd.DataFrame(
        {
            "id": [f"v{i:03d}" for i in range(len(group))],
            "group": group,
            "label": rng.choice(CLASSES, len(group), p=[0.3, 0.55, 0.15]),
            "repeat": 1,
            "fold": pd.Series(group).str[1:].astype(int).mod(3).add(1).to_numpy(),
        }
    )
    split = np.where(folds["fold"] == 2, "val", "train")

    def probs(rows):
        table = pd.DataFrame({"id": folds["id"][rows], "split": split[rows]})
        table[COLUMNS] = rng.dirichlet([1.0] * 3, rows.sum())
        return table.reset_index(drop=True)

    metadata = probs(np.ones(len(folds), dtype=bool))
    image = probs(rng.random(len(folds)) < 0.85)
    inputs = {
        "metadata_probs": metadata,
        "image_probs": {"thermal": image},
        "folds": folds,
        "image_split": SPLIT,
    }
    return inputs


def learned(inputs, fold=2):
    return learned_fusion(
        ["weights", "temperature"],
        ["metadata", "thermal"],
        inputs,
        fold,
        {"metadata": 0.7, "thermal": 0.3},
        CLASSES,
    )


def test_the_choosing_visits_are_the_image_stages_early_stopping_visits_of_the_training_fold():
    inputs = fold_inputs()
    folds, image = inputs["folds"], inputs["image_probs"]["thermal"]
    probs, y, ids = choosing_visits(
        ["metadata", "thermal"],
        inputs["metadata_probs"],
        {"thermal": image},
        folds,
        2,
        SPLIT,
        CLASSES,
    )
    train, held_out = early_stopping_split(folds, image, 2, 0.25, 44)
    assert ids == train.loc[held_out, "id"].tolist()
    assert not set(ids) & set(folds.loc[folds["fold"] == 2, "id"])
    assert probs["metadata"].shape == probs["thermal"].shape == (len(ids), 3)
    # Metadata alone chooses on every training visit (its inner out-of-fold probabilities).
    _, _, alone = choosing_visits(["metadata"], inputs["metadata_probs"], {}, folds, 2, {}, CLASSES)
    assert alone == folds.loc[folds["fold"] != 2, "id"].tolist()
    with pytest.raises(InputError, match="nothing to choose on"):
        validation_only = inputs["metadata_probs"].query("split == 'val'")
        choosing_visits(["metadata"], validation_only, {}, folds, 2, {}, CLASSES)


def test_validation_labels_and_features_never_reach_a_folds_choice():
    """The invariant: permuting fold 2's validation visits' labels (within the fold, so the
    folds stay) and shuffling their members' probabilities changes no weight or temperature;
    the same permutation of training visits does (the test can fail)."""
    inputs = fold_inputs()
    before = learned(inputs)
    rng = np.random.default_rng(5)

    def permuted(which):
        changed = {**inputs, "image_probs": dict(inputs["image_probs"])}
        folds = inputs["folds"].copy()
        rows = np.flatnonzero(which(folds))
        folds.loc[rows, "label"] = folds.loc[rng.permutation(rows), "label"].to_numpy()
        changed["folds"] = folds
        ids = set(folds.loc[rows, "id"])
        for name, table in [("metadata_probs", inputs["metadata_probs"])] + [
            ("thermal", inputs["image_probs"]["thermal"])
        ]:
            table = table.copy()
            mine = np.flatnonzero(table["id"].isin(ids))
            table.loc[mine, COLUMNS] = table.loc[rng.permutation(mine), COLUMNS].to_numpy()
            if name == "thermal":
                changed["image_probs"]["thermal"] = table
            else:
                changed[name] = table
        return changed

    after = learned(permuted(lambda folds: folds["fold"] == 2))
    assert after["weights"] == before["weights"]
    assert after["temperature"] == before["temperature"]
    assert after["visits"] == before["visits"]
    leaked = learned(permuted(lambda folds: folds["fold"] != 2))
    assert (leaked["weights"], leaked["temperature"]) != (before["weights"], before["temperature"])


def test_the_final_fusion_chooses_on_every_labelled_patient():
    inputs = fold_inputs()
    folds = inputs["folds"].assign(repeat=0, fold=1)
    for table in [inputs["metadata_probs"], inputs["image_probs"]["thermal"]]:
        table["split"] = "train"
    final = learned({**inputs, "folds": folds}, fold=0)
    train, held_out = early_stopping_split(folds, inputs["image_probs"]["thermal"], 0, 0.25, 44)
    assert final["visits"] == held_out.sum() and len(train) == len(inputs["image_probs"]["thermal"])


def test_learned_weights_and_temperature_are_recorded_and_applied():
    inputs = fold_inputs()
    record = learned(inputs)
    assert record["weights_learned"] and sum(record["weights"].values()) == pytest.approx(1.0)
    fused = inputs["metadata_probs"]
    tempered = temper_table(fused, 2.0, CLASSES)
    assert np.allclose(tempered[COLUMNS].sum(axis=1), 1.0)
    assert (tempered[COLUMNS].to_numpy().argmax(1) == fused[COLUMNS].to_numpy().argmax(1)).all()
    metrics = learned_metrics(
        {**record, "temperature": 2.0}, fused, tempered, inputs["folds"], CLASSES
    )
    assert metrics["brier_untempered"] != metrics["brier_tempered"]
    assert {"ece_untempered", "ece_tempered", "learned_visits"} <= set(metrics)
    records = [{"repeat": 1, "fold": f, "weights": record["weights"], **metrics} for f in (2, 1)]
    table = learned_table(records, ["metadata", "thermal"])
    assert list(table.columns) == [
        "repeat",
        "fold",
        "weight_metadata",
        "weight_thermal",
        "weights_learned",
        "temperature",
        "visits",
    ]
    assert table["fold"].tolist() == [1, 2]
    weights_only = learned_fusion(["weights"], ["metadata"], inputs, 2, {"metadata": 1.0}, CLASSES)
    assert weights_only == {
        "weights": {"metadata": 1.0},
        "weights_learned": False,
        "temperature": None,
        "visits": int((inputs["folds"]["fold"] != 2).sum()),
    }


def test_the_bundle_fuses_as_the_final_fusion_learned():
    spec = {"fusion": {"metadata_weight": 0.7, "weights": None}}
    final = [
        {"combination": "metadata", "weights": {"metadata": 1.0}, "fit_kappa": 0.9},
        {
            "combination": "metadata+thermal",
            "weights": {"metadata": 0.55, "thermal": 0.45},
            "temperature": 1.4,
            "learned_visits": 30,
        },
    ]
    assert with_learned_fusion(spec, final[:1]) == spec
    bundled = with_learned_fusion(spec, final)
    fusion, temperature = combination_fusion(bundled, ["metadata", "thermal"])
    assert fusion == {"metadata_weight": 0.7, "weights": {"metadata": 0.55, "thermal": 0.45}}
    assert temperature == 1.4
    assert combination_fusion(bundled, ["metadata"]) == (spec["fusion"], None)
