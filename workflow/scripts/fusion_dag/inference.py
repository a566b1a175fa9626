"""Run-level statistics: how sure a run can be of its metrics and of the differences between
combinations.

Why intervals and paired tests: on one 3-fold partition of a clinical table a forest's kappa
moves by 0.05 with the partition seed alone, so a mean over folds cannot tell a real gain from
noise. The headline averages repeated partitions; its intervals come from the spread of the
refitted fold models, because a bootstrap of the pooled predictions holds the fitted models
fixed and covers only which patients were sampled. A claim that one combination beats another
rests on a t-test of the paired per-fold differences, Holm-adjusted within a pre-specified
family.

One rule for every interval and test of a run (headline, contrasts, member
drop, ablation): Bouckaert and Frank's corrected repeated k-fold cv test (PAKDD 2004, LNCS
3056:3), Nadeau and Bengio's corrected resampled variance (Machine Learning 52:239, 2003)
applied to the J = folds x repeats per-fold values with J - 1 degrees of freedom, at
alpha = 1 - ``evaluation.confidence``. Chosen by ``bench/intervals.py``, which refits the
workflow's forest on its own folds and fuses it with a weaker member as the primary contrasts
do (bench/RESULTS.md, docs/evaluation.md).

The patient bootstrap resamples patients, not rows, so each patient's visits stay together as
the folds keep them (a cluster bootstrap: Field and Welsh 2007, JRSS-B 69:369); the metrics of
each resample are :func:`fusion_dag.evaluate.weighted_metrics` with the draw counts as weights.
"""

import numpy as np
import pandas as pd

from fusion_dag.artifacts import ID, LABEL, label_indices, prob_columns
from fusion_dag.evaluate import repeat_arrays, weighted_metrics
from fusion_dag.plan import POWER


def significance(evaluation: dict) -> float:
    """alpha = 1 - ``evaluation.confidence``: the level of every verdict of the run, so a
    verdict and an interval at that confidence never disagree (an interval excludes zero
    exactly when its unadjusted p-value is below alpha)."""
    return 1.0 - float(evaluation["confidence"])


def patient_weights(groups_by_repeat: list, n_resamples: int, seed: int) -> list:
    """Row weights of ``n_resamples`` patient-bootstrap resamples, one matrix per repeat.

    Patients are drawn with replacement once per resample and the same draw weights every
    repeat's rows (and both sides of a paired comparison), so differences are paired.
    """
    patients = np.unique(np.concatenate(groups_by_repeat))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(patients), size=(n_resamples, len(patients)))
    counts = np.zeros((n_resamples, len(patients)))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return [counts[:, np.searchsorted(patients, groups)] for groups in groups_by_repeat]


def bootstrap_metrics(oof: pd.DataFrame, classes: list, n_resamples: int, seed: int) -> dict:
    """Point estimate and patient-bootstrap samples of every pooled metric.

    Returns name -> (point, samples): the point is the mean over repeats of the metric on that
    repeat's pooled out-of-fold rows; each sample is the same mean on one patient resample.
    """
    arrays = repeat_arrays(oof, classes)
    weights = patient_weights([groups for groups, _, _ in arrays], n_resamples, seed)
    points, samples = [], []
    for (_, truth, probs), resampled in zip(arrays, weights, strict=True):
        points.append(weighted_metrics(np.ones((1, len(truth))), truth, probs))
        samples.append(weighted_metrics(resampled, truth, probs))
    return {
        name: (
            float(np.mean([p[name][0] for p in points])),
            np.mean([s[name] for s in samples], axis=0),
        )
        for name in points[0]
    }


def interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap samples (resamples with an undefined metric skipped)."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def corrected_standard_error(values, test_share: float) -> float:
    """Nadeau and Bengio's corrected standard error of the mean of J per-fold values.

    The sample variance is inflated by ``1/J + n_test/n_train`` (not the naive ``1/J``)
    because overlapping training sets make the folds' values correlated. At the 3 folds x 2
    repeats default the factor is 1/6 + 1/2.
    """
    values = np.asarray(values, dtype=float)
    return float(np.sqrt(values.var(ddof=1) * (1.0 / len(values) + test_share)))


