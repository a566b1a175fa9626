"""Simulations that refit: coverage of the headline's intervals and the size of the paired test.

    python bench/intervals.py            # 200 data sets per measurement, into bench/RESULTS.md
    python bench/intervals.py --tiny     # 20 data sets, for CI (nothing is written)

Why: a headline interval should cover what a reader takes it to mean, the method's expected
kappa on new patients, and a test that calls a fusion better should do so about 5 % of the
time when it is not. Both depend on training variability, which only refitting shows: each
simulated data set (patients with 1 to 6 visits sharing a patient effect, the study's
imbalance I/P/R about 29/60/11 %) goes through this workflow's own patient-grouped,
stratified folds (``fusion_dag.folds.assign_folds``), R x K refitted models and its own
interval and test code (``fusion_dag.inference``).

- Coverage: the truth is the expected kappa of the model trained on a fold's share of the
  patients, averaged over many independent training samples, each scored on a large sample of
  new patients. Measured for the patient bootstrap of the pooled predictions (which holds the
  fitted fold models fixed) and for the corrected resampled interval (the headline's).
- Size: two models of equal expected kappa by construction (each sees two of four equally
  informative features); how often the corrected resampled t-test rejects at 5 %, how often
  the naive t-test (variance / J) and the paired patient-bootstrap interval exclude zero.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fusion_dag.evaluate import kappa  # noqa: E402
from fusion_dag.folds import assign_folds  # noqa: E402
from fusion_dag.inference import (  # noqa: E402
    bootstrap_metrics,
    compare,
    corrected_interval,
    corrected_resampled_ttest,
    fold_test_share,
    fold_values,
    interval,
)

CLASSES = ["I", "P", "R"]
SHARES = (0.29, 0.60, 0.11)
FEATURES = ["x0", "x1", "x2", "x3"]
# Latent = COEFFICIENT x (sum of the four features) + patient effect + logistic noise.
COEFFICIENT = 0.8
PATIENT_SD = 1.0


def latent_scores(rng, patients: int) -> tuple:
    """(groups, features, latent) of ``patients`` patients with 1 to 6 visits each."""
    visits = rng.integers(1, 7, size=patients)
    groups = np.repeat(np.arange(patients), visits)
    features = rng.normal(size=(len(groups), len(FEATURES)))
    effect = rng.normal(scale=PATIENT_SD, size=patients)[groups]
    latent = COEFFICIENT * features.sum(axis=1) + effect + rng.logistic(size=len(groups))
    return groups, features, latent


def class_thresholds(seed: int = 0) -> np.ndarray:
    """Cut points of the latent score that give the study's class shares."""
    _, _, latent = latent_scores(np.random.default_rng(seed), 100_000)
    return np.quantile(latent, np.cumsum(SHARES)[:-1])


def simulated_visits(rng, patients: int, thresholds: np.ndarray) -> pd.DataFrame:
    """A visits table: ``id``, ``group``, ``label`` and the four features."""
    groups, features, latent = latent_scores(rng, patients)
    table = pd.DataFrame(features, columns=FEATURES)
    table.insert(0, "label", np.array(CLASSES)[np.searchsorted(thresholds, latent)])
    table.insert(0, "group", [f"p{g}" for g in groups])
    table.insert(0, "id", [f"v{i}" for i in range(len(groups))])
    return table


