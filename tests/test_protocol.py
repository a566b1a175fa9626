import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import prob_columns
from fusion_dag.evaluate import kappa
from fusion_dag.metadata import fold_probabilities
from fusion_dag.protocol import (
    FIXED,
    LEAKY_SCREEN,
    LEAKY_WEIGHTS,
    LEARNED,
    PROTOCOL_COLUMNS,
    SCREENED,
    TEMPERED,
    choices_table,
    image_split,
    leaky_weights,
    nested_choice,
    nested_screen_fold,
    protocol_markdown,
    protocol_oofs,
    protocol_table,
    screen_repeat,
    screen_tables,
    screened_counts,
    settings_of,
    validation_arrays,
)
from tests.conftest import CLASSES, TINY, run_snakemake, scheduled_jobs
from tests.test_screen import samples_and_folds

COLUMNS = prob_columns(CLASSES)
FOREST = {"n_estimators": 20, "min_samples_leaf": 2, "class_weight": "balanced", "inner_folds": 3}
FIXED_WEIGHTS = {"metadata": 0.7, "thermal": 0.3}
FRACTION = {"thermal": 0.25}
EVALUATION = {"bootstrap": 200, "confidence": 0.95}


def member_table(folds, fold, rows, skill, rng):
    """A member's probability table of one fold: ``rows`` of ``folds`` with ``split``, each row
    drawn towards its label by ``skill``."""
    chosen = folds[rows].reset_index(drop=True)
    noise = rng.dirichlet([1.0] * 3, len(chosen))
    onehot = np.eye(3)[chosen["label"].map(CLASSES.index)]
    table = pd.DataFrame(
        {"id": chosen["id"], "split": np.where(chosen["fold"] == fold, "val", "train")}
    )
    table[COLUMNS] = (1 - skill) * noise + skill * onehot
    return table


def generated_members(folds, seed=0):
    """fold -> member -> table: a forest-like member on every visit, an image member on 85 %."""
    rng = np.random.default_rng(seed)
    has_image = rng.random(len(folds)) < 0.85
    tables = {}
    for fold in sorted(folds["fold"].unique()):
        tables[int(fold)] = {
            "metadata": member_table(folds, fold, np.ones(len(folds), bool), 0.3, rng),
            "thermal": member_table(folds, fold, has_image, 0.2, rng),
        }
    return tables


def test_the_settings_of_a_combination_are_those_that_make_sense():
    assert settings_of(["metadata", "thermal"]) == [
        FIXED,
        LEARNED,
        TEMPERED,
        LEAKY_WEIGHTS,
        SCREENED,
        LEAKY_SCREEN,
    ]
    assert settings_of(["metadata"]) == [FIXED, TEMPERED, SCREENED, LEAKY_SCREEN]
    assert settings_of(["thermal"]) == [FIXED, TEMPERED]


def test_leaky_weights_beat_every_weighting_applied_to_all_folds_on_the_visits_they_chose_on():
    """The leaky weights' pooled validation kappa is at least that of the fixed weights and of
    each fold's nested weights (applied to every fold): they were picked on those visits."""
    _, folds = samples_and_folds(seed=2)
    tables = generated_members(folds)
    members = ["metadata", "thermal"]
    leaky = leaky_weights(tables, members, folds, CLASSES)
    stacked, truth = validation_arrays(tables, members, folds, CLASSES)

    def pooled(weights):
        point = np.array([weights[m] for m in members])
        return kappa(truth, np.tensordot(point, stacked, axes=1).argmax(axis=1), 3)

    split = image_split(members, FRACTION, 42)
    nested = [
        nested_choice(members, tables[fold], folds, fold, FIXED_WEIGHTS, split, CLASSES)
        for fold in tables
    ]
    candidates = [FIXED_WEIGHTS] + [choice["weights"] for choice in nested]
    assert all(pooled(leaky) >= pooled(weights) for weights in candidates)
    # A real choice, not the fixed weights by default.
    assert pooled(leaky) > pooled(FIXED_WEIGHTS) or leaky == FIXED_WEIGHTS


