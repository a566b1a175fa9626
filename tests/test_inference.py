"""Run-level statistics: the patient bootstrap, the run's test rule (corrected resampled
variance, J - 1 degrees of freedom) and its interval, the detectable gain, Holm's adjustment,
and the paired comparison with its verdicts at alpha = 1 - confidence."""

import numpy as np
import pytest

from fusion_dag.evaluate import weighted_metrics
from fusion_dag.inference import (
    compare,
    corrected_resampled_ttest,
    detectable_gain,
    fold_kappa_differences,
    holm_adjusted,
    interval,
    paired_rows,
    patient_weights,
    significance,
    verdicts,
)
from tests.conftest import CLASSES, fold_kappas, synthetic_oof

EVALUATION = {"bootstrap": 300, "confidence": 0.95, "primary": "a"}


def test_patient_bootstrap_resamples_whole_patients():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    (weights,) = patient_weights([groups], 200, 1)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
    # Each resample draws as many patients as there are (3), whatever their row counts.
    assert (weights[:, [0, 2, 3]].sum(axis=1) == 3).all()


def clustered_sample(rng, patients: int):
    """Visits of patients whose predictions are all right or mostly wrong together."""
    visits = 4
    good = rng.random(patients) < 0.6
    truth = rng.integers(0, 3, (patients, visits))
    wrong = (truth + rng.integers(1, 3, (patients, visits))) % 3
    right = np.where(
        good[:, None], rng.random((patients, visits)) < 0.9, rng.random((patients, visits)) < 0.2
    )
    predicted = np.where(right, truth, wrong)
    groups = np.repeat(np.arange(patients), visits).astype(str)
    return groups, truth.ravel(), np.eye(3)[predicted.ravel()] * 0.9 + 0.1 / 3


def test_patient_bootstrap_interval_covers_the_true_kappa_about_95_percent():
    """Coverage over 200 simulated data sets of 60 patients with strongly clustered errors.

    The true kappa comes from one sample of 40,000 patients. With 200 data sets the observed
    coverage of a true 95 % interval has a binomial standard deviation of 1.5 points; the
    percentile bootstrap is known to under-cover slightly at this size, so 0.88 to 0.99 is
    accepted (measured 0.945). Resampling rows instead of patients ignores the clustering and
    covers far less (measured 0.78), which the test also requires, so it can tell the two apart.
    """
    rng = np.random.default_rng(11)
    groups, truth, probs = clustered_sample(rng, 40_000)
    true_kappa = weighted_metrics(np.ones((1, len(truth))), truth, probs)["kappa"][0]
    covered = {"patients": 0, "rows": 0}
    for simulation in range(200):
        groups, truth, probs = clustered_sample(rng, 60)
        units = {"patients": groups, "rows": np.arange(len(truth)).astype(str)}
        for unit, labels in units.items():
            (weights,) = patient_weights([labels], 500, simulation)
            low, high = interval(weighted_metrics(weights, truth, probs)["kappa"], 0.95)
            covered[unit] += low <= true_kappa <= high
    assert 0.88 <= covered["patients"] / 200 <= 0.99
    assert covered["rows"] / 200 < 0.88


def test_corrected_resampled_ttest_matches_the_hand_computed_value():
    # mean 0.1; sample variance 0.02 / 3; corrected by 1/4 + 1/2: 0.005; t = 0.1 / sqrt(0.005).
    t, p = corrected_resampled_ttest([0.1, 0.2, 0.0, 0.1], test_share=0.5)
    assert t == pytest.approx(np.sqrt(2.0))
    assert p == pytest.approx(0.2522155, abs=1e-6)  # two-sided, t distribution with 3 df


