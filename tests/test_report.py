import json

import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import InputError
from fusion_dag.inference import holm_adjusted
from fusion_dag.plan import analysis_plan, plan_notice, plan_record, recorded_plan
from fusion_dag.report import (
    TEMPERED_COLUMNS,
    all_visits_oof,
    comparisons_markdown,
    comparisons_table,
    front_page,
    headline_table,
    markdown_table,
    per_fold_table,
    results_markdown,
    with_branches_learned,
)
from tests.conftest import CLASSES, fold_kappas, synthetic_oof

EVALUATION = {"bootstrap": 300, "confidence": 0.95, "primary": "a"}
# When the tests' analysis plans were written.
WRITTEN = "2025-01-01T00:00:00+00:00"


def a_plan(names, primary="metadata", confidence=0.9, folds=3, repeats=2) -> dict:
    """The analysis plan record of a run of the combinations ``names``, written at WRITTEN."""
    config = {
        "evaluation": {"bootstrap": 300, "confidence": confidence, "primary": primary},
        "cv": {"folds": folds, "repeats": repeats, "seed": 42},
        "columns": {"id": "sample_id", "group": "patient_id", "label": "label"},
    }
    combinations = {name: name.split("+") for name in names}
    return plan_record(None, analysis_plan(config, combinations), WRITTEN)


INTERVALS = ["kappa", "qwk", "balanced_accuracy", "macro_f1", "auc", "brier", "log_loss", "ece"]
HEADLINE = (
    ["combination", "rows", "n_folds", "n_repeats", "n_rows"]
    + [
        column
        for metric in INTERVALS
        for column in (
            [
                "kappa_mean",
                "kappa_std",
                "kappa_ci_low",
                "kappa_ci_high",
                "kappa_boot_low",
                "kappa_boot_high",
            ]
            if metric == "kappa"
            else [f"{metric}_mean", f"{metric}_ci_low", f"{metric}_ci_high"]
        )
    ]
    + ["accuracy_mean"]
    + [column for c in CLASSES for column in (f"f1_{c}_mean", f"recall_{c}_mean")]
    + ["train_kappa_mean", "gap_mean", "fit_kappa_mean", "folds_not_learned"]
    + [f"pred_frac_{c}" for c in CLASSES]
)


def per_fold(combination, oof):
    return [
        {
            "combination": combination,
            "repeat": r,
            "fold": f,
            "kappa": 0.3,
            "train_kappa": 0.4,
            "fit_kappa": 0.9,
            "branches_learned": True,
        }
        for r, f in sorted(set(zip(oof["repeat"], oof["fold"], strict=True)))
    ]


def test_headline_has_the_contract_columns_and_intervals_around_the_points():
    oofs = {"metadata": synthetic_oof(0.4), "thermal_map": synthetic_oof(0.1, seed=1)}
    records = per_fold("metadata", oofs["metadata"]) + per_fold("thermal_map", oofs["thermal_map"])
    headline = headline_table(per_fold_table(records), oofs, CLASSES, EVALUATION, 42)
    assert list(headline.columns) == HEADLINE
    assert headline["combination"].tolist() == ["metadata", "thermal_map"]
    row = headline.set_index("combination").loc["metadata"]
    assert (row["rows"], row["n_folds"], row["n_repeats"], row["n_rows"]) == ("complete", 3, 2, 180)
    for metric in INTERVALS:
        assert row[f"{metric}_ci_low"] <= row[f"{metric}_mean"] <= row[f"{metric}_ci_high"]
    assert row["kappa_boot_low"] <= row["kappa_mean"] <= row["kappa_boot_high"]
    assert row["gap_mean"] == pytest.approx(0.4 - row["kappa_mean"])
    assert headline.loc[0, "kappa_mean"] > headline.loc[1, "kappa_mean"]


def test_the_headline_interval_is_the_corrected_t_interval_around_the_pooled_kappa():
    from scipy import stats

    oof = synthetic_oof(0.3, seed=5)
    headline = headline_table(
        per_fold_table(per_fold("a", oof)), {"a": oof}, CLASSES, EVALUATION, 1
    )
    kappas, share = fold_kappas(oof)
    error = np.sqrt(kappas.var(ddof=1) * (1 / 6 + share))  # J = 6 folds; share about 1/2
    half = stats.t.ppf(0.975, df=5) * error
    row = headline.iloc[0]
    assert row["kappa_std"] == pytest.approx(kappas.std(ddof=1))
    assert row["kappa_ci_low"] == pytest.approx(row["kappa_mean"] - half, abs=1e-9)
    assert row["kappa_ci_high"] == pytest.approx(row["kappa_mean"] + half, abs=1e-9)