def with_labels_shuffled(samples, folds, rows, rng):
    """``samples`` and ``folds`` with the labels of ``rows`` permuted among them and every
    metadata column of those rows shuffled (patients and folds unchanged)."""
    changed, changed_folds = samples.copy(), folds.copy()
    changed.loc[rows, "label"] = samples.loc[rng.permutation(rows), "label"].to_numpy()
    changed_folds["label"] = changed["label"]
    for column in ("signal", "noise", "site"):
        changed.loc[rows, column] = samples.loc[rng.permutation(rows), column].to_numpy()
    return changed, changed_folds


def test_validation_visits_never_reach_a_folds_weights_temperature_or_screen():
    """The guarantee: permuting fold 2's validation visits' labels (among themselves, so every
    visit keeps its patient and fold) and shuffling their metadata and member probabilities
    changes no nested weight, temperature or screened visit of fold 2; the same permutation
    of its training visits changes them (the test can fail)."""
    samples, folds = samples_and_folds(seed=4)
    tables = generated_members(folds, seed=1)[2]
    members = ["metadata", "thermal"]
    split = image_split(members, FRACTION, 42)

    def choose(folds, tables, samples):
        choice = nested_choice(members, tables, folds, 2, FIXED_WEIGHTS, split, CLASSES)
        screened, probs = nested_screen_fold(samples, folds, 2, CLASSES, FOREST, 42, 1)
        return choice, screened, probs[probs["split"] == "train"]

    before = choose(folds, tables, samples)
    rng = np.random.default_rng(9)

    def permuted(rows):
        changed_samples, changed_folds = with_labels_shuffled(samples, folds, rows, rng)
        ids = set(folds.loc[rows, "id"])
        changed_tables = {}
        for member, table in tables.items():
            table = table.copy()
            mine = np.flatnonzero(table["id"].isin(ids))
            table.loc[mine, COLUMNS] = table.loc[rng.permutation(mine), COLUMNS].to_numpy()
            changed_tables[member] = table
        return choose(changed_folds, changed_tables, changed_samples)

    after = permuted(np.flatnonzero(folds["fold"] == 2))
    assert after[0]["weights"] == before[0]["weights"]
    assert after[0]["temperature"] == before[0]["temperature"]
    pd.testing.assert_frame_equal(after[1], before[1])
    pd.testing.assert_frame_equal(after[2], before[2])
    leaked = permuted(np.flatnonzero(folds["fold"] != 2))
    assert (leaked[0]["weights"], leaked[0]["temperature"]) != (
        before[0]["weights"],
        before[0]["temperature"],
    )
    assert not leaked[1].equals(before[1])


@pytest.fixture(scope="module")
def generated_run():
    """A generated repeat with planted label errors: samples, folds, the forest's fold
    probabilities (the metadata stage's), an image member's, and both screens."""
    samples, folds = samples_and_folds(seed=5)
    rng = np.random.default_rng(11)
    planted = rng.choice(len(samples), 25, replace=False)
    samples.loc[planted, "label"] = samples.loc[planted, "label"].map(
        {"I": "R", "P": "I", "R": "P"}
    )
    folds["label"] = samples["label"]
    images = generated_members(folds, seed=3)
    metadata = {
        fold: fold_probabilities(samples, folds, fold, CLASSES, FOREST, 42, 1)[0] for fold in images
    }
    oof = pd.concat([table[table["split"] == "val"] for table in metadata.values()])
    screened, screen_probs = screen_repeat(samples, folds, oof, CLASSES, FOREST, 42, 1)
    member_probs = {
        "metadata": {(1, fold): table for fold, table in metadata.items()},
        "thermal": {(1, fold): images[fold]["thermal"] for fold in images},
    }
    return samples, folds, member_probs, screened, screen_probs


