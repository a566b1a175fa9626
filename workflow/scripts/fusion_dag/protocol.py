"""The protocol: what choosing fusion weights, a temperature and the training visits is worth
on patients the models never saw, each nested choice beside the leaky version the original
study ran, on the run's own folds and seeds.

Why beside each other: the original study's largest gains came from choices made with
validation visits (weights read off the validation folds; "polishing", which dropped the
visits its validation folds misclassified and cross-validated again on the rest). A nested
choice sees only a fold's training visits; its leaky version sees the visits it is scored on.
The difference between the two (``overstatement``) is how much of the leaky gain was the leak.

Rows (:data:`SETTINGS`), per combination where they make sense (weights only for a fusion,
screening only with the forest):

- ``fixed``: the configured weights, the V3 fusion's own result (``fusion.learn: []``);
- ``learned_weights``, ``learned_weights_temperature``: per fold, exactly ``fusion.learn``'s
  choice on outer-training visits (:func:`fusion_dag.learn.learned_fusion`);
- ``leaky_weights``: per repeat, the simplex-grid weights with the highest kappa of the pooled
  validation predictions, applied to every fold (optimistic);
- ``screened``: per fold, ``label_screen``'s confident learning on the fold's inner out-of-fold
  forest probabilities (:func:`fusion_dag.screen.screen_fold`), the forest refit on the
  training visits left; validation visits are never removed;
- ``leaky_screen``: confident learning on the repeat's pooled out-of-fold forest probabilities
  of every visit, the flagged visits dropped from the table, and the forest cross-validated
  again on the visits left (same folds); only those visits are scored (optimistic).

Why rows 1 to 4 need no training: a V3 fusion is the weighted mean of its members' fold
probabilities (:func:`fusion_dag.weights.weighted_sum`; frozen branches, no gradient step), so
each is computed from the members' cached fold probability tables. The screening rows refit
only the forest (seconds): the image members keep the probabilities of their unscreened
branches. Retraining the branches without the screened visits is a whole ``label_screen`` run.
"""

import logging

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, label_indices, prob_columns
from fusion_dag.evaluate import kappa, oof_table
from fusion_dag.folds import without_screened
from fusion_dag.inference import bootstrap_metrics, compare, fold_test_share, fold_values
from fusion_dag.learn import learned_fusion, simplex_grid, temper_table
from fusion_dag.metadata import fold_probabilities
from fusion_dag.report import (
    headline_metric_columns,
    level,
    p_text,
    readable_table,
    with_interval,
)
from fusion_dag.screen import label_issues, screen_fold
from fusion_dag.weights import METADATA, shared_rows, weighted_sum

log = logging.getLogger(__name__)

FIXED = "fixed"
LEARNED = "learned_weights"
TEMPERED = "learned_weights_temperature"
LEAKY_WEIGHTS = "leaky_weights"
SCREENED = "screened"
LEAKY_SCREEN = "leaky_screen"
SETTINGS = (FIXED, LEARNED, TEMPERED, LEAKY_WEIGHTS, SCREENED, LEAKY_SCREEN)
# Each leaky setting and the nested one it sits beside.
COUNTERPART = {LEAKY_WEIGHTS: LEARNED, LEAKY_SCREEN: SCREENED}
# The screening settings: their forest probabilities come from the protocol_screen jobs.
SCREENINGS = (SCREENED, LEAKY_SCREEN)
PROTOCOL_COLUMNS = [
    "combination",
    "setting",
    "nested",
    "counterpart",
    "kappa",
    "kappa_ci_low",
    "kappa_ci_high",
    "kappa_gain",
    "kappa_gain_folds",
    "kappa_gain_ci_low",
    "kappa_gain_ci_high",
    "p_value",
    "visits",
    "visits_screened",
    "brier",
    "ece",
    "overstatement",
    "metadata_weight",
    "temperature",
]