def rule_degrees(values) -> int:
    """The rule's degrees of freedom: J - 1 for the J per-fold values a statistic has
    (Bouckaert and Frank 2004's k x r - 1).

    Why not K - 1 (the rule before): in the simulation that refits the workflow's forest and
    fuses it as the primary contrasts do (bench/RESULTS.md), the corrected variance with J - 1
    kept the headline interval's coverage within 0.03 of 0.95 at 3 x 2, 5 x 2 and 5 x 5 and
    called the nested null contrast below the nominal rate (conservatively), and K - 1 only
    lost power; the naive variance s^2 / J failed both. The headline intervals already used
    J - 1, so one rule now serves both.
    """
    return int(np.isfinite(np.asarray(values, dtype=float)).sum()) - 1


def corrected_resampled_ttest(
    differences, test_share: float, df: int | None = None
) -> tuple[float, float]:
    """The rule's test (Nadeau and Bengio's corrected resampled t-test, Machine Learning
    52:239, 2003, on repeated k-fold values as Bouckaert and Frank 2004).

    ``differences`` are the J = repeats x folds per-fold differences of a metric between two
    models scored on the same rows; ``test_share`` is n_test / n_train of a fold. The statistic
    is their mean over :func:`corrected_standard_error`, with ``df`` degrees of freedom
    (:func:`rule_degrees` when None; the bench passes others to compare rules). Returns (t, p)
    with a two-sided p-value.
    """
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    error = corrected_standard_error(d, test_share)
    if error == 0.0:
        return 0.0, 1.0
    t = float(d.mean() / error)
    return t, float(2.0 * stats.t.sf(abs(t), df=rule_degrees(d) if df is None else df))


def corrected_interval(
    centre: float, values, test_share: float, confidence: float, df: int | None = None
) -> tuple[float, float]:
    """``centre`` plus or minus the t quantile (``df`` degrees of freedom,
    :func:`rule_degrees` when None) times the corrected standard error of the J per-fold
    ``values``: the interval that inverts :func:`corrected_resampled_ttest` when ``centre`` is
    the values' mean.

    Unlike a bootstrap of the pooled predictions, which holds the fitted fold models fixed,
    it carries the spread the folds' refitted models show, so it is an interval for the
    method's expected score on new patients (Nadeau and Bengio 2003; Bates, Hastie and
    Tibshirani 2023 on why the naive CV interval is too narrow). Values a fold could not
    define (a class absent from it) are left out.
    """
    from scipy import stats

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    degrees = rule_degrees(values) if df is None else df
    half = stats.t.ppf(0.5 + confidence / 2.0, df=degrees)
    half *= corrected_standard_error(values, test_share)
    return float(centre - half), float(centre + half)


def detectable_gain(standard_error: float, df: int, alpha: float, power: float = POWER) -> float:
    """The true difference the rule's test calls with probability ``power`` (two-sided at
    ``alpha``, before any Holm adjustment): (t(1 - alpha/2, df) + t(power, df)) x the standard
    error, the usual approximation that ignores the small chance of a call in the wrong
    direction.

    Why: "inconclusive" alone does not say whether the design could have seen a gain worth
    having; this number does, in the units of the difference, from the contrast's own spread.
    """
    from scipy import stats

    quantiles = stats.t.ppf(1.0 - alpha / 2.0, df) + stats.t.ppf(power, df)
    return float(quantiles * standard_error)


def fold_test_share(oof: pd.DataFrame) -> float:
    """The mean over folds of n_test / n_train (rows), from a pooled out-of-fold table."""
    fold_rows = oof.groupby(["repeat", "fold"]).size()
    repeat_rows = oof.groupby("repeat").size().reindex(fold_rows.index, level=0)
    return float(np.mean(fold_rows / (repeat_rows - fold_rows)))


def fold_values(oof: pd.DataFrame, classes: list) -> dict:
    """Every pooled metric on each (repeat, fold)'s validation rows: name -> array (J,), in
    (repeat, fold) order. The folds' spread is what :func:`corrected_interval` needs."""
    columns = prob_columns(classes)
    truth = label_indices(oof[LABEL], classes)
    probs = oof[columns].to_numpy(dtype=float)
    per_fold = []
    for rows in oof.groupby(["repeat", "fold"], sort=True).indices.values():
        per_fold.append(weighted_metrics(np.ones((1, len(rows))), truth[rows], probs[rows]))
    return {name: np.array([m[name][0] for m in per_fold]) for name in per_fold[0]}