def test_detectable_gain_matches_the_hand_computed_value():
    # t(0.975, 5) = 2.570582, t(0.80, 5) = 0.919544: (2.570582 + 0.919544) x 0.02.
    assert detectable_gain(0.02, 5, 0.05) == pytest.approx(0.0698025, abs=1e-6)
    # At alpha 0.10 the first quantile is t(0.95, 5) = 2.015048.
    assert detectable_gain(0.02, 5, 0.10) == pytest.approx(0.0586918, abs=1e-6)


def test_a_tiny_refit_simulation_of_the_nested_contrast_is_not_absurd(monkeypatch):
    """The bench's simulation, small (bench/intervals.py, seconds): the workflow's forest (10
    trees) refitted on its 3 x 2 folds of 8 data sets of 60 patients, fused at 0.70 / 0.30 with
    the image-like member at the noise that makes the true gain 0 and +0.10.

    Too few data sets to measure a size; what can fail: the rule (corrected variance, J - 1
    degrees of freedom) calling more than 2 of 8 null contrasts, rejecting where the naive
    variance (s^2 / J, same df) does not (its standard error is larger by construction), the
    contrast's mean difference not larger at +0.10 than at 0, or the forest's headline interval
    missing its expected kappa in more than 2 of 8.
    """
    from threadpoolctl import threadpool_limits

    import bench.intervals as simulation

    monkeypatch.setattr(simulation, "DESIGNS", ((3, 2),))
    with threadpool_limits(1):
        cuts = simulation.population_cuts()
        scale = 1.0
        truth = simulation.calibrate((40, 4, 1000, 10, scale, cuts, 5))
        levels = simulation.solved_sigmas(truth)
        sigmas = {3: {gain: level["sigma"] for gain, level in levels.items()}}
        datasets = [
            simulation.simulate_dataset((60, number, 10, sigmas, scale, cuts))
            for number in range(8)
        ]
    judged = {
        (gain, corrected): [
            simulation.judged(d[(3, 2, gain)], corrected, 5, truth["forest"], gain)
            for d in datasets
        ]
        for gain in (0.0, 0.10)
        for corrected in (True, False)
    }
    rule, naive = judged[(0.0, True)], judged[(0.0, False)]
    assert sum(j["rejected"] for j in rule) <= 2
    assert all(n["rejected"] for r, n in zip(rule, naive, strict=True) if r["rejected"])
    assert all(r["detectable"] > n["detectable"] for r, n in zip(rule, naive, strict=True))
    means = {
        gain: np.mean(
            [
                (d[(3, 2, gain)]["values"]["fusion"] - d[(3, 2, gain)]["values"]["forest"]).mean()
                for d in datasets
            ]
        )
        for gain in (0.0, 0.10)
    }
    assert means[0.10] > means[0.0] + 0.03
    assert sum(j["forest_covered"] for j in rule) >= 6


