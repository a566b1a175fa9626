"""The leak screen on five realistic leaks planted in the demo table, and on the demo's own
columns, on two demo seeds.

    python bench/leaks.py          # 160 patients, demo seeds 7 and 11, RESULTS.md section
    python bench/leaks.py --tiny   # 40 patients, one seed, smaller forests: writes nothing

Each leak is planted on its own in the demo's prepared samples table (a column or, for the
dates, two columns added beside the demo's own); each planted column has the demo's share of
empty cells (:data:`fusion_dag.demo.MISSING_SHARE`) unless it says otherwise:

* ``phase_code``: the label's code (1, 2, 3) written on 40 % of the visits, empty on the rest;
* ``phase_confidence_pct``: a copy of the label (20, 55 or 90 %) with 20 % of its cells redrawn
  at random from the three values;
* ``days_to_next_visit``: the next appointment booked from the assessed phase (about 7, 14 or
  28 days, times a scheduling spread of 30 %);
* ``closure_referral``: ``yes`` on 85 % of the R visits and 3 % of the others, else ``no``;
* ``assessment_day`` and ``next_visit_day``: two dates (days since the study opened: a
  patient's first visit falls anywhere in two years, each next one on the day booked), whose
  difference is ``days_to_next_visit``.

The screen is the explain target's (:mod:`fusion_dag.explain`): permutation importance of the
forests fit on one patient-grouped 3-fold partition (:func:`fusion_dag.folds.assign_folds`,
cv.seed 42) on their held-out visits, and :func:`fusion_dag.explain.screen_columns` on the same
partition, with the config's ``metadata_model`` and ``explain.permutations``. For each leak the
report says which signals fired for the planted column(s) and whether any of the demo's own
columns fired; then, for each measurement, the largest value a demo column reached (over both
seeds and every table) beside its threshold and the smallest a caught leak reached: the
evidence each threshold rests on.
"""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

from forest_bench import (  # noqa: E402
    CLASSES,
    arguments,
    demo_samples,
    forest_settings,
    run_and_publish,
    workflow_config,
)
from run import machine, markdown_table  # noqa: E402

HEADING = "## Leak screen: five planted leaks"
FULL = {"patients": 160, "seeds": [7, 11]}
# --tiny: the same code path in well under a minute: fewer patients, smaller forests and four
# of the demo's columns (its strongest, two more informative ones and one carrying nothing).
TINY = {
    "patients": 40,
    "seeds": [7],
    "n_estimators": 20,
    "permutations": 3,
    "columns": ["ankle_brachial_index", "exudate_level", "wound_area_cm2", "wbc_count"],
}
CV_SEED = 42
FOLDS = 3
LEAKS = ["phase_code", "phase_confidence_pct", "days_to_next_visit", "closure_referral", "dates"]
# The demo's columns that carry nothing about the label (drawn independently of it by
# fusion_dag.demo.metadata_table): their spread is the screen's noise.
UNINFORMATIVE = [
    "wbc_count",
    "pain_score",
    "albumin_g_dl",
    "wound_location",
    "dressing_type",
    "offloading",
]
# (measurement, the signal it fires, what it is) for the evidence table.
MEASUREMENTS = [
    ("alone_share", "alone", "kappa alone / the forest's"),
    ("alone_auc", "auc", "one-vs-rest AUC where filled"),
    ("drop_excess", "drop", "kappa lost without it, over the other columns' median"),
    ("importance_ratio", "importance", "importance / the next's"),
]


def planted_leaks(samples: pd.DataFrame, seed: int) -> dict:
    """The five leaks (module docstring) built from ``samples``' labels: leak name -> its
    columns (name -> values aligned with ``samples``)."""
    from fusion_dag.artifacts import GROUP, ID, LABEL
    from fusion_dag.demo import MISSING_SHARE

    rng = np.random.default_rng(seed)
    label = samples[LABEL].to_numpy()
    n = len(label)

    def with_holes(values) -> pd.Series:
        return pd.Series(values).mask(rng.random(n) < MISSING_SHARE)

    code = samples[LABEL].map({"I": 1.0, "P": 2.0, "R": 3.0}).to_numpy()
    written = rng.random(n) < 0.4
    confidence = samples[LABEL].map({"I": 20.0, "P": 55.0, "R": 90.0}).to_numpy(copy=True)
    redrawn = rng.random(n) < 0.2
    confidence[redrawn] = rng.choice([20.0, 55.0, 90.0], size=redrawn.sum())
    booked = samples[LABEL].map({"I": 7.0, "P": 14.0, "R": 28.0}).to_numpy()
    days = np.round(booked * np.exp(rng.normal(0.0, 0.3, n)))
    referred = rng.random(n) < np.where(label == "R", 0.85, 0.03)
    # A patient's visits in order (the demo's ids are P001_V1, P001_V2, ...), each on the day
    # the previous one booked.
    order = np.lexsort((samples[ID].to_numpy(), samples[GROUP].to_numpy()))
    patients = samples.loc[order, GROUP].to_numpy()
    booked_before = pd.Series(days[order]).groupby(patients).cumsum().to_numpy() - days[order]
    names, patient = np.unique(patients, return_inverse=True)
    first_day = rng.integers(0, 730, len(names))
    assessment = np.empty(n)
    assessment[order] = booked_before + first_day[patient]
    return {
        "phase_code": {"phase_code": np.where(written, code, np.nan)},
        "phase_confidence_pct": {"phase_confidence_pct": with_holes(confidence)},
        "days_to_next_visit": {"days_to_next_visit": with_holes(days)},
        "closure_referral": {"closure_referral": with_holes(np.where(referred, "yes", "no"))},
        "dates": {
            "assessment_day": with_holes(assessment),
            "next_visit_day": with_holes(assessment + days),
        },
    }