def fitted_model(features: np.ndarray, labels: np.ndarray):
    """The model whose evaluation is simulated: a multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000).fit(features, labels)


def partitions(table: pd.DataFrame, folds: int, repeats: int, seed: int) -> list:
    """Each repeat's fold of every row, from this workflow's patient-grouped folds."""
    return [
        assign_folds(table, folds, seed + repeat - 1, CLASSES)["fold"].to_numpy()
        for repeat in range(1, repeats + 1)
    ]


def cross_validated(table: pd.DataFrame, features: list, assigned: list) -> pd.DataFrame:
    """Pooled out-of-fold predictions of the model on ``features``, refitted on every fold of
    the ``assigned`` partitions (see :func:`partitions`)."""
    columns = [f"prob_{c}" for c in CLASSES]
    values, labels = table[features].to_numpy(), table["label"].to_numpy()
    parts = []
    for repeat, folds in enumerate(assigned, start=1):
        for fold in np.unique(folds):
            held_out = folds == fold
            model = fitted_model(values[~held_out], labels[~held_out])
            rows = table.loc[held_out, ["id", "group", "label"]].copy()
            rows[columns] = model.predict_proba(values[held_out])
            parts.append(rows.assign(repeat=repeat, fold=fold))
    return pd.concat(parts, ignore_index=True)[["repeat", "fold", "id", "group", "label", *columns]]


def expected_kappa(features, train_patients, thresholds, rng, fits: int, test_patients: int):
    """The method's expected kappa on new patients: ``fits`` models, each trained on
    ``train_patients`` fresh patients, scored on one large sample of new patients."""
    test = simulated_visits(rng, test_patients, thresholds)
    truth = pd.Categorical(test["label"], categories=CLASSES).codes
    kappas = []
    for _ in range(fits):
        train = simulated_visits(rng, train_patients, thresholds)
        model = fitted_model(train[features].to_numpy(), train["label"].to_numpy())
        predicted = pd.Categorical(
            model.predict(test[features].to_numpy()), categories=CLASSES
        ).codes
        kappas.append(kappa(truth, predicted, len(CLASSES)))
    return float(np.mean(kappas))


def coverage(datasets: int, patients: int, folds: int, repeats: int, bootstrap: int, seed: int):
    """Coverage and mean width of the patient-bootstrap and the corrected intervals of the
    pooled kappa, over ``datasets`` simulated data sets."""
    rng = np.random.default_rng(seed)
    thresholds = class_thresholds()
    train_patients = round(patients * (folds - 1) / folds)
    truth = expected_kappa(FEATURES, train_patients, thresholds, rng, 200, 20_000)
    hits = {"bootstrap": [], "corrected": []}
    widths = {"bootstrap": [], "corrected": []}
    for number in range(datasets):
        table = simulated_visits(rng, patients, thresholds)
        oof = cross_validated(table, FEATURES, partitions(table, folds, repeats, number))
        point, samples = bootstrap_metrics(oof, CLASSES, bootstrap, number)["kappa"]
        values = fold_values(oof, CLASSES)["kappa"]
        intervals = {
            "bootstrap": interval(samples, 0.95),
            "corrected": corrected_interval(point, values, fold_test_share(oof), 0.95),
        }
        for name, (low, high) in intervals.items():
            hits[name].append(low <= truth <= high)
            widths[name].append(high - low)
    return {
        "truth": truth,
        **{f"{name}_coverage": float(np.mean(hits[name])) for name in hits},
        **{f"{name}_width": float(np.mean(widths[name])) for name in widths},
    }


def null_rejections(
    datasets: int, patients: int, folds: int, repeats: int, bootstrap: int, seed: int
):
    """Rejection rates at 5 % for two models of equal expected kappa, refitted per fold: the
    corrected resampled t-test with K - 1 degrees of freedom (the comparisons' test), with
    Nadeau and Bengio's J - 1, the naive t-test (variance / J) and, unless ``bootstrap`` is 0,
    the paired patient-bootstrap interval excluding zero."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    thresholds = class_thresholds()
    rejected = {"folds_df": [], "nadeau_bengio": [], "naive": [], "bootstrap": []}
    evaluation = {"bootstrap": max(bootstrap, 100), "confidence": 0.95}
    for number in range(datasets):
        table = simulated_visits(rng, patients, thresholds)
        assigned = partitions(table, folds, repeats, number)
        first = cross_validated(table, FEATURES[:2], assigned)
        second = cross_validated(table, FEATURES[2:], assigned)
        differences = fold_values(first, CLASSES)["kappa"] - fold_values(second, CLASSES)["kappa"]
        share = fold_test_share(first)
        rejected["folds_df"].append(
            corrected_resampled_ttest(differences, share, folds - 1)[1] < 0.05
        )
        rejected["nadeau_bengio"].append(corrected_resampled_ttest(differences, share)[1] < 0.05)
        rejected["naive"].append(stats.ttest_1samp(differences, 0.0).pvalue < 0.05)
        if bootstrap:
            result = compare(first, second, CLASSES, evaluation, number)
            rejected["bootstrap"].append(
                result["kappa_diff_boot_low"] > 0 or result["kappa_diff_boot_high"] < 0
            )
    return {name: float(np.mean(values)) for name, values in rejected.items() if values}


# (folds, repeats): the default and the publication recipe of docs/evaluation.md.
DESIGNS = [(3, 2), (5, 5)]


def report(measured: dict, settings: dict, seconds: float) -> str:
    """The RESULTS.md section."""
    from run import machine, markdown_table

    n = settings["datasets"]
    cover_rows, size_rows = [], []
    for (folds, repeats), result in measured.items():
        design = f"{folds} x {repeats}"
        cover, size = result["coverage"], result["size"]
        cover_rows += [
            [
                design,
                "patient bootstrap (fitted models held fixed)",
                f"{cover['bootstrap_coverage']:.3f}",
                f"{cover['bootstrap_width']:.3f}",
            ],
            [
                design,
                "corrected resampled, J - 1 df (the headline's `_ci_`)",
                f"{cover['corrected_coverage']:.3f}",
                f"{cover['corrected_width']:.3f}",
            ],
        ]
        size_rows += [
            [
                design,
                "corrected t-test, K - 1 df (the comparisons' `p_value`)",
                f"{size['folds_df']:.3f}",
            ],
            [
                design,
                "corrected t-test, J - 1 df (Nadeau-Bengio as published)",
                f"{size['nadeau_bengio']:.3f}",
            ],
            [design, "naive t-test over the folds (variance / J)", f"{size['naive']:.3f}"],
            [design, "paired patient-bootstrap interval excludes 0", f"{size['bootstrap']:.3f}"],
        ]
    truths = ", ".join(
        f"{folds} x {repeats}: {result['coverage']['truth']:.3f}"
        for (folds, repeats), result in measured.items()
    )
    lines = [
        "## Intervals and the paired test: simulations that refit",
        "",
        f"`python bench/intervals.py` on {machine()}, {seconds:.0f} s. Each of {n} simulated "
        f"data sets per row: {settings['patients']} patients with 1 to 6 visits (patient effect "
        "SD 1 on the latent scale, classes I/P/R about 29/60/11 %), a logistic regression "
        "refitted on this workflow's patient-grouped folds (K folds x R repeats, J = K x R), "
        f"{settings['bootstrap']} patient-bootstrap resamples.",
        "",
        markdown_table(
            ["folds x repeats", "interval of the pooled kappa", "coverage", "mean width"],
            cover_rows,
            right=(2, 3),
        ),
        "",
        "Coverage of the expected kappa on new patients of the model trained on a fold's share "
        f"of the patients (200 training samples, 20,000 test patients; {truths}). Nominal "
        f"0.95; with {n} data sets a coverage's binomial standard error is about "
        f"{np.sqrt(0.95 * 0.05 / n):.3f}.",
        "",
        markdown_table(
            ["folds x repeats", "two models of equal expected kappa", "rejects at 5 %"],
            size_rows,
            right=(2,),
        ),
        "",
        f"Nominal 0.05; binomial standard error about {np.sqrt(0.05 * 0.95 / n):.3f}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="20 data sets, nothing written")
    parser.add_argument("--datasets", type=int, default=200)
    arguments = parser.parse_args()
    settings = {
        "datasets": 20 if arguments.tiny else arguments.datasets,
        "patients": 160,
        "bootstrap": 200 if arguments.tiny else 1000,
    }
    from threadpoolctl import threadpool_limits

    # The fits are small: one BLAS thread per process is faster than two fighting for 2 cores.
    threadpool_limits(1)
    start = time.time()
    measured = {}
    for folds, repeats in DESIGNS[:1] if arguments.tiny else DESIGNS:
        design = {**settings, "folds": folds, "repeats": repeats}
        measured[(folds, repeats)] = {
            "coverage": coverage(**design, seed=1),
            "size": null_rejections(**design, seed=2),
        }
        print(f"{folds} x {repeats}: {measured[(folds, repeats)]}", flush=True)
    section = report(measured, settings, time.time() - start)
    print(section)
    if not arguments.tiny:
        from run import write_section

        write_section(section.splitlines()[0], section)


if __name__ == "__main__":
    main()
