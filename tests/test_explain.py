"""The explanations: permutation importance, the leak screen, contributions, member drops and
the review list, on generated tables, and the explain target on the tiny end-to-end run."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import cohen_kappa_score

from fusion_dag.artifacts import GROUP, ID, LABEL
from fusion_dag.demo import metadata_table, simulate_visits
from fusion_dag.explain import (
    LEAK_DROP,
    contributions,
    fold_importance,
    forest_importance,
    importance_table,
    leak_signals,
    leak_thresholds,
    leak_warnings,
    member_drop_table,
    review_table,
    row_contributions,
    screen_columns,
)
from fusion_dag.folds import assign_folds
from fusion_dag.metadata import build_pipeline, feature_frame, fit_on
from fusion_dag.prepare import prepare_inputs
from fusion_dag.weights import fuse_rows
from tests.conftest import CLASSES, COLUMNS, TINY, run_snakemake, scheduled_jobs

PROBS = ["prob_I", "prob_P", "prob_R"]
FOREST = {"n_estimators": 60, "min_samples_leaf": 2, "class_weight": "balanced"}
EVALUATION = {"bootstrap": 200, "confidence": 0.95}


def planted_table(patients=120, seed=0) -> pd.DataFrame:
    """Visits whose label is cut from a latent value that one numeric column (``planted``) and
    one text column (``stage``, three levels, noisier) carry; ``noise`` and ``colour`` carry
    nothing."""
    rng = np.random.default_rng(seed)
    group = np.repeat([f"G{p:03d}" for p in range(patients)], 3)
    latent = rng.normal(size=len(group))
    label = np.asarray(CLASSES)[np.digitize(latent, [-0.55, 1.2])]
    return pd.DataFrame(
        {
            ID: [f"V{i:04d}" for i in range(len(group))],
            GROUP: group,
            LABEL: label,
            "planted": latent + rng.normal(0, 0.3, len(group)),
            "noise": rng.normal(size=len(group)),
            "stage": np.asarray(["early", "mid", "late"])[
                np.digitize(latent + rng.normal(0, 0.8, len(group)), [-0.3, 0.8])
            ],
            "colour": rng.choice(["red", "green", "blue", "grey"], size=len(group)),
        }
    )


class RecordingPipeline(ClassifierMixin, BaseEstimator):
    """A fitted pipeline that records every table it is asked to predict."""

    def __init__(self, pipeline, seen=None):
        self.pipeline, self.seen = pipeline, seen if seen is not None else []

    @property
    def classes_(self):
        return self.pipeline.classes_

    def fit(self, x, y):
        return self

    def predict(self, x):
        self.seen.append(x.copy())
        return self.pipeline.predict(x)


@pytest.fixture(scope="module")
def planted_importance():
    """Permutation importance of a forest fit on half the planted table's patients, measured
    on the other half, with every table the forest was asked to predict."""
    table = planted_table()
    train = table[GROUP] < "G060"
    pipeline = build_pipeline(FOREST, seed=1)
    fit_on(pipeline, table[train], np.searchsorted(CLASSES, table.loc[train, LABEL]), 1)
    recording = RecordingPipeline(pipeline)
    held_out = table[~train]
    importance = fold_importance(recording, held_out, CLASSES, permutations=10, seed=3)
    return importance.set_index("feature"), recording.seen, held_out


def test_the_planted_column_ranks_first_and_noise_sits_near_zero(planted_importance):
    importance, _, _ = planted_importance
    ranked = importance["importance"].sort_values(ascending=False)
    assert ranked.index[0] == "planted"
    assert ranked["planted"] > 0.2
    # Noise: within 0.03 kappa of zero (its 10 shuffles' spread is about 0.01 here).
    assert abs(importance.loc["noise", "importance"]) < 0.03
    assert abs(importance.loc["colour", "importance"]) < 0.03


def test_one_hot_levels_of_a_text_column_are_permuted_together(planted_importance):
    importance, seen, held_out = planted_importance
    # One row per raw column: the text columns are not split into their one-hot levels.
    assert sorted(importance.index) == ["colour", "noise", "planted", "stage"]
    assert importance.loc["stage", "importance"] > 0.05
    original = sorted(held_out["stage"])
    shuffled = [x for x in seen if not x["stage"].equals(feature_frame(held_out)["stage"])]
    assert shuffled, "no prediction saw a shuffled stage column"
    for x in shuffled:
        # Every visit keeps exactly one level (a permutation of the column's own values),
        # and the other columns are untouched.
        assert sorted(x["stage"]) == original
        assert x["planted"].equals(feature_frame(held_out)["planted"])


def demo_metadata(folder, patients: int, seed: int, columns: list) -> pd.DataFrame:
    """The demo's samples table, prepared, with its ``columns``: write_demo's table (the same
    draws in the same order) without writing its images, so a larger demo stays quick."""
    rng = np.random.default_rng(seed)
    table = metadata_table(simulate_visits(patients, rng), rng)
    path = folder / "samples.csv"
    table[[COLUMNS["id"], COLUMNS["group"], COLUMNS["label"], *columns]].to_csv(path, index=False)
    samples, _, _ = prepare_inputs(path, COLUMNS, CLASSES, {}, "drop")
    return samples


# The demo's strongest columns and one that carries nothing.
GENUINE = ["ankle_brachial_index", "exudate_level", "granulation_pct", "wbc_count"]


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    """The leak screen on a 120-patient demo with two of bench/leaks.py's leaks planted: the
    label's code on 40 % of the visits and a referral flag on 85 % of the R visits (3 % of
    the others); forests on one patient-grouped 3-fold partition, as the explain target."""
    from bench.leaks import planted_leaks

    samples = demo_metadata(tmp_path_factory.mktemp("screen"), 120, 7, GENUINE)
    leaks = planted_leaks(samples, seed=1007)
    table = samples.assign(
        phase_code=leaks["phase_code"]["phase_code"],
        closure_referral=np.asarray(leaks["closure_referral"]["closure_referral"]),
    )
    truth = np.searchsorted(CLASSES, table[LABEL])
    folds = assign_folds(table, 3, 42, CLASSES).assign(repeat=1)
    records = []
    for fold in (1, 2, 3):
        train = (folds["fold"] != fold).to_numpy()
        pipeline = fit_on(build_pipeline(FOREST, seed=42), table[train], truth[train], 1)
        records.append({"repeat": 1, "fold": fold, "model": pipeline})
    settings = {"classes": CLASSES, "permutations": 3, "seed": 42, "n_jobs": 1}
    per_fold = forest_importance(table, folds, records, lambda model: model, settings)
    screen = screen_columns(table, CLASSES, FOREST, folds=3, seed=42)
    return importance_table(per_fold, screen).set_index("feature")


def test_the_leak_screen_names_a_partial_label_code_and_a_referral_flag(screened):
    for leak in ("phase_code", "closure_referral"):
        assert screened.loc[leak, "leak_suspect"], screened.loc[leak].to_dict()
        assert set(screened.loc[leak, "leak_signals"].split(", ")) <= set(SIGNALS)
    # The code, written on 40 % of the visits, is the label wherever it is filled.
    code = screened.loc["phase_code"]
    assert code["n_filled"] == pytest.approx(0.4 * code["n_visits"], rel=0.25)
    assert code["alone_auc"] > 0.95
    # The demo's own columns, the strongest included, fire nothing.
    assert (screened.loc[GENUINE, "leak_signals"] == "").all()
    assert not screened.loc[GENUINE, "leak_suspect"].any()
    # One warning per suspect, naming the column, each signal that fired and the exclusion.
    warnings = leak_warnings(screened.reset_index())
    assert len(warnings) == 2
    for line in warnings:
        leak = "phase_code" if "'phase_code'" in line else "closure_referral"
        assert f"columns: {{exclude: [{leak}]}}" in line
        for signal in screened.loc[leak, "leak_signals"].split(", "):
            assert f"{signal} (" in line


SIGNALS = ["alone", "auc", "drop", "importance"]
# A screened column far from every threshold on a table of 575 visits.
QUIET = {
    "alone_kappa": 0.1,
    "forest_kappa": 0.3,
    "alone_share": 1 / 3,
    "alone_auc": 0.6,
    "n_filled": 500,
    "n_visits": 575,
    "drop_kappa": 0.0,
}


@pytest.mark.parametrize(
    ("signal", "measured"),
    [
        ("alone", {"alone_kappa": 0.28, "alone_share": 0.93}),
        ("auc", {"alone_auc": 0.9}),
        ("drop", {"drop_kappa": 0.15}),
        ("importance", {"importance": 0.6}),
    ],
)
def test_each_signal_fires_on_its_own_and_is_named(signal, measured):
    columns = ["leak", "a", "b"]
    screen = pd.DataFrame([{"feature": c, **QUIET} for c in columns])
    for name, value in measured.items():
        if name != "importance":
            screen.loc[0, name] = value
    importance = measured.get("importance", 0.05)
    per_fold = pd.DataFrame({"feature": columns, "importance": [importance, 0.1, 0.05]})
    table = importance_table(per_fold, screen).set_index("feature")
    assert table.loc["leak", "leak_signals"] == signal
    assert table["leak_suspect"].to_dict() == {"leak": True, "a": False, "b": False}
    assert table.loc["leak", "importance_ratio"] == pytest.approx(importance / 0.1)
    (line,) = leak_warnings(table.reset_index())
    assert line.startswith(f"possible leak: column 'leak' fires {signal} (")


def test_a_small_tables_noise_does_not_fire_alone_or_drop():
    # A kappa of 0.2 alone (the whole forest's 0.22) and a drop of 0.15 over the other columns'
    # are a finding on 575 visits but within the noise of 100: the thresholds grow as
    # 1 / sqrt(visits).
    row = {**QUIET, "alone_kappa": 0.2, "forest_kappa": 0.22, "drop_excess": 0.15}
    large = pd.Series({**row, "importance_ratio": 1.0})
    small = pd.Series({**row, "n_visits": 100, "importance_ratio": 1.0})
    assert leak_signals(large) == ["alone", "drop"]
    assert leak_signals(small) == []
    assert leak_thresholds(100)["drop"] > 1.5 * leak_thresholds(575)["drop"]
    assert leak_thresholds(575)["drop"] == pytest.approx(LEAK_DROP, abs=0.005)


def test_drop_is_judged_against_the_other_columns_drops():
    # The one fit on every column scored high by chance: the forest's kappa falls about 0.07
    # without any column (the tiny run's offset). A column that loses 0.20, 0.13 above the
    # rest, fires nothing at 155 visits (the threshold 2.4 / sqrt(155) = 0.19); one 0.26 above
    # them fires drop.
    columns = [f"c{index}" for index in range(8)]
    drops = [0.20, 0.33, 0.06, 0.07, 0.08, 0.07, 0.09, 0.05]
    screen = pd.DataFrame(
        [
            {**QUIET, "feature": column, "n_visits": 155, "drop_kappa": drop}
            for column, drop in zip(columns, drops, strict=True)
        ]
    )
    per_fold = pd.DataFrame({"feature": columns, "importance": np.linspace(0.1, 0.03, 8)})
    table = importance_table(per_fold, screen).set_index("feature")
    assert table.loc["c0", "drop_excess"] == pytest.approx(0.20 - 0.07)
    assert table.loc["c1", "drop_excess"] == pytest.approx(0.33 - 0.07)
    assert table["leak_signals"].to_dict() == {c: "drop" if c == "c1" else "" for c in columns}
    (line,) = leak_warnings(table.reset_index())
    assert "falls 0.33 without it, 0.26 more than without the median other column" in line


def member_tables(patients=60, repeats=2, seed=0):
    """Out-of-fold tables of three members (metadata informative, thermal weakly, depth noise;
    depth missing for a tenth of the visits) and the folds table, ``repeats`` x 3 folds."""
    rng = np.random.default_rng(seed)
    group = np.repeat([f"G{p:02d}" for p in range(patients)], 2)
    n = len(group)
    label = rng.choice(CLASSES, size=n, p=[0.3, 0.6, 0.1])
    truth = np.searchsorted(CLASSES, label)
    ids = [f"V{i:03d}" for i in range(n)]
    folds, tables = [], {"metadata": [], "thermal_map": [], "depth_map": []}
    for repeat in range(1, repeats + 1):
        fold_of_group = rng.integers(1, 4, patients)
        fold = fold_of_group[np.repeat(np.arange(patients), 2)]
        folds.append(
            pd.DataFrame({ID: ids, GROUP: group, LABEL: label, "repeat": repeat, "fold": fold})
        )
        for member, signal in [("metadata", 2.5), ("thermal_map", 1.0), ("depth_map", 0.0)]:
            logits = rng.normal(size=(n, 3)) + signal * np.eye(3)[truth]
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            frame = pd.DataFrame(probs, columns=PROBS)
            frame.insert(0, ID, ids)
            frame.insert(1, GROUP, group)
            frame.insert(2, LABEL, label)
            frame.insert(0, "fold", fold)
            frame.insert(0, "repeat", repeat)
            if member == "depth_map":
                frame = frame[np.arange(n) % 10 != 0]
            tables[member].append(frame)
    return (
        {m: pd.concat(parts, ignore_index=True) for m, parts in tables.items()},
        pd.concat(folds, ignore_index=True),
    )


def test_contributions_sum_to_the_fused_probability_of_each_row():
    tables, folds = member_tables()
    members = ["metadata", "thermal_map", "depth_map"]
    fusion = {"metadata_weight": 0.7, "weights": None}
    table = contributions(members, tables, folds, CLASSES, fusion)
    parts = table[[f"contribution_{m}" for m in members]].sum(axis=1)
    np.testing.assert_allclose(parts, table["prob_predicted"], atol=1e-6)
    # The fused probability is predict's: 0.7 x RF + 0.15 x each image, or 0.7 / 0.3 without
    # a depth map.
    first = folds[folds["repeat"] == 1]
    probs = {m: t.loc[t["repeat"] == 1, [ID, *PROBS]] for m, t in tables.items()}
    fused = fuse_rows(first, probs, members, {"classes": CLASSES, "fusion": fusion})
    repeat1 = table[table["repeat"] == 1].set_index(ID)
    expected = fused.set_index(ID)
    chosen = expected.loc[repeat1.index, "predicted"]
    assert (repeat1["predicted"] == chosen).all()
    lookup = expected.loc[repeat1.index, PROBS].to_numpy()
    picked = lookup[np.arange(len(lookup)), np.searchsorted(CLASSES, chosen)]
    np.testing.assert_allclose(repeat1["prob_predicted"], picked, atol=1e-12)
    no_depth = repeat1["members_used"] == "metadata+thermal_map"
    assert no_depth.sum() == len(repeat1) // 10
    assert (repeat1.loc[no_depth, "weight_depth_map"] == 0).all()
    np.testing.assert_allclose(repeat1.loc[no_depth, "weight_thermal_map"], 0.3)
    np.testing.assert_allclose(repeat1.loc[~no_depth, "weight_thermal_map"], 0.15)


def test_a_new_tables_contributions_sum_to_its_predictions():
    tables, folds = member_tables()
    members = ["metadata", "thermal_map"]
    first = folds[folds["repeat"] == 1]
    probs = {m: t.loc[t["repeat"] == 1, [ID, *PROBS]] for m, t in tables.items()}
    spec = {"classes": CLASSES, "fusion": {"metadata_weight": 0.7, "weights": None}}
    fused = fuse_rows(first, probs, members, spec)
    table = row_contributions(fused, members, CLASSES, spec["fusion"])
    parts = table["contribution_metadata"] + table["contribution_thermal_map"]
    np.testing.assert_allclose(parts, table["prob_predicted"], atol=1e-6)


def complete_oof(tables, members):
    """The combination's out-of-fold rows: the visits every member scored."""
    keys = tables[members[0]][["repeat", "fold", ID, GROUP, LABEL]]
    for member in members[1:]:
        keys = keys.merge(tables[member][["repeat", ID]], on=["repeat", ID])
    return keys