def test_a_model_compared_with_itself_differs_by_zero_and_is_inconclusive():
    oof = synthetic_oof(0.3)
    table = comparisons_table({"a+b": oof, "a": oof.copy()}, CLASSES, EVALUATION, 42)
    row = table.iloc[0]
    assert (row["combination"], row["versus"], row["primary"]) == ("a+b", "a", True)
    assert row["kappa_diff"] == 0.0 and row["kappa_diff_ci_low"] == row["kappa_diff_ci_high"] == 0.0
    assert row["p_value"] == 1.0 and row["p_holm"] == 1.0 and row["verdict"] == "inconclusive"


def test_each_family_is_adjusted_on_its_own_and_primary_marks_the_contrasts_with_the_primary():
    oofs = {
        "a": synthetic_oof(0.2, seed=1),
        "b": synthetic_oof(0.1, seed=2),
        "c": synthetic_oof(0.15, seed=3),
        "a+b": synthetic_oof(0.3, seed=4),
        "a+b+c": synthetic_oof(0.35, seed=5),
    }
    table = comparisons_table(oofs, CLASSES, {**EVALUATION, "bootstrap": 100}, 42)
    pairs = table[["combination", "versus", "family"]].values.tolist()
    assert pairs == [
        ["a+b", "a", "primary"],
        ["a+b", "b", "secondary"],
        ["a+b+c", "a", "primary"],
        ["a+b+c", "b", "secondary"],
        ["a+b+c", "c", "secondary"],
    ]
    assert table["primary"].tolist() == [True, False, True, False, False]
    for _, family in table.groupby("family"):
        assert family["p_holm"].to_numpy() == pytest.approx(holm_adjusted(family["p_value"]))
    assert (table["p_holm"] >= table["p_value"]).all()


FAMILY_OOFS = {
    "a": synthetic_oof(0.2, seed=1),
    "b": synthetic_oof(0.1, seed=2),
    "c": synthetic_oof(0.15, seed=3),
    "a+b": synthetic_oof(0.3, seed=4),
    "a+c": synthetic_oof(0.1, seed=6),
    "b+c": synthetic_oof(0.25, seed=7),
    "a+b+c": synthetic_oof(0.35, seed=5),
}


def test_an_image_only_fusion_is_compared_with_the_primary_in_the_secondary_family():
    oofs = {name: FAMILY_OOFS[name] for name in ("a", "b", "c", "b+c", "a+b")}
    table = comparisons_table(oofs, CLASSES, {**EVALUATION, "bootstrap": 100}, 42)
    rows = table[["combination", "versus", "family", "primary"]].values.tolist()
    assert rows == [
        ["b+c", "a", "secondary", False],  # b+c does not hold a: not a nested contrast
        ["b+c", "b", "secondary", False],
        ["b+c", "c", "secondary", False],
        ["a+b", "a", "primary", True],
        ["a+b", "b", "secondary", False],
    ]
    primary = table[table["family"] == "primary"]
    assert primary["p_holm"].tolist() == pytest.approx(primary["p_value"].tolist())  # one test


def test_the_all_visits_contrasts_are_their_own_secondary_family():
    oofs = {name: FAMILY_OOFS[name] for name in ("a", "b", "a+b", "a+b+c")}
    all_visits = {"a+b": FAMILY_OOFS["a+c"], "a+b+c": FAMILY_OOFS["b+c"]}
    table = comparisons_table(oofs, CLASSES, {**EVALUATION, "bootstrap": 100}, 42, all_visits)
    rows = table[["combination", "versus", "family", "rows", "primary"]].values.tolist()
    assert rows == [
        ["a+b", "a", "primary", "complete", True],
        ["a+b", "a", "secondary, all visits", "all", False],
        ["a+b", "b", "secondary", "complete", False],
        ["a+b+c", "a", "primary", "complete", True],
        ["a+b+c", "a", "secondary, all visits", "all", False],
        ["a+b+c", "b", "secondary", "complete", False],
    ]
    for _, family in table.groupby("family"):
        assert len(family) == 2
        assert family["p_holm"].to_numpy() == pytest.approx(holm_adjusted(family["p_value"]))