def settings_of(members: list) -> list:
    """The settings that make sense for a combination: weights are learned or picked only for
    a fusion; screening needs the forest."""
    chosen = [FIXED]
    if len(members) > 1:
        chosen.append(LEARNED)
    chosen.append(TEMPERED)
    if len(members) > 1:
        chosen.append(LEAKY_WEIGHTS)
    if METADATA in members:
        chosen += list(SCREENINGS)
    return chosen


# --- The screening rows' forests (rule protocol_screen, one job per repeat) -----------------


def nested_screen_fold(
    samples: pd.DataFrame,
    folds: pd.DataFrame,
    fold: int,
    classes: list,
    settings: dict,
    seed: int,
    n_jobs: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(screened training visits, the refit forest's probability table) of one outer fold:
    ``label_screen``'s screen (:func:`~fusion_dag.screen.screen_fold`) and the metadata stage's
    fit on the training visits left, exactly as a ``label_screen`` run's ``screen`` and
    ``metadata`` jobs (same settings and repeat seed). Only training visits are read for the
    choice; every validation visit is scored."""
    screened = screen_fold(samples, folds, fold, classes, settings, seed, n_jobs)
    probs, _ = fold_probabilities(
        without_screened(samples, screened),
        without_screened(folds, screened),
        fold,
        classes,
        settings,
        seed,
        n_jobs,
    )
    return screened, probs


def leaky_screen(
    samples: pd.DataFrame,
    folds: pd.DataFrame,
    oof_probs: pd.DataFrame,
    classes: list,
    settings: dict,
    seed: int,
    n_jobs: int,
) -> tuple[pd.DataFrame, dict]:
    """The original study's screen, with confident learning in place of its tuned cut-offs:
    (visits dropped, fold -> the refit forest's probability table).

    ``oof_probs`` are the repeat's pooled out-of-fold forest probabilities (``id``,
    ``prob_{class}``: every visit scored by the fold that held it out), so each visit's own
    validation prediction decides whether it stays. The flagged visits leave the table; each
    fold's forest is then refit on the fold's training visits left and scores its validation
    visits left (the same fold assignment without them).
    """
    table = folds[[ID, GROUP, LABEL]].merge(
        oof_probs[[ID, *prob_columns(classes)]], on=ID, validate="one_to_one"
    )
    y = label_indices(table[LABEL], classes)
    dropped = label_issues(table, y, table[prob_columns(classes)].to_numpy(dtype=float))
    log.info(
        "Leaky screen: %d of %d visits dropped on their own validation predictions",
        len(dropped),
        len(table),
    )
    left_samples, left_folds = without_screened(samples, dropped), without_screened(folds, dropped)
    probs = {}
    for fold in sorted(folds["fold"].unique()):
        probs[int(fold)], _ = fold_probabilities(
            left_samples, left_folds, int(fold), classes, settings, seed, n_jobs
        )
    return dropped, probs


def screen_repeat(
    samples: pd.DataFrame,
    folds: pd.DataFrame,
    oof_probs: pd.DataFrame,
    classes: list,
    settings: dict,
    seed: int,
    n_jobs: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both screening settings of one repeat: (screened visits, forest probabilities), each
    with ``setting`` and ``fold`` columns (a leaky screen's visits have no fold: it ran before
    the split)."""
    screened, probs = [], []
    for fold in sorted(folds["fold"].unique()):
        visits, table = nested_screen_fold(
            samples, folds, int(fold), classes, settings, seed, n_jobs
        )
        screened.append(visits.assign(setting=SCREENED, fold=int(fold)))
        probs.append(table.assign(setting=SCREENED, fold=int(fold)))
    dropped, refit = leaky_screen(samples, folds, oof_probs, classes, settings, seed, n_jobs)
    screened.append(dropped.assign(setting=LEAKY_SCREEN, fold=np.nan))
    probs += [table.assign(setting=LEAKY_SCREEN, fold=fold) for fold, table in refit.items()]
    screened = pd.concat(screened, ignore_index=True)
    screened["fold"] = screened["fold"].astype("Int64")
    probs = pd.concat(probs, ignore_index=True)
    first = ["setting", "fold"]
    return (
        screened[first + [c for c in screened if c not in first]],
        probs[first + [c for c in probs if c not in first]],
    )


def screen_tables(probs: pd.DataFrame) -> dict:
    """A protocol_screen job's forest probabilities as setting -> fold -> probability table
    (``id``, ``split``, ``prob_{class}``), as :func:`protocol_oofs` reads them."""
    return {
        setting: {
            int(fold): table.drop(columns=["setting", "fold"]).reset_index(drop=True)
            for fold, table in rows.groupby("fold", sort=True)
        }
        for setting, rows in probs.groupby("setting", sort=False)
    }


# --- The fused fold probabilities of every setting --------------------------------------------


def image_split(members: list, validation_fraction: dict, seed: int) -> dict:
    """Each image member's early-stopping split (its ``validation_fraction`` and the repeat's
    seed), as :func:`fusion_dag.jobs.learn_settings` gives a fusion job."""
    return {
        m: {"validation_fraction": validation_fraction[m], "seed": seed}
        for m in members
        if m != METADATA
    }


def nested_choice(
    members: list,
    tables: dict,
    folds: pd.DataFrame,
    fold: int,
    fixed: dict,
    split: dict,
    classes: list,
) -> dict:
    """One fold's nested weights and temperature: ``fusion.learn: [weights, temperature]``'s
    choice (:func:`~fusion_dag.learn.learned_fusion`) from the members' fold probability tables
    ``tables`` (member -> table), the repeat's fold table and the image members' ``split``.
    The weights are those ``fusion.learn: [weights]`` chooses too (the temperature is fitted
    after them)."""
    inputs = {
        "metadata_probs": tables.get(METADATA),
        "image_probs": {m: t for m, t in tables.items() if m != METADATA},
        "folds": folds,
        "image_split": split,
    }
    return learned_fusion(["weights", "temperature"], members, inputs, fold, fixed, classes)


def validation_arrays(fold_tables: dict, members: list, folds: pd.DataFrame, classes: list):
    """(members x visits x classes probabilities, class indices) of the validation visits every
    member scored, pooled over ``fold_tables`` (fold -> member -> table) in fold order."""
    columns = prob_columns(classes)
    stacks, truth = [], []
    for fold in sorted(fold_tables):
        tables = {m: t[t["split"] == "val"] for m, t in fold_tables[fold].items()}
        keys = shared_rows([tables[m] for m in members])
        stacks.append(
            np.stack(
                [
                    keys.merge(tables[m], on=[ID, "split"], how="left")[columns].to_numpy(float)
                    for m in members
                ]
            )
        )
        labels = keys.merge(folds[[ID, LABEL]], on=ID, how="left", validate="one_to_one")
        truth.append(label_indices(labels[LABEL], classes))
    return np.concatenate(stacks, axis=1), np.concatenate(truth)


def leaky_weights(fold_tables: dict, members: list, folds: pd.DataFrame, classes: list) -> dict:
    """The weights the original study would have picked: of the simplex grid
    (:func:`~fusion_dag.learn.simplex_grid`, the grid ``fusion.learn`` searches), the point
    with the highest kappa of the repeat's pooled validation predictions (ties: the first in
    grid order). Chosen on the visits it is scored on, so its kappa is optimistic."""
    stacked, truth = validation_arrays(fold_tables, members, folds, classes)
    grid = simplex_grid(len(members))
    kappas = [
        kappa(truth, np.tensordot(point, stacked, axes=1).argmax(axis=1), len(classes))
        for point in grid
    ]
    best = grid[int(np.argmax(kappas))]
    return {m: float(w) for m, w in zip(members, best, strict=True)}


def fused(tables: dict, weights: dict, temperature: float | None, classes: list) -> pd.DataFrame:
    """The V3 fusion of one fold's member tables (:func:`~fusion_dag.weights.weighted_sum`),
    tempered when ``temperature`` is given."""
    table = weighted_sum(tables, weights, classes)
    return temper_table(table, temperature, classes) if temperature else table


def repeat_folds(
    members: list,
    member_probs: dict,
    screen_probs: dict,
    folds: pd.DataFrame,
    fixed: dict,
    split: dict,
    classes: list,
) -> tuple[list, list]:
    """Every setting's fused fold tables of one combination in one repeat.

    ``member_probs``: fold -> member -> the stage's probability table; ``screen_probs``:
    setting -> fold -> the screening setting's forest table; ``folds`` the repeat's fold
    table. Returns ((setting, fold, fused table) records, choice records: ``setting``,
    ``fold``, ``weights``, ``temperature``)."""
    settings = settings_of(members)
    parts, choices = [], []

    def add(setting, fold, tables, weights, temperature=None):
        parts.append((setting, fold, fused(tables, weights, temperature, classes)))
        choices.append(
            {"setting": setting, "fold": fold, "weights": weights, "temperature": temperature}
        )

    leaky = (
        leaky_weights(member_probs, members, folds, classes) if LEAKY_WEIGHTS in settings else {}
    )
    for fold in sorted(member_probs):
        tables = member_probs[fold]
        add(FIXED, fold, tables, fixed)
        chosen = nested_choice(members, tables, folds, fold, fixed, split, classes)
        if LEARNED in settings:
            add(LEARNED, fold, tables, chosen["weights"])
        add(TEMPERED, fold, tables, chosen["weights"], chosen["temperature"])
        if LEAKY_WEIGHTS in settings:
            add(LEAKY_WEIGHTS, fold, tables, leaky)
        for setting in SCREENINGS:
            if setting in settings:
                add(setting, fold, {**tables, METADATA: screen_probs[setting][fold]}, fixed)
    return parts, choices


# --- The table ----------------------------------------------------------------------------------


def protocol_oofs(
    combinations: dict,
    member_probs: dict,
    screen_probs: dict,
    folds: pd.DataFrame,
    fixed: dict,
    validation_fraction: dict,
    seeds: dict,
    classes: list,
) -> tuple[dict, dict]:
    """Every combination's settings as pooled out-of-fold tables, and the choices made:
    ((combination, setting) -> out-of-fold table, (combination, setting) -> choice records
    with ``repeat``).

    ``member_probs``: member -> (repeat, fold) -> the stage's probability table;
    ``screen_probs``: repeat -> setting -> fold -> the screening setting's forest table;
    ``folds`` every repeat's fold table; ``fixed`` combination -> configured weights;
    ``validation_fraction`` each image member's; ``seeds`` repeat -> its seed."""
    oofs, choices = {}, {}
    for name, members in combinations.items():
        parts, made = {}, {}
        for repeat, table in folds.groupby("repeat", sort=True):
            repeat = int(repeat)
            fold_tables = {
                int(fold): {m: member_probs[m][(repeat, int(fold))] for m in members}
                for fold in sorted(table["fold"].unique())
            }
            split = image_split(members, validation_fraction, seeds[repeat])
            records, chosen = repeat_folds(
                members,
                fold_tables,
                screen_probs.get(repeat, {}),
                table,
                fixed[name],
                split,
                classes,
            )
            for setting, fold, probs in records:
                parts.setdefault(setting, []).append((repeat, fold, probs))
            for choice in chosen:
                made.setdefault(choice["setting"], []).append({**choice, "repeat": repeat})
        for setting in settings_of(members):
            oofs[(name, setting)] = oof_table(parts[setting], folds, classes)
            choices[(name, setting)] = made[setting]
    return oofs, choices


def oof_records(oofs: dict) -> pd.DataFrame:
    """``results/protocol/oof.tsv``: every setting's pooled out-of-fold predictions with its
    ``combination`` and ``setting``."""
    return pd.concat(
        [
            oof.assign(combination=combination, setting=setting)
            for (combination, setting), oof in oofs.items()
        ],
        ignore_index=True,
    )


def choices_table(choices: dict) -> pd.DataFrame:
    """``results/protocol/choices.tsv``: what each setting fused with in each fold:
    ``combination``, ``setting``, ``repeat``, ``fold``, ``weight_{member}`` (empty for a
    member not in the combination), ``temperature`` (empty without one)."""
    rows = [
        {
            "combination": combination,
            "setting": setting,
            "repeat": record["repeat"],
            "fold": record["fold"],
            **{f"weight_{m}": w for m, w in record["weights"].items()},
            "temperature": record["temperature"],
        }
        for (combination, setting), records in choices.items()
        for record in records
    ]
    table = pd.DataFrame(rows)
    return table[[c for c in table if c != "temperature"] + ["temperature"]]


def protocol_row(
    oof: pd.DataFrame,
    fixed_oof: pd.DataFrame | None,
    classes: list,
    evaluation: dict,
    seed: int,
) -> dict:
    """One row's numbers: the pooled kappa (mean over repeats) with the headline's corrected
    interval, Brier score and ECE, visits scored, and (unless it is the ``fixed`` row, None)
    its gain over ``fixed_oof`` by the run's paired test
    (:func:`~fusion_dag.inference.compare`, on the visits both scored)."""
    estimates = bootstrap_metrics(oof, classes, evaluation["bootstrap"], seed)
    metrics = headline_metric_columns(
        estimates, fold_values(oof, classes), fold_test_share(oof), evaluation
    )
    row = {
        "kappa": metrics["kappa_mean"],
        "kappa_ci_low": metrics["kappa_ci_low"],
        "kappa_ci_high": metrics["kappa_ci_high"],
        "visits": int(oof[ID].nunique()),
        "brier": metrics["brier_mean"],
        "ece": metrics["ece_mean"],
    }
    if fixed_oof is not None:
        gain = compare(oof, fixed_oof, classes, evaluation, seed)
        row.update(
            kappa_gain=gain["kappa_diff"],
            kappa_gain_folds=gain["kappa_diff_folds"],
            kappa_gain_ci_low=gain["kappa_diff_ci_low"],
            kappa_gain_ci_high=gain["kappa_diff_ci_high"],
            p_value=gain["p_value"],
        )
    return row


def choice_columns(choices: list) -> dict:
    """``metadata_weight`` and ``temperature``: the means over folds of what a setting fused
    with (NaN without the forest, or without a temperature)."""
    weights = [c["weights"].get(METADATA, np.nan) for c in choices]
    temperatures = [c["temperature"] for c in choices if c["temperature"] is not None]
    return {
        "metadata_weight": float(np.mean(weights)),
        "temperature": float(np.mean(temperatures)) if temperatures else np.nan,
    }


def screened_counts(screened: pd.DataFrame) -> dict:
    """``visits_screened`` of each screening setting: the visits left out of a fold's training
    (mean over folds of all repeats) for ``screened``; the visits dropped from the table (mean
    over repeats) for ``leaky_screen``. ``screened`` holds the protocol_screen jobs' tables
    with ``repeat``."""
    nested = screened[screened["setting"] == SCREENED]
    leaky = screened[screened["setting"] == LEAKY_SCREEN]
    partitions = screened.loc[screened["setting"] == SCREENED, ["repeat", "fold"]]
    return {
        SCREENED: len(nested) / max(len(partitions.drop_duplicates()), 1),
        LEAKY_SCREEN: len(leaky) / max(leaky["repeat"].nunique(), 1),
    }


def protocol_table(
    oofs: dict,
    choices: dict,
    counts: dict,
    classes: list,
    evaluation: dict,
    seed: int,
) -> pd.DataFrame:
    """``results/protocol.tsv``: one row per (combination, setting) of ``oofs`` (their pooled
    out-of-fold tables, in order), with the choices made (``choices``: the same keys ->
    choice records) and ``counts`` (:func:`screened_counts`). ``overstatement`` is a leaky
    row's kappa minus its nested counterpart's."""
    rows = []
    for (combination, setting), oof in oofs.items():
        row = {
            "combination": combination,
            "setting": setting,
            "nested": setting not in COUNTERPART,
            "counterpart": COUNTERPART.get(setting, ""),
            "visits_screened": counts.get(setting, 0.0) if setting in SCREENINGS else 0.0,
        }
        fixed = None if setting == FIXED else oofs[(combination, FIXED)]
        row.update(protocol_row(oof, fixed, classes, evaluation, seed))
        row.update(choice_columns(choices[(combination, setting)]))
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=PROTOCOL_COLUMNS)
    nested = table.set_index(["combination", "setting"])["kappa"]
    for index, row in table.iterrows():
        if row["counterpart"]:
            counterpart = nested[(row["combination"], row["counterpart"])]
            table.loc[index, "overstatement"] = row["kappa"] - counterpart
    return table


SETTING_LABELS = {
    FIXED: "fixed weights",
    LEARNED: "learned weights",
    TEMPERED: "learned weights + temperature",
    LEAKY_WEIGHTS: "leaky weights (optimistic)",
    SCREENED: "screened training",
    LEAKY_SCREEN: "leaky screen (optimistic)",
}


def protocol_markdown(table: pd.DataFrame, confidence: float) -> str:
    """``results/protocol.md``: what each row does, then the table for people."""
    shown = pd.DataFrame(
        {
            "combination": table["combination"],
            "setting": table["setting"].map(SETTING_LABELS),
            "nested": table["nested"].map({True: "yes", False: "no"}),
            f"kappa ({level(confidence)} CI)": [
                with_interval(*v)
                for v in table[["kappa", "kappa_ci_low", "kappa_ci_high"]].itertuples(index=False)
            ],
            "gain over fixed": [
                with_interval(*v, signed=True)
                for v in table[
                    ["kappa_gain_folds", "kappa_gain_ci_low", "kappa_gain_ci_high"]
                ].itertuples(index=False)
            ],
            "p": [p_text(p).removeprefix("= ") for p in table["p_value"]],
            "visits": table["visits"],
            "screened": table["visits_screened"].map(lambda v: f"{v:.1f}"),
            "brier": table["brier"],
            "ece": table["ece"],
            "overstatement": table["overstatement"],
        }
    )
    text = f"""# Protocol: nested choices beside the leaky versions

Each row is scored on the run's own folds and seeds. Nested rows choose on training visits
only; leaky rows (marked "optimistic") choose on the visits they are scored on, as the
original study did, and never reach `fusion_results.tsv`, the comparisons or the verdicts.
`overstatement` is a leaky row's kappa minus its nested counterpart's.

- fixed weights: the configured weights (the fusion's own result without `fusion.learn`).
- learned weights (+ temperature): per fold, `fusion.learn`'s choice on outer-training visits.
- leaky weights: per repeat, the weights with the best kappa of the pooled validation
  predictions, applied to every fold.
- screened training: per fold, confident learning on the fold's inner out-of-fold forest
  probabilities; the forest refit without the screened training visits; every validation
  visit scored.
- leaky screen: confident learning on every visit's own out-of-fold forest probabilities, the
  flagged visits dropped from the table, the forest cross-validated again on the visits left;
  only those are scored.

Both screening rows refit only the forest: image members keep their unscreened branches'
probabilities (a `label_screen` run retrains them). Gain over fixed: the mean per-fold kappa
difference on the visits both rows scored, with the run's corrected resampled t interval
({level(confidence)}) and p-value (not adjusted; the protocol is no family of the run's
verdicts). Screened: visits left out of a fold's training (mean over folds), or dropped from
the table (leaky screen, mean over repeats).

"""
    return text + readable_table(shown) + "\n"