def test_holm_adjusts_a_hand_computed_family():
    # Sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1: 0.04, 0.09, 0.08 -> 0.09 (order kept), 0.20.
    p = [0.04, 0.01, 0.20, 0.03]
    assert holm_adjusted(p) == pytest.approx([0.09, 0.04, 0.20, 0.09])
    adjusted, words = verdicts([0.1, -0.2, 0.05, 0.1], [0.04, 0.01, 0.20, 0.03], 0.05)
    assert words == ["inconclusive", "worse", "inconclusive", "inconclusive"]
    # At alpha 0.10 (confidence 0.90) the two adjusted to 0.09 are called too.
    _, words = verdicts([0.1, -0.2, 0.05, 0.1], [0.04, 0.01, 0.20, 0.03], 0.10)
    assert words == ["better", "worse", "inconclusive", "better"]
    assert holm_adjusted([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_comparison_uses_only_rows_both_sides_scored_and_its_interval_inverts_the_test():
    from scipy import stats

    strong, weak = synthetic_oof(0.6, seed=3), synthetic_oof(0.05, seed=3)
    weak = weak[~weak["group"].isin(["p0", "p1"])]  # a modality that dropped two patients
    row = compare(strong, weak, CLASSES, EVALUATION, 42)
    assert row["n_rows"] == 180 - 6
    # By hand: per-fold kappas on the shared rows, mean +- t x the corrected standard error,
    # with J - 1 = 5 degrees of freedom (3 folds x 2 repeats), and the detectable gain.
    shared = strong[strong["id"].isin(weak["id"])]
    mine, share = fold_kappas(shared)
    theirs, _ = fold_kappas(weak)
    d = mine - theirs
    error = np.sqrt(d.var(ddof=1) * (1 / 6 + share))
    half = stats.t.ppf(0.975, df=5) * error
    assert row["kappa_diff_folds"] == pytest.approx(d.mean())
    assert row["kappa_diff_ci_low"] == pytest.approx(d.mean() - half)
    assert row["kappa_diff_ci_high"] == pytest.approx(d.mean() + half)
    assert row["t_corrected"] == pytest.approx(d.mean() / error)
    assert row["p_value"] == pytest.approx(2 * stats.t.sf(d.mean() / error, df=5))
    assert row["detectable_gain"] == pytest.approx(
        (stats.t.ppf(0.975, df=5) + stats.t.ppf(0.80, df=5)) * error
    )
    assert row["kappa_diff_ci_low"] > 0 and row["p_value"] < 0.05
    assert row["brier_diff"] < 0 and row["brier_diff_ci_high"] < 0
    _, words = verdicts([row["kappa_diff_folds"]], [row["p_value"]], significance(EVALUATION))
    assert words == ["better"]


@pytest.mark.parametrize("confidence", [0.90, 0.95])
def test_alpha_follows_confidence_and_a_verdict_never_disagrees_with_its_interval(confidence):
    """A one-contrast family (Holm changes nothing) whose p-value lies between 0.05 and 0.10:
    at confidence 0.90 it is called and its interval excludes 0, at 0.95 neither."""
    from fusion_dag.report import comparisons_table

    evaluation = {**EVALUATION, "bootstrap": 50, "confidence": confidence, "primary": "a"}
    oofs = {"a": synthetic_oof(0.20, seed=2), "a+b": synthetic_oof(0.25, seed=2)}
    row = comparisons_table(oofs, CLASSES, evaluation, 42).iloc[0]
    assert 0.05 < row["p_value"] < 0.10 and row["p_holm"] == row["p_value"]
    assert significance(evaluation) == pytest.approx(1 - confidence)
    excludes_zero = row["kappa_diff_ci_low"] > 0 or row["kappa_diff_ci_high"] < 0
    assert excludes_zero == (row["verdict"] != "inconclusive") == (confidence == 0.90)


def test_a_model_compared_with_itself_differs_by_zero_with_p_one():
    oof = synthetic_oof(0.3)
    row = compare(oof, oof.copy(), CLASSES, EVALUATION, 42)
    assert row["kappa_diff"] == 0.0 and row["kappa_diff_ci_low"] == row["kappa_diff_ci_high"] == 0.0
    assert row["kappa_diff_boot_low"] == row["kappa_diff_boot_high"] == 0.0
    assert row["t_corrected"] == 0.0 and row["p_value"] == 1.0 and row["brier_p_value"] == 1.0


def test_paired_rows_keep_the_rows_both_scored_aligned_for_the_fold_differences():
    first, second = synthetic_oof(0.5, seed=1), synthetic_oof(0.1, seed=1)
    second = second[second["group"] != "p3"].sample(frac=1.0, random_state=0)  # shuffled
    mine, theirs = paired_rows(first, second)
    assert len(mine) == len(theirs) == len(first) - 2 * 3
    keys = ["repeat", "id", "fold"]
    assert (mine[keys].to_numpy() == theirs[keys].to_numpy()).all()
    differences = fold_kappa_differences(mine, theirs, CLASSES)
    by_hand = fold_kappas(mine)[0] - fold_kappas(theirs)[0]
    assert differences == pytest.approx(by_hand)