def test_the_primary_familys_holm_adjustment_does_not_depend_on_image_only_fusions():
    evaluation = {**EVALUATION, "bootstrap": 100}
    nested = {name: FAMILY_OOFS[name] for name in ("a", "b", "c", "a+b", "a+b+c")}
    without = comparisons_table(nested, CLASSES, evaluation, 42)
    with_image_only = comparisons_table(
        {**nested, "b+c": FAMILY_OOFS["b+c"]}, CLASSES, evaluation, 42
    )

    def family(table, name):
        rows = table[table["family"] == name].set_index(["combination", "versus"])
        return rows[["primary", "p_value", "p_holm", "verdict"]]

    primary = family(with_image_only, "primary")
    assert list(primary.index) == [("a+b", "a"), ("a+b+c", "a")]
    assert primary["p_holm"].to_numpy() == pytest.approx(holm_adjusted(primary["p_value"]))
    pd.testing.assert_frame_equal(primary, family(without, "primary"))
    # b+c's three contrasts (against a, b and c) join the secondary family instead.
    assert len(family(with_image_only, "secondary")) == len(family(without, "secondary")) + 3


def test_rows_all_scores_each_visit_with_the_members_it_has_as_predict_weighs_them():
    metadata = synthetic_oof(0.3, repeats=1, patients=12, seed=6)
    image = synthetic_oof(0.2, repeats=1, patients=12, seed=7)
    image = image[image["id"].isin(metadata["id"])].iloc[:20]  # some visits lack the image
    image = image.drop(columns="fold").merge(metadata[["id", "fold"]], on="id")
    folds = metadata[["id", "group", "label", "repeat", "fold"]]
    scored = all_visits_oof(
        ["metadata", "thermal_map"],
        {"metadata": metadata, "thermal_map": image},
        folds,
        CLASSES,
        {"metadata_weight": 0.7, "weights": None},
    )
    assert len(scored) == len(metadata) and list(scored.columns[:5]) == list(
        folds.columns[[3, 4, 0, 1, 2]]
    )
    columns = [f"prob_{c}" for c in CLASSES]
    by_id = scored.set_index("id")[columns]
    both = image["id"]
    expected = (
        0.7 * metadata.set_index("id").loc[both, columns] + 0.3 * image.set_index("id")[columns]
    )
    assert by_id.loc[both].to_numpy() == pytest.approx(expected.to_numpy(), abs=1e-12)
    alone = metadata[~metadata["id"].isin(both)].set_index("id")[columns]
    assert by_id.loc[alone.index].to_numpy() == pytest.approx(alone.to_numpy(), abs=1e-12)


def test_results_markdown_shows_the_primary_verdicts_before_the_headline():
    oofs = {"a": synthetic_oof(0.2, seed=1), "a+b": synthetic_oof(0.4, seed=2)}
    records = per_fold("a", oofs["a"]) + per_fold("a+b", oofs["a+b"])
    headline = headline_table(per_fold_table(records), oofs, CLASSES, EVALUATION, 42)
    comparisons = comparisons_table(oofs, CLASSES, EVALUATION, 42)
    text = results_markdown(headline, comparisons, EVALUATION, a_plan(oofs, "a", 0.95))
    assert text.index("Does each fusion add to a?") < text.index("## Headline")
    assert "| C2  | a+b " in text  # the combinations' key: C2 is a+b
    verdict_table = text[text.index("## Primary contrasts") : text.index("## Headline")]
    assert "| C2  | complete |" in verdict_table
    assert comparisons.loc[0, "verdict"] in verdict_table
    header = next(
        line for line in text[text.index("## Headline") :].splitlines() if "kappa" in line
    )
    assert len(header.split("|")) - 2 <= 14  # readable: the README's columns, not the TSV's 40


DEMO = [
    "metadata",
    "thermal_map",
    "metadata+thermal_map",
    "metadata+thermal_map+depth_map+wound_photo",
]


def made_up_headline(names=DEMO) -> pd.DataFrame:
    """A headline with the columns the readable forms read: each combination on its complete
    visits, the last also on all visits (no train kappa there), one qwk interval undefined."""
    rows = [(name, "complete") for name in names] + [(names[-1], "all")]
    table = pd.DataFrame(rows, columns=["combination", "rows"]).assign(n_rows=180)
    for metric in ("kappa", "qwk", "auc", "balanced_accuracy", "macro_f1", "brier", "ece"):
        table[f"{metric}_mean"] = np.linspace(0.2, 0.5, len(table))
        table[f"{metric}_ci_low"] = table[f"{metric}_mean"] - 0.1
        table[f"{metric}_ci_high"] = table[f"{metric}_mean"] + 0.1
    table.loc[0, ["qwk_ci_low", "qwk_ci_high"]] = np.nan
    table["kappa_std"] = 0.05
    table["train_kappa_mean"] = 0.4
    table.loc[table["rows"] == "all", "train_kappa_mean"] = np.nan
    table["gap_mean"] = table["train_kappa_mean"] - table["kappa_mean"]
    table[["n_folds", "n_repeats", "folds_not_learned"]] = 3, 2, 0
    return table