def test_dropping_a_member_of_weight_zero_changes_nothing():
    tables, _ = member_tables()
    members = ["metadata", "thermal_map", "depth_map"]
    name = "+".join(members)
    fusion = {"weights": {"metadata": 0.6, "thermal_map": 0.4, "depth_map": 0.0}}
    table = member_drop_table(
        {name: members},
        {name: complete_oof(tables, members)},
        tables,
        CLASSES,
        fusion,
        EVALUATION,
        seed=42,
    ).set_index("member")
    depth = table.loc["depth_map"]
    assert depth["weight"] == 0
    assert depth["kappa_dropped"] == depth["kappa_full"]
    assert depth["kappa_loss"] == 0 and depth["kappa_loss_folds"] == 0
    assert depth["p_value"] == 1 and depth["verdict"] == "inconclusive"
    # The informative forest, dropped, loses kappa (so the drop does change the fusion).
    metadata = table.loc["metadata"]
    assert metadata["kappa_loss"] > 0.2
    assert metadata["kappa_loss_ci_low"] <= metadata["kappa_loss_folds"]
    assert metadata["kappa_loss_folds"] <= metadata["kappa_loss_ci_high"]
    assert (table["p_holm"] >= table["p_value"]).all()


def pooled_kappa_of(fused: pd.DataFrame) -> float:
    """The headline's kappa of a predictions table with ``repeat``: pooled per repeat, then
    averaged."""
    return np.mean(
        [
            cohen_kappa_score(part[LABEL], np.asarray(CLASSES)[part[PROBS].to_numpy().argmax(1)])
            for _, part in fused.groupby("repeat")
        ]
    )