def test_the_nested_screen_never_removes_validation_visits_and_the_leaky_screen_does(
    generated_run,
):
    _, folds, _, screened, probs = generated_run
    for fold in (1, 2, 3):
        mine = screened[(screened["setting"] == SCREENED) & (screened["fold"] == fold)]
        assert len(mine) and not set(mine["id"]) & set(folds.loc[folds["fold"] == fold, "id"])
        table = probs[(probs["setting"] == SCREENED) & (probs["fold"] == fold)]
        validation = table.loc[table["split"] == "val", "id"]
        assert set(validation) == set(folds.loc[folds["fold"] == fold, "id"])
        assert not set(table["id"]) & set(mine["id"])
    dropped = set(screened.loc[screened["setting"] == LEAKY_SCREEN, "id"])
    leaky = probs[(probs["setting"] == LEAKY_SCREEN) & (probs["split"] == "val")]
    # Every visit is some fold's validation visit: the leaky screen removes validation visits.
    assert dropped and not dropped & set(leaky["id"])
    assert len(leaky) == len(folds) - len(dropped)
    assert screened.loc[screened["setting"] == LEAKY_SCREEN, "fold"].isna().all()


def test_the_protocol_table_puts_each_leaky_row_beside_its_nested_counterpart(generated_run):
    _, folds, member_probs, screened, screen_probs = generated_run
    screens = screen_tables(screen_probs)
    combinations = {"metadata": ["metadata"], "metadata+thermal": ["metadata", "thermal"]}
    fixed = {"metadata": {"metadata": 1.0}, "metadata+thermal": FIXED_WEIGHTS}
    oofs, choices = protocol_oofs(
        combinations, member_probs, {1: screens}, folds, fixed, FRACTION, {1: 42}, CLASSES
    )
    # The fixed row is the V3 fusion: the weighted mean of the members' validation rows.
    fused = oofs[("metadata+thermal", FIXED)].set_index("id")[COLUMNS]
    expected = []
    for fold in (1, 2, 3):
        metadata = member_probs["metadata"][(1, fold)].query("split == 'val'").set_index("id")
        thermal = member_probs["thermal"][(1, fold)].query("split == 'val'").set_index("id")
        shared = metadata.index.intersection(thermal.index)
        expected.append(0.7 * metadata.loc[shared, COLUMNS] + 0.3 * thermal.loc[shared, COLUMNS])
    expected = pd.concat(expected).loc[fused.index]
    np.testing.assert_allclose(fused.to_numpy(), expected.to_numpy(), atol=1e-6)
    counts = screened_counts(screened.assign(repeat=1))
    table = protocol_table(oofs, choices, counts, CLASSES, EVALUATION, 42)
    assert list(table.columns) == PROTOCOL_COLUMNS
    rows = table.set_index(["combination", "setting"])
    pair = rows.loc["metadata+thermal"]
    assert list(pair.index) == settings_of(["metadata", "thermal"])
    assert not pair.loc[LEAKY_WEIGHTS, "nested"] and pair.loc[LEARNED, "nested"]
    assert pair.loc[LEAKY_WEIGHTS, "counterpart"] == LEARNED
    assert pair.loc[LEAKY_WEIGHTS, "overstatement"] == pytest.approx(
        pair.loc[LEAKY_WEIGHTS, "kappa"] - pair.loc[LEARNED, "kappa"]
    )
    assert pair.loc[LEAKY_SCREEN, "overstatement"] == pytest.approx(
        pair.loc[LEAKY_SCREEN, "kappa"] - pair.loc[SCREENED, "kappa"]
    )
    # The leaky screen scores only the visits it kept; every other row every complete visit.
    assert pair.loc[LEAKY_SCREEN, "visits"] < pair.loc[SCREENED, "visits"]
    assert pair.loc[SCREENED, "visits"] == pair.loc[FIXED, "visits"]
    assert pair.loc[LEAKY_SCREEN, "visits_screened"] == (screened["setting"] == LEAKY_SCREEN).sum()
    assert pd.isna(pair.loc[FIXED, "kappa_gain"]) and pd.isna(pair.loc[FIXED, "overstatement"])
    assert pair.loc[LEARNED, "p_value"] <= 1 and pair.loc[TEMPERED, "temperature"] > 0
    assert (pair["kappa_ci_low"] <= pair["kappa"]).all() and (
        pair["kappa"] <= pair["kappa_ci_high"]
    ).all()
    assert pair.loc[FIXED, "metadata_weight"] == pytest.approx(0.7)
    alone = rows.loc["metadata"]
    assert list(alone.index) == settings_of(["metadata"])
    per_fold = choices_table(choices)
    assert len(per_fold) == 3 * (len(pair) + len(alone))
    assert per_fold.loc[per_fold["combination"] == "metadata", "weight_thermal"].isna().all()
    markdown = protocol_markdown(table, 0.95)
    assert markdown.count("(optimistic)") == 3 and "refit only the forest" in markdown