def made_up_comparisons() -> pd.DataFrame:
    """Primary contrasts with two verdicts, and secondary contrasts: one on all visits (worse)
    and one against a member."""
    columns = ["combination", "versus", "family", "rows", "n_rows", "kappa_diff_folds"]
    columns += ["kappa_diff_ci_low", "kappa_diff_ci_high", "p_value", "p_holm", "verdict"]
    columns += ["detectable_gain"]
    big = DEMO[3]
    rows = [
        ["metadata+thermal_map", "metadata", "primary", "complete", 180, 0.04, -0.06, 0.14]
        + [0.31, 0.62, "inconclusive", 0.123],
        [big, "metadata", "primary", "complete", 150, 0.12, 0.05, 0.19, 0.004, 0.008, "better"]
        + [0.09],
        [big, "metadata", "secondary, all visits", "all", 180, -0.09, -0.15, -0.03]
        + [0.0004, 0.0004, "worse", 0.08],
        [big, "thermal_map", "secondary", "complete", 150, 0.3, 0.2, 0.4, 0.001, 0.003, "better"]
        + [0.1],
    ]
    return pd.DataFrame(rows, columns=columns)


NINETY = {"primary": "metadata", "confidence": 0.9}
PLAN = a_plan(DEMO)


def test_the_results_open_with_one_sentence_per_primary_contrast_and_its_numbers():
    text = results_markdown(made_up_headline(), made_up_comparisons(), NINETY, PLAN)
    opening = " ".join(text[: text.index("## Combinations")].split())
    sentences = [
        "Adding thermal_map to metadata: inconclusive: this design detects gains of about +0.12; "
        "observed +0.04 (90 % CI -0.06 to +0.14, unadjusted; Holm p = 0.620) on the 180 visits "
        "with every member.",
        "Adding thermal_map, depth_map and wound_photo to metadata improves kappa by 0.12 (90 % CI "
        "+0.05 to +0.19, unadjusted; Holm p = 0.008) on the 150 visits with every member.",
    ]
    for sentence in sentences:
        assert f"- {sentence}" in opening
    # The secondary contrasts (on all visits: worse; against a member) are not among them.
    assert opening.count("- ") == 2 and "lowers" not in opening
    assert "Pre-specified in results/analysis_plan.json (written 2025-01-01" in opening
    assert "at alpha 0.1." in opening and "changed" not in opening
    assert "95 %" not in text  # the run's confidence, not a fixed level


def markdown_tables(text: str) -> list:
    """The header cells of every Markdown table in ``text``."""
    lines = text.splitlines()
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line, below in zip(lines, lines[1:], strict=False)
        if line.startswith("|") and below.startswith("|:")
    ]


def test_every_column_shown_has_a_legend_entry():
    text = results_markdown(made_up_headline(), made_up_comparisons(), NINETY, PLAN)
    legend = " ".join(text[text.index("## Legend") :].split())
    headers = {cell for header in markdown_tables(text) for cell in header}
    assert {"kappa (90 % CI)", "kappa_diff (90 % CI)", "p_holm", "train_kappa", "gap"} <= headers
    for header in headers:
        assert f"- `{header}`: " in legend, header
    entries = legend.split("- `")[1:]
    assert len(entries) == len(headers)  # and no entry for a column not shown
    train = next(entry for entry in entries if entry.startswith("train_kappa`"))
    assert "inner out-of-fold" in train and "image branch" in train and "fusion" in train


def test_no_markdown_cell_or_front_page_line_says_nan():
    import re

    headline, comparisons = made_up_headline(), made_up_comparisons()
    comparisons.loc[0, ["p_value", "p_holm"]] = np.nan
    text = results_markdown(headline, comparisons, NINETY, PLAN)
    run = {"classes": CLASSES, "folds": 3, "repeats": 2, "primary": "metadata"}
    run |= {"modalities": ["thermal_map"], "weights": "metadata 0.7"}
    page = front_page(headline, comparisons, run, 0.9, PLAN)
    for document in (text, page, comparisons_markdown(comparisons, 0.9)):
        assert not re.search(r"\bnan\b", document, flags=re.IGNORECASE)
    all_row = next(
        line for line in text.splitlines() if line.startswith("| C4  | all ") and "–" in line
    )
    assert all_row.rstrip(" |").endswith("–")  # train kappa and gap: an en dash
    assert "0.200 [–]" in text  # qwk whose folds gave no interval