def screen(samples: pd.DataFrame, settings: dict, permutations: int, threads: int):
    """The explain target's importance table (leak screen included) on one partition."""
    from fusion_dag.artifacts import LABEL, label_indices
    from fusion_dag.explain import forest_importance, importance_table, screen_columns
    from fusion_dag.folds import assign_folds
    from fusion_dag.metadata import build_pipeline, fit_on

    folds = assign_folds(samples, FOLDS, CV_SEED, CLASSES).assign(repeat=1)
    records = []
    for fold in range(1, FOLDS + 1):
        train = samples[(folds["fold"] != fold).to_numpy()]
        pipeline = build_pipeline(settings, CV_SEED)
        fit_on(pipeline, train, label_indices(train[LABEL], CLASSES), threads)
        records.append({"repeat": 1, "fold": fold, "model": pipeline})
    per_fold = forest_importance(
        samples,
        folds,
        records,
        lambda model: model,
        {"classes": CLASSES, "permutations": permutations, "seed": CV_SEED, "n_jobs": threads},
    )
    columns = screen_columns(samples, CLASSES, settings, FOLDS, CV_SEED, threads)
    return importance_table(per_fold, columns)


def measure(root: Path, size: dict, settings: dict, permutations: int, threads: int) -> list:
    """Per demo seed, the screen of the demo alone and of the demo with each leak: records of
    seed, leak (``none`` for the demo alone), its columns and the importance table."""
    results = []
    for seed in size["seeds"]:
        samples = demo_samples(root, size["patients"], seed, size.get("columns"))
        tables = {"none": {}, **planted_leaks(samples, seed + 1000)}
        for leak, columns in tables.items():
            started = time.perf_counter()
            table = samples.assign(**{name: np.asarray(v) for name, v in columns.items()})
            importance = screen(table, settings, permutations, threads)
            results.append(
                {"seed": seed, "leak": leak, "columns": list(columns), "table": importance}
            )
            fired = importance.loc[importance["leak_suspect"], ["feature", "leak_signals"]]
            print(
                f"seed {seed}, leak {leak}: {time.perf_counter() - started:.0f} s; fired: "
                + ("; ".join(f"{f} ({s})" for f, s in fired.itertuples(index=False)) or "none"),
                flush=True,
            )
    return results


def joined(values, digits: int = 2) -> str:
    """One table cell of a leak's values (two columns for the dates)."""
    return "<br>".join(f"{value:.{digits}f}" for value in values)


def leak_rows(results: list) -> list:
    """One row per seed and table: its forest's kappa, the planted columns' measurements and
    signals, and the demo columns that fired."""
    rows = []
    for result in results:
        table = result["table"].set_index("feature")
        planted = table.loc[result["columns"]]
        demo = table.drop(index=result["columns"])
        flagged = [f"{f} ({demo.loc[f, 'leak_signals']})" for f in demo.index[demo["leak_suspect"]]]
        rows.append(
            [
                str(result["seed"]),
                result["leak"],
                f"{table['forest_kappa'].iloc[0]:.3f}",
                "<br>".join(planted.index),
                joined(planted["alone_kappa"]),
                joined(planted["alone_share"]),
                joined(planted["alone_auc"]),
                joined(planted["drop_kappa"]),
                joined(planted["drop_excess"]),
                joined(planted["drop_kappa"] - planted["drop_excess"]),
                joined(planted["importance_ratio"], 1),
                "<br>".join(s or "**none**" for s in planted["leak_signals"]),
                ", ".join(flagged) or "none",
            ]
        )
    return rows


def evidence_rows(results: list) -> list:
    """Per measurement: its threshold at the smallest table's visits, the largest value a demo
    column reached over every seed and table (and which column), and the smallest value
    reached by a planted column whose signal it fired."""
    from fusion_dag.explain import ALONE_SHARE, leak_thresholds

    def columns(planted: bool) -> pd.DataFrame:
        parts = [r["table"][r["table"]["feature"].isin(r["columns"]) == planted] for r in results]
        return pd.concat(parts, ignore_index=True)

    demo, leaks = columns(planted=False), columns(planted=True)
    thresholds = leak_thresholds(demo["n_visits"].min())
    thresholds["alone"] = f"{ALONE_SHARE:g} (kappa alone >= {thresholds['alone']:.2f})"
    rows = []
    for name, signal, meaning in MEASUREMENTS:
        top = demo.loc[demo[name].idxmax()]
        fired = leaks[leaks["leak_signals"].str.split(", ").map(lambda s, g=signal: g in s)]
        rows.append(
            [
                f"`{signal}`: {meaning}",
                f"{thresholds[signal]:.2f}" if signal != "alone" else thresholds[signal],
                f"{top[name]:.2f} ({top['feature']})",
                f"{fired[name].min():.2f}" if len(fired) else "",
            ]
        )
    return rows