HEADLINE_FILES = (
    "fusion_results.tsv",
    "fusion_results.md",
    "comparisons.tsv",
    "comparisons.md",
    "report/front_page.rst",
)


@pytest.mark.workflow
@pytest.mark.xdist_group("tiny_run")
def test_the_protocol_target_trains_only_forests_and_leaves_the_headline_alone(tiny_copy):
    results = tiny_copy / "results"
    before = {name: (results / name).read_bytes() for name in HEADLINE_FILES}
    result = run_snakemake(tiny_copy, "--cores", "2", "protocol", config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    # One forest job per repeat and the aggregation: no image, fusion or headline job.
    jobs = scheduled_jobs(result.stdout + result.stderr)
    repeats = TINY["cv"]["repeats"]
    assert jobs == {"protocol_screen": repeats, "aggregate_protocol": 1, "protocol": 1}
    # Leaky rows never reach the headline, the comparisons or the verdicts: byte-identical.
    assert {name: (results / name).read_bytes() for name in HEADLINE_FILES} == before
    table = pd.read_csv(results / "protocol.tsv", sep="\t").set_index(["combination", "setting"])
    headline = pd.read_csv(results / "fusion_results.tsv", sep="\t")
    for row in headline[headline["rows"] == "complete"].itertuples():
        # The fixed row recomputed from the members' fold probabilities is the fusion's own.
        fixed = table.loc[(row.combination, FIXED)]
        assert fixed["kappa"] == pytest.approx(row.kappa_mean, abs=1e-12)
        assert fixed["visits"] == row.n_rows
        assert fixed["brier"] == pytest.approx(row.brier_mean, abs=1e-6)
        assert list(table.loc[row.combination].index) == settings_of(row.combination.split("+"))
    oof = pd.read_csv(results / "protocol/oof.tsv", sep="\t")
    fused = oof[(oof["combination"] == "metadata+thermal_map") & (oof["setting"] == FIXED)]
    own = pd.read_csv(results / "fusion/metadata+thermal_map/oof.tsv", sep="\t")
    merged = fused.merge(own, on=["repeat", "fold", "id"], validate="1:1")
    assert len(merged) == len(own) == len(fused)
    for column in COLUMNS:
        np.testing.assert_allclose(merged[f"{column}_x"], merged[f"{column}_y"], atol=1e-5)
    pair = table.loc["metadata+thermal_map"]
    assert set(pair.loc[~pair["nested"], "counterpart"]) == {LEARNED, SCREENED}
    assert pair.loc[LEAKY_SCREEN, "visits"] < pair.loc[SCREENED, "visits"]
    choices = pd.read_csv(results / "protocol/choices.tsv", sep="\t")
    assert len(choices) == TINY["cv"]["folds"] * repeats * len(table)
    screened = pd.read_csv(results / "protocol/repeat1/screened.tsv", sep="\t")
    folds = pd.read_csv(results / "folds.tsv", sep="\t")
    for fold, rows in screened[screened["setting"] == SCREENED].groupby("fold"):
        assert not set(rows["id"]) & set(folds.loc[folds["fold"] == fold, "id"])
    assert "optimistic" in (results / "protocol.md").read_text()


def test_the_protocol_refuses_a_run_with_label_screen(tmp_path):
    config = {**TINY, "label_screen": {"method": "confident_learning"}}
    result = run_snakemake(tmp_path, "-n", "protocol", config=config)
    assert result.returncode != 0 and "label_screen: null" in result.stdout + result.stderr