def test_the_markdown_fits_100_characters_with_long_combination_names():
    names = DEMO + [f"metadata+thermal_map+depth_map+wound_photo_{k}" for k in range(10)]
    comparisons = made_up_comparisons()
    text = results_markdown(made_up_headline(names), comparisons, NINETY, PLAN)
    assert "| C14 | metadata+thermal_map+depth_map+wound_photo_9 |                   0 |" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_the_front_page_opens_with_the_sentences_and_defines_its_terms():
    headline, comparisons = made_up_headline(), made_up_comparisons()
    run = {"classes": CLASSES, "folds": 3, "repeats": 2, "primary": "metadata"}
    run |= {"modalities": ["thermal_map"], "weights": "metadata 0.7"}
    page = front_page(headline, comparisons, run, 0.9, PLAN)
    first = page.splitlines()[0]
    assert first.startswith(
        "- Adding thermal_map to metadata: inconclusive: this design detects gains of about +0.12"
    )
    assert "Holm p is below 0.1," in page and "**inconclusive** (detectable gain +0.12)" in page
    assert page.index("Does each fusion add to metadata?") < page.index("Headline")
    terms = page[page.index("What the terms mean") :]
    for term in ("kappa", "QWK", "AUC", "ECE", "Holm p", "train kappa", "detectable gain"):
        assert f"- **{term}**: " in terms
    assert "95 %" not in page and not any(d in page for d in ("{{", "{%", "{#"))


def test_the_front_page_draws_the_primary_contrasts_and_lists_the_tripod_items():
    headline, comparisons = made_up_headline(), made_up_comparisons()
    run = {"classes": CLASSES, "folds": 3, "repeats": 2, "primary": "metadata"}
    run |= {"modalities": ["thermal_map"], "weights": "metadata 0.7"}
    page = front_page(headline, comparisons, run, 0.9, PLAN)
    primary = comparisons[comparisons["family"] == "primary"]
    plot = page[page.index(".. raw:: html") : page.index("</svg>")]
    assert (
        page.index("- Adding") < page.index(".. raw:: html") < page.index("fusion-dag classifies")
    )
    assert plot.count("<circle") == len(primary) == plot.count('stroke-dasharray="3,2"')
    for row in primary.itertuples():
        assert f">{row.combination} ({row.verdict})</text>" in plot
    # Zero sits between the lowest interval end and the highest (made-up contrasts span it).
    zero = float(plot.split('<line x1="')[1].split('"')[0])
    ends = [
        float(part.split('"')[0]) for part in plot.split('stroke-width="2"')[0].split('x1="')[2:]
    ]
    assert ends and zero > ends[0]
    checklist = page[page.index("Reporting checklist (TRIPOD+AI)") :]
    for item, target in (("20a", "`participants.tsv`_"), ("20b", "`table1.tsv`_")):
        line = next(line for line in checklist.splitlines() if line.startswith(f"- **{item}**"))
        assert target in line
    assert "`calibration.tsv`_" in checklist and "`subgroups.tsv`_" in checklist
    assert "Left to the authors:" in checklist and "nan" not in plot
    no_contrast = front_page(headline, comparisons.iloc[0:0], run, 0.9, PLAN)
    assert "<svg" not in no_contrast and "Reporting checklist" in no_contrast


def generated_temporal(combinations: list, headline: pd.DataFrame) -> pd.DataFrame:
    """``results/temporal.tsv`` as temporal_results writes it: 30 patients of 2 visits, the
    last 9 later, random probabilities per combination, beside ``headline``'s rows."""
    from fusion_dag.artifacts import GROUP, ID, LABEL
    from fusion_dag.temporal import EARLIER, LATER, temporal_table

    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(30), 2)
    folds = pd.DataFrame(
        {
            ID: [f"v{i}" for i in range(len(patients))],
            GROUP: [f"p{p}" for p in patients],
            LABEL: rng.choice(CLASSES, len(patients)),
            "repeat": 0,
            "fold": np.where(patients >= 21, LATER, EARLIER),
        }
    )
    scored = {}
    for combination in combinations:
        probs = pd.DataFrame(
            rng.dirichlet([1, 1, 1], len(folds)), columns=[f"prob_{c}" for c in CLASSES]
        )
        probs.insert(0, ID, folds[ID])
        probs.insert(1, "split", np.where(folds["fold"] == LATER, "val", "train"))
        scored[combination] = probs
    evaluation = {"bootstrap": 100, "confidence": 0.9}
    return temporal_table(scored, folds, headline, CLASSES, evaluation, 0)