def holm_adjusted(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (Scand. J. Statist. 6:65, 1979).

    The k-th smallest of m p-values is multiplied by m - k + 1, the running maximum taken so
    the order is kept, and capped at 1. It controls the family-wise error rate with no
    assumption on how the tests depend on each other, which matters here: every contrast of a
    family shares the primary's predictions. (statsmodels' ``multipletests(method="holm")``
    computes the same; it is not a dependency of the workflow.)
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def paired_rows(first: pd.DataFrame, second: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two out-of-fold tables restricted to the (repeat, id) rows both scored."""
    keys = first[["repeat", ID]].merge(second[["repeat", ID]], on=["repeat", ID])
    return (
        keys.merge(first, on=["repeat", ID], validate="1:1"),
        keys.merge(second, on=["repeat", ID], validate="1:1"),
    )


def fold_kappa_differences(first, second, classes: list) -> np.ndarray:
    """Per (repeat, fold) validation kappa of ``first`` minus ``second``.

    The tables are row-aligned (as :func:`paired_rows` returns them).
    """
    return fold_values(first, classes)["kappa"] - fold_values(second, classes)["kappa"]


def compare(
    first: pd.DataFrame, second: pd.DataFrame, classes: list, evaluation: dict, seed: int
) -> dict:
    """Paired comparison of two combinations on the rows both scored.

    ``kappa_diff`` is the mean over repeats of (pooled kappa of ``first`` - of ``second``), the
    headline's difference. The test and its interval are the run's one rule on the
    J per-fold differences: their mean (``kappa_diff_folds``) plus or minus the t quantile
    with J - 1 degrees of freedom times the corrected standard error, at
    ``evaluation.confidence``, so the interval excludes zero exactly when the unadjusted
    p-value is below alpha = 1 - confidence. ``detectable_gain`` is the kappa difference that
    test calls with 80 % power (:func:`detectable_gain`). The paired patient bootstrap (one
    patient draw for both sides) stays as ``kappa_diff_boot_``: it holds the fitted models
    fixed and excludes zero far more often than its level. Brier score differences (lower is
    better) get the same test.
    """
    first, second = paired_rows(first, second)
    # The same rows, hence the same patients and seed: both sides get the same patient draws.
    mine, theirs = (
        bootstrap_metrics(table, classes, evaluation["bootstrap"], seed)
        for table in (first, second)
    )
    share = fold_test_share(first)
    confidence = evaluation["confidence"]
    mine_folds, theirs_folds = fold_values(first, classes), fold_values(second, classes)
    result = {"n_rows": int(first[ID].nunique())}
    for metric in ("kappa", "brier"):
        differences = mine_folds[metric] - theirs_folds[metric]
        t, p = corrected_resampled_ttest(differences, share)
        centre = float(differences.mean())
        low, high = corrected_interval(centre, differences, share, confidence)
        if metric == "kappa":
            boot = interval(mine["kappa"][1] - theirs["kappa"][1], confidence)
            result.update(
                kappa_diff=mine["kappa"][0] - theirs["kappa"][0],
                kappa_diff_ci_low=low,
                kappa_diff_ci_high=high,
                kappa_diff_folds=centre,
                t_corrected=t,
                p_value=p,
                detectable_gain=detectable_gain(
                    corrected_standard_error(differences, share),
                    rule_degrees(differences),
                    significance(evaluation),
                ),
                kappa_diff_boot_low=boot[0],
                kappa_diff_boot_high=boot[1],
            )
        else:
            result.update(
                brier_diff=mine["brier"][0] - theirs["brier"][0],
                brier_diff_ci_low=low,
                brier_diff_ci_high=high,
                brier_p_value=p,
            )
    return result


def verdicts(differences, p_values, alpha: float) -> tuple[np.ndarray, list]:
    """Holm-adjusted p-values of one family and each contrast's verdict: ``better`` or
    ``worse`` (the sign of its difference) when the adjusted p is below ``alpha``
    (:func:`significance`), otherwise ``inconclusive``: at the 3 x 2 default the rule has
    5 degrees of freedom and a real gain of a few hundredths often does not reach it (the
    contrast's ``detectable_gain`` says which gain would), so no verdict says there is no
    difference."""
    adjusted = holm_adjusted(p_values)
    words = [
        ("better" if d > 0 else "worse") if p < alpha else "inconclusive"
        for d, p in zip(differences, adjusted, strict=True)
    ]
    return adjusted, words