def test_member_drop_kappas_are_the_pooled_kappas_of_the_remaining_member():
    tables, _ = member_tables()
    members = ["metadata", "thermal_map"]
    name = "+".join(members)
    oof = complete_oof(tables, members)
    fusion = {"metadata_weight": 0.7, "weights": None}
    row = member_drop_table(
        {name: members}, {name: oof}, tables, CLASSES, fusion, EVALUATION, seed=42
    ).set_index("member")
    # Without thermal_map the fusion is metadata alone (weight 1).
    alone = tables["metadata"].merge(oof[["repeat", ID]], on=["repeat", ID])
    assert row.loc["thermal_map", "weights_dropped"] == "metadata=1.000"
    assert row.loc["thermal_map", "kappa_dropped"] == pytest.approx(pooled_kappa_of(alone), 1e-12)


@pytest.mark.parametrize(
    ("fusion", "expected"),
    [
        # metadata_weight: the visit without a depth map gets 0.70 / 0.30, not 0.82 / 0.18.
        ({"metadata_weight": 0.7, "weights": None}, "metadata=0.700, thermal_map=0.300"),
        # fusion.weights: the remaining members' weights rescaled, as predict rescales them.
        (
            {"weights": {"metadata": 0.5, "thermal_map": 0.3, "depth_map": 0.2}},
            "metadata=0.625, thermal_map=0.375",
        ),
    ],
)
def test_member_drop_fuses_the_rest_with_the_weights_predict_gives_a_visit_lacking_it(
    fusion, expected
):
    tables, folds = member_tables()
    members = ["metadata", "thermal_map", "depth_map"]
    name = "+".join(members)
    oof = complete_oof(tables, members)
    row = member_drop_table(
        {name: members}, {name: oof}, tables, CLASSES, fusion, EVALUATION, seed=42
    ).set_index("member")
    assert row.loc["depth_map", "weights_dropped"] == expected
    # predict's fusion of the same visits with their depth maps taken away.
    spec = {"classes": CLASSES, "fusion": fusion}
    parts = []
    for repeat, visits in oof.groupby("repeat"):
        probs = {
            m: tables[m].loc[tables[m]["repeat"] == repeat, [ID, *PROBS]]
            for m in ("metadata", "thermal_map")
        }
        fused = fuse_rows(visits, probs, ["metadata", "thermal_map"], spec)
        parts.append(fused.assign(repeat=repeat))
    predicted = pd.concat(parts, ignore_index=True)
    assert (predicted["members_used"] == "metadata+thermal_map").all()
    dropped = row.loc["depth_map", "kappa_dropped"]
    assert dropped == pytest.approx(pooled_kappa_of(predicted), abs=1e-12)