def test_the_front_page_names_the_temporal_difference_of_each_primary_combination():
    headline, comparisons = made_up_headline(), made_up_comparisons()
    temporal = generated_temporal(DEMO, headline)
    run = {"classes": CLASSES, "folds": 3, "repeats": 2, "primary": "metadata"}
    run |= {"modalities": ["thermal_map"], "weights": "metadata 0.7"}
    page = front_page(headline, comparisons, run, 0.9, PLAN, temporal)
    sentences = [line for line in page.splitlines() if line.startswith("- Over time: ")]
    # The primary and each fusion contrasted with it; thermal_map is in no primary contrast.
    assert [s.split(",")[0] for s in sentences] == [
        "- Over time: metadata",
        "- Over time: metadata+thermal_map",
        f"- Over time: {DEMO[3]}",
    ]
    for sentence, combination in zip(sentences, [DEMO[0], DEMO[2], DEMO[3]], strict=True):
        row = temporal.set_index("combination").loc[combination]
        later = f"{row['kappa']:.3f} [{row['kappa_ci_low']:.3f}, {row['kappa_ci_high']:.3f}]"
        cv = f"{row['cv_kappa']:.3f} [{row['cv_kappa_ci_low']:.3f}, {row['cv_kappa_ci_high']:.3f}]"
        assert f"fit on the 21 earlier patients, reached kappa {later} on the 9 later " in sentence
        assert f"patients (18 visits) against {cv} cross-validated" in sentence
        assert f"a difference of {row['kappa'] - row['cv_kappa']:+.3f} (90 % intervals" in sentence
    # Among the answers, before the forest plot; nothing without the table.
    assert page.index("- Over time: ") < page.index(".. raw:: html")
    assert "Over time" not in front_page(headline, comparisons, run, 0.9, PLAN)


def test_markdown_table_has_a_row_per_combination():
    frame = pd.DataFrame({"combination": ["metadata"], "kappa_mean": [0.25]})
    lines = markdown_table(frame).splitlines()
    assert len(lines) == 3 and "| metadata" in lines[2] and "0.250" in lines[2]


def test_without_the_primary_there_is_no_primary_contrast_and_the_page_says_why():
    """The workflow refuses such a config (tests/test_config.py); the table stays defined."""
    oofs = {"b": synthetic_oof(0.2, seed=1), "a+b": synthetic_oof(0.3, seed=2)}
    table = comparisons_table(oofs, CLASSES, {**EVALUATION, "bootstrap": 100}, 42)
    assert table["family"].tolist() == ["secondary"] and not table["primary"].any()
    records = per_fold("b", oofs["b"]) + per_fold("a+b", oofs["a+b"])
    headline = headline_table(per_fold_table(records), oofs, CLASSES, EVALUATION, 42)
    text = results_markdown(headline, table, EVALUATION, a_plan(oofs, "a", 0.95))
    assert "- No primary contrast: no fusion run holds a." in text
    assert "## Primary contrasts" not in text


def test_a_fold_counts_as_not_learned_for_every_combination_with_the_branch_that_did_not():
    combinations = {
        "metadata": ["metadata"],
        "thermal_map": ["thermal_map"],
        "metadata+thermal_map": ["metadata", "thermal_map"],
        "metadata+depth_map": ["metadata", "depth_map"],
    }
    learning = pd.DataFrame(
        [("thermal_map", r, f, (r, f) not in {(1, 2), (2, 3)}) for r in (1, 2) for f in (1, 2, 3)]
        + [("depth_map", r, f, True) for r in (1, 2) for f in (1, 2, 3)],
        columns=["member", "repeat", "fold", "learned"],
    )
    records = [
        {"combination": name, "repeat": r, "fold": f, "kappa": 0.3, "train_kappa": 0.4}
        for name in combinations
        for r in (1, 2)
        for f in (1, 2, 3)
    ]
    per_fold = with_branches_learned(per_fold_table(records), combinations, learning)
    not_learned = per_fold[~per_fold["branches_learned"]]
    assert sorted(set(not_learned["combination"])) == ["metadata+thermal_map", "thermal_map"]
    assert sorted(zip(not_learned["repeat"], not_learned["fold"], strict=True))[::2] == [
        (1, 2),
        (2, 3),
    ]
    oofs = {name: synthetic_oof(0.3, seed=k) for k, name in enumerate(combinations)}
    headline = headline_table(per_fold.assign(fit_kappa=0.9), oofs, CLASSES, EVALUATION, 42)
    counts = dict(zip(headline["combination"], headline["folds_not_learned"], strict=True))
    assert counts == {
        "metadata": 0,
        "thermal_map": 2,
        "metadata+thermal_map": 2,
        "metadata+depth_map": 0,
    }