def noise_line(results: list) -> str:
    """The screen's noise: the demo's uninformative columns' alone kappa, drop and drop over
    the other columns' median, also in units of 1 / sqrt(visits) (the scale of
    fusion_dag.explain's thresholds)."""
    table = pd.concat([r["table"] for r in results], ignore_index=True)
    noise = table[table["feature"].isin(UNINFORMATIVE)]
    root = np.sqrt(noise["n_visits"])
    excess = noise["drop_excess"]
    return (
        f"The demo's columns that carry nothing ({', '.join(UNINFORMATIVE)}), over every seed "
        f"and table: alone kappa {noise['alone_kappa'].min():.3f} to "
        f"{noise['alone_kappa'].max():.3f} (x sqrt(visits): "
        f"{(noise['alone_kappa'] * root).min():.2f} to {(noise['alone_kappa'] * root).max():.2f}), "
        f"kappa lost without them {noise['drop_kappa'].min():.3f} to "
        f"{noise['drop_kappa'].max():.3f} (standard deviation {noise['drop_kappa'].std():.3f}, "
        f"x sqrt(visits) {(noise['drop_kappa'] * root).std():.2f}), over the other columns' "
        f"median {excess.min():.3f} to {excess.max():.3f} (standard deviation {excess.std():.3f}, "
        f"x sqrt(visits) {(excess * root).std():.2f}), one-vs-rest AUC up to "
        f"{noise['alone_auc'].max():.2f}."
    )


def report(
    results: list, size: dict, settings: dict, permutations: int, seconds: float, tiny: bool
) -> str:
    """The RESULTS.md section."""
    caught = {
        seed: sum(
            r["table"].loc[r["table"]["feature"].isin(r["columns"]), "leak_suspect"].any()
            for r in results
            if r["seed"] == seed and r["leak"] != "none"
        )
        for seed in size["seeds"]
    }
    false = sum(
        r["table"].loc[~r["table"]["feature"].isin(r["columns"]), "leak_suspect"].sum()
        for r in results
    )
    met = all(count >= 4 for count in caught.values()) and false == 0
    headings = [
        "seed",
        "leak",
        "forest kappa",
        "planted column",
        "alone kappa",
        "alone / forest",
        "AUC filled",
        "drop",
        "drop excess",
        "others' median drop",
        "importance ratio",
        "signals fired",
        "demo columns fired",
    ]
    return "\n".join(
        [
            HEADING,
            "",
            f"`python bench/leaks.py{' --tiny' if tiny else ''}` on {machine()}, {seconds:.0f} "
            f"s: the demo table ({size['patients']} patients, demo seeds "
            f"{', '.join(map(str, size['seeds']))}), "
            "each leak planted on its own (bench/leaks.py's docstring says how each is built), "
            f"one patient-grouped {FOLDS}-fold partition (cv.seed {CV_SEED}), the config's "
            f"metadata_model ({settings['n_estimators']} trees), {permutations} permutations. "
            "Leak `none`: the demo alone. Signals (fusion_dag/explain.py, docs/explain.md): "
            "`alone`, `auc`, `drop`, `importance`.",
            "",
            markdown_table(headings, leak_rows(results), right=set(headings[2:3] + headings[4:11])),
            "",
            "Leaks flagged: "
            + ", ".join(f"seed {seed} {count} of {len(LEAKS)}" for seed, count in caught.items())
            + f"; demo columns flagged: {false}. Target (at least 4 of 5 flagged, no demo column, "
            f"on every seed): {'met' if met else 'missed'}.",
            "",
            "What each threshold rests on: the largest value any demo column reached (every seed, "
            "with and without a leak planted) and the smallest a leak column reached where the "
            "signal fired.",
            "",
            markdown_table(
                ["signal", "threshold", "demo columns: largest", "leaks it caught: smallest"],
                evidence_rows(results),
                right={"threshold", "demo columns: largest", "leaks it caught: smallest"},
            ),
            "",
            noise_line(results),
            "",
        ]
    )


def main() -> None:
    options = arguments(__doc__)
    size = TINY if options.tiny else FULL
    settings = forest_settings(TINY if options.tiny else None)
    permutations = (
        TINY["permutations"] if options.tiny else workflow_config()["explain"]["permutations"]
    )
    run_and_publish(
        HEADING,
        "leaks",
        lambda folder: measure(folder, size, settings, permutations, options.threads),
        lambda results, seconds: report(
            results, size, settings, permutations, seconds, options.tiny
        ),
        options.tiny,
    )


if __name__ == "__main__":
    main()