def test_review_lists_the_visits_wrong_in_every_repeat_only():
    tables, folds = member_tables()
    oof = tables["thermal_map"]
    wrong = oof[PROBS].to_numpy().argmax(1) != np.searchsorted(CLASSES, oof[LABEL])
    per_visit = pd.Series(wrong).groupby(oof[ID].to_numpy()).agg(["sum", "size"])
    expected = sorted(per_visit.index[per_visit["sum"] == 2])
    assert 0 < len(expected) < (per_visit["sum"] > 0).sum()  # some wrong only once
    review = review_table(oof, ["thermal_map"], tables, CLASSES)
    assert sorted(review[ID]) == expected
    assert (review["repeats_wrong"] == 2).all()
    assert (review["predicted"] != review[LABEL]).all()
    assert review["prob_label"].is_monotonic_increasing
    assert {"thermal_map_prob_I", "thermal_map_prob_R"} <= set(review.columns)


@pytest.fixture(scope="module")
def explained(tiny_run, tmp_path_factory):
    """A copy of the tiny run with the explain target run on it (5 shuffles per column: the
    tests read the tables' shape, not the importances' precision)."""
    workdir = tmp_path_factory.mktemp("explained") / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    config = {**TINY, "explain": {"visits": 12, "permutations": 5}}
    result = run_snakemake(workdir, "--cores", "2", "explain", config=config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return workdir, result


@pytest.mark.workflow
@pytest.mark.xdist_group("tiny_run")
def test_explain_writes_every_table_from_the_runs_own_models(explained):
    workdir, result = explained
    folder = workdir / "results" / "explain"
    importance = pd.read_csv(folder / "importance.tsv", sep="\t")
    # Every metadata column, once, measured on the 3 folds, the demo's real features no leak.
    assert importance["n_folds"].eq(TINY["cv"]["folds"]).all()
    assert importance["importance_mean"].is_monotonic_decreasing
    assert not importance["leak_suspect"].any(), importance[["feature", "leak_signals"]]
    assert "possible leak" not in (workdir / "logs/explain/importance.log").read_text()
    # Contributions sum to the fused probability, which is the fusion job's own on complete
    # visits (its Keras model computes in float32).
    table = pd.read_csv(folder / "contributions.tsv", sep="\t", dtype={ID: str})
    parts = table["contribution_metadata"] + table["contribution_thermal_map"]
    np.testing.assert_allclose(parts, table["prob_predicted"], atol=1e-6)
    oof = pd.read_csv(workdir / "results/fusion/metadata+thermal_map/oof.tsv", sep="\t")
    both = table[table["members_used"] == "metadata+thermal_map"].merge(oof, on=["repeat", ID])
    assert len(both) == len(oof)
    scored = both[PROBS].to_numpy()[
        np.arange(len(both)), np.searchsorted(CLASSES, both["predicted"])
    ]
    np.testing.assert_allclose(both["prob_predicted"], scored, atol=1e-5)
    drop = pd.read_csv(folder / "member_drop.tsv", sep="\t")
    assert sorted(drop["member"]) == ["metadata", "thermal_map"]
    assert set(drop["verdict"]) <= {"adds", "hurts", "inconclusive"}
    review = pd.read_csv(folder / "review.tsv", sep="\t")
    assert (review["predicted"] != review[LABEL]).all()


@pytest.mark.workflow
@pytest.mark.xdist_group("tiny_run")
def test_explain_draws_a_heatmap_per_chosen_visit_from_each_folds_checkpoint(explained):
    workdir, _ = explained
    folder = workdir / "results" / "explain" / "heatmaps" / "thermal_map"
    rows = pd.read_csv(folder / "heatmaps.tsv", sep="\t")
    # explain.visits (12) per fold of repeat 1, every one a validation visit of its fold.
    assert rows.groupby("fold").size().tolist() == [12] * TINY["cv"]["folds"]
    folds = pd.read_csv(workdir / "results/folds.tsv", sep="\t")
    folds = folds[folds["repeat"] == 1]
    held_out = rows.merge(folds, on=ID, suffixes=("", "_outer"))
    assert (held_out["fold"] == held_out["fold_outer"]).all()
    # Correct and wrong predictions both shown, each file on disk.
    assert rows["correct"].any() and (~rows["correct"]).any()
    assert all((folder / name).is_file() for name in rows["file"])
    # Each panel carries its fold's verdicts: the image stage's and whether its validation
    # visits all got one class (then its panels say so).
    for fold, part in rows.groupby("fold"):
        stage = workdir / f"results/image/thermal_map/repeat1/fold{fold}"
        probs = pd.read_csv(stage / "probs.tsv", sep="\t")
        val = probs.loc[probs["split"] == "val", ["prob_I", "prob_P", "prob_R"]].to_numpy()
        assert part["one_class"].eq(len(set(val.argmax(axis=1))) == 1).all()
        learned = json.loads((stage / "metrics.json").read_text())["learned"]
        assert part["learned"].eq(learned).all()
    log = (workdir / "logs/explain/heatmaps_thermal_map.log").read_text()
    assert log.count("reproduces the image stage") == TINY["cv"]["folds"]
    assert (workdir / "results/explain/heatmaps_thermal_map.png").stat().st_size > 10_000


@pytest.mark.workflow
@pytest.mark.xdist_group("tiny_run")
def test_the_report_has_an_explanations_section(explained):
    workdir, _ = explained
    report = workdir / "report.html"
    config = {**TINY, "explain": {"visits": 12, "permutations": 5}}
    result = run_snakemake(workdir, "--report", str(report), "explain", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text()
    assert "Explanations" in html
    for name in ("importance.png", "member_drop.tsv", "review.tsv", "heatmaps_thermal_map.png"):
        assert name in html, name


def test_explain_is_part_of_all_and_not_of_the_quick_start(tmp_path):
    def jobs(target):
        result = run_snakemake(tmp_path, "-n", target, config=TINY)
        assert result.returncode == 0, result.stderr[-3000:]
        return scheduled_jobs(result.stdout + result.stderr)

    everything, quick = jobs("all"), jobs("fusion_results")
    for rule in ("explain_importance", "explain_members", "explain_heatmaps"):
        assert everything.get(rule) == 1 and rule not in quick
    assert everything["final_fusion"] >= 1