def test_a_contrast_whose_branch_learned_nothing_in_some_folds_says_so():
    headline, comparisons = made_up_headline(), made_up_comparisons()
    headline.loc[headline["combination"] == "metadata+thermal_map", "folds_not_learned"] = 2
    headline.loc[headline["combination"] == DEMO[3], "folds_not_learned"] = 1
    text = results_markdown(headline, comparisons, NINETY, PLAN)
    opening = " ".join(text[: text.index("## Combinations")].split())
    assert (
        "on the 180 visits with every member. thermal_map's branch learned nothing "
        "in 2 of 6 folds: this contrast does not measure what the images carry." in opening
    )
    assert (
        opening.count(
            "An image branch (thermal_map, depth_map or wound_photo) learned "
            "nothing in 1 of 6 folds"
        )
        == 1
    )  # the primary contrast; the all-visits one is secondary
    assert markdown_tables(text)[0] == ["#", "combination", "folds_not_learned"]
    assert "- `folds_not_learned`: " in text
    run = {"classes": CLASSES, "folds": 3, "repeats": 2, "primary": "metadata"}
    run |= {"modalities": ["thermal_map"], "weights": "metadata 0.7"}
    page = front_page(headline, comparisons, run, 0.9, PLAN)
    first = page.splitlines()[0]
    assert first.endswith(
        "thermal_map's branch learned nothing in 2 of 6 folds: this contrast does not measure "
        "what the images carry."
    )
    assert "an image branch learned nothing in 2 of 6 folds" in page
    assert "- **learned nothing**: " in page
    unflagged = results_markdown(made_up_headline(), comparisons, NINETY, PLAN)
    assert "learned nothing in" not in unflagged[: unflagged.index("## Combinations")]


def test_the_plan_names_the_primary_family_alpha_the_test_rule_and_the_design():
    names = ["metadata", "thermal_map", "depth_map", "metadata+thermal_map"]
    names += ["thermal_map+depth_map", "metadata+thermal_map+depth_map"]
    record = a_plan(names, confidence=0.9, folds=5, repeats=2)
    plan = record["plan"]
    assert (record["written"], record["earlier"]) == (WRITTEN, [])
    family = plan["primary_family"]
    assert (family["family"], family["primary"], family["visits"]) == (
        "primary",
        "metadata",
        "complete",
    )
    # Only the fusions holding the primary; the image-only fusion is secondary.
    assert family["contrasts"] == [
        "metadata+thermal_map vs metadata",
        "metadata+thermal_map+depth_map vs metadata",
    ]
    secondary = plan["secondary_families"]
    assert "thermal_map+depth_map vs metadata" in secondary["secondary"]["contrasts"]
    assert secondary["secondary, all visits"]["contrasts"] == family["contrasts"]
    assert secondary["secondary, all visits"]["visits"] == "all"
    assert (plan["confidence"], plan["alpha"]) == (0.9, 0.1)
    test = plan["test"]
    assert (test["values"], test["degrees_of_freedom"], test["sides"]) == (10, 9, 2)
    assert test["multiplicity"] == "Holm within each family"
    assert "1/J + n_test/n_train" in test["variance"] and test["detectable_gain_power"] == 0.8
    assert plan["cv"] == {"folds": 5, "repeats": 2, "seed": 42, "grouped_by": "patient_id"}
    assert json.loads(json.dumps(record)) == record  # as the file holds it


def test_a_changed_plan_keeps_the_one_it_replaced_and_the_report_says_so():
    later, latest = "2025-02-01T00:00:00+00:00", "2025-03-01T00:00:00+00:00"
    first = a_plan(DEMO)
    assert plan_record(first, first["plan"], later) is first  # unchanged: kept as written
    second = plan_record(first, a_plan(DEMO, confidence=0.95)["plan"], later)
    assert second["written"] == later
    assert second["earlier"] == [{"written": WRITTEN, "replaced": later, "plan": first["plan"]}]
    notice = plan_notice(second)
    assert f"the plan written {later} replaced the one written {WRITTEN}" in notice
    assert "confidence: 0.9 -> 0.95; alpha: 0.1 -> 0.05" in notice
    assert plan_notice(first) == ""
    text = results_markdown(made_up_headline(), made_up_comparisons(), NINETY, second)
    opening = " ".join(text[: text.index("- Adding")].split())
    assert "**The analysis plan changed after an earlier run:" in opening
    run = {"classes": CLASSES, "folds": 3, "repeats": 2, "primary": "metadata"}
    run |= {"modalities": ["thermal_map"], "weights": "metadata 0.7"}
    page = front_page(made_up_headline(), made_up_comparisons(), run, 0.9, second)
    assert page.startswith("**The analysis plan changed after an earlier run:")
    third = plan_record(second, first["plan"], latest)
    assert [plan["written"] for plan in third["earlier"]] == [WRITTEN, later]
    assert "keeps the 2 earlier plans" in plan_notice(third)


def test_a_plan_on_record_is_read_or_refused_naming_the_file(tmp_path):
    path = tmp_path / "analysis_plan.json"
    assert recorded_plan(path) is None
    path.write_text(json.dumps(a_plan(DEMO)))
    assert recorded_plan(path) == a_plan(DEMO)
    path.write_text('{"plan": {}}')
    with pytest.raises(InputError, match=f"{path} is not an analysis plan record"):
        recorded_plan(path)


def headline_gaps(text: str) -> dict:
    """Label -> the gap cell of each row of the Markdown's ranking and overfitting table."""
    table = text[text.index("## Headline: ranking") : text.index("## Legend")]
    rows = [line for line in table.splitlines() if line.startswith("| C")]
    return {
        (cells[0], cells[1]): cells[-1]
        for cells in ([c.strip() for c in row.strip("|").split("|")] for row in rows)
    }


def test_the_gap_is_shown_only_where_train_kappa_is_in_sample():
    headline = made_up_headline()
    text = results_markdown(headline, made_up_comparisons(), NINETY, PLAN)
    gaps = headline_gaps(text)
    # C2 is thermal_map alone: its train kappa is the branch's own in-sample predictions.
    assert gaps.pop(("C2", "complete")) == f"{headline.loc[1, 'gap_mean']:.3f}"
    assert set(gaps.values()) == {"–"}  # every row with metadata, and the all row
    legend = " ".join(text[text.index("## Legend") :].split())
    gap = legend[legend.index("- `gap`: ") :]
    assert "only on rows without metadata" in gap and "about 0 by construction" in gap
    run = {"classes": CLASSES, "folds": 3, "repeats": 2, "primary": "metadata"}
    run |= {"modalities": ["thermal_map"], "weights": "metadata 0.7"}
    page = front_page(headline, made_up_comparisons(), run, 0.9, PLAN)
    shown = [line for line in page.splitlines() if ", train - validation gap " in line]
    assert [line.split("**")[1] for line in shown] == ["thermal_map"]
    assert headline["gap_mean"].notna().sum() == 4  # the TSV's column keeps every complete row


def test_a_learning_run_says_which_weights_and_what_temperature_its_headline_used():
    oof = synthetic_oof(0.4)
    records = [
        {
            **record,
            "weights_learned": True,
            "temperature": 1.5 + 0.1 * index,
            "learned_visits": 20,
            "brier_untempered": 0.7,
            "brier_tempered": 0.6,
            "ece_untempered": 0.2,
            "ece_tempered": 0.1,
        }
        for index, record in enumerate(per_fold("a+b", oof))
    ]
    headline = headline_table(per_fold_table(records), {"a+b": oof}, CLASSES, EVALUATION, 1)
    assert list(headline.columns)[: len(HEADLINE)] == HEADLINE
    row = headline.iloc[0]
    assert row["weights_learned"]
    assert row["temperature_mean"] == pytest.approx(1.75)
    assert [row[f"{m}_mean"] for m in TEMPERED_COLUMNS] == pytest.approx([0.7, 0.6, 0.2, 0.1])
    # Weights learned, no temperature: the calibration columns stay empty.
    plain = [{**r, "temperature": None} for r in records]
    row = headline_table(per_fold_table(plain), {"a+b": oof}, CLASSES, EVALUATION, 1).iloc[0]
    assert row["weights_learned"] and np.isnan(row["temperature_mean"])
    assert np.isnan(row["brier_untempered_mean"])
