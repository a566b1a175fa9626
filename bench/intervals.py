"""Simulations that refit the workflow's forest: size, coverage and power of the run's test rule.

    python bench/intervals.py            # the full run (20 min on 2 cores), into bench/RESULTS.md
    python bench/intervals.py --tiny     # about a minute, for CI (nothing is written)

Why: a verdict should call a fusion better about 5 % of the time when it adds nothing, an
interval should cover what a reader takes it to mean (the method's expected kappa on new
patients), and a team should know which gain its design can see at all. All three depend on
how the refitted models vary from fold to fold, which only refitting shows, and on how the
primary contrast is built: every fusion holds the metadata forest at 0.70, so the contrast
"fusion against metadata" is nested and its two sides share the forest's every fit.

Each simulated data set is the demo generator's visit and metadata table
(``fusion_dag.demo.simulate_visits`` and ``metadata_table``: patients with 1 to 6 visits, a
patient effect, about 20 mixed columns with 10 % missing cells), labelled with fixed
population cut points of the latent severity (classes I/P/R about 29/60/11 %). It goes through
this workflow's patient-grouped folds (``fusion_dag.folds.assign_folds``, repeat r on seed
s + r - 1) and the workflow's forest pipeline (``fusion_dag.metadata.build_pipeline`` with the
config's ``min_samples_leaf`` and ``class_weight``, fewer trees: measured below), refitted on
every fold of every repeat. The second member stands in for an image branch: ordinal-logistic
probabilities of the severity seen through noise of standard deviation sigma, with a small
random shift and sharpness per (repeat, fold) for the branch's own refit, fused at fixed
weights 0.70 x forest + 0.30 x image. No CNN is trained: its fold-to-fold spread is the
jitter's, and the forest's fits are shared by every sigma, since they do not depend on it.

The truth is the population's: for each number of patients and of folds, forests trained on
fresh samples of a fold's share of the patients, scored with and without the second member on
one large sample of new patients. Sigma is set per training size so that the fusion's expected
kappa minus the forest's is 0 (size), +0.03, +0.05 or +0.10 (power). Each candidate rule of
``RULES`` is applied to the same per-fold values with ``fusion_dag.inference``'s code.
"""

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fusion_dag.demo import metadata_table, simulate_visits  # noqa: E402
from fusion_dag.evaluate import kappa  # noqa: E402
from fusion_dag.folds import assign_folds  # noqa: E402
from fusion_dag.inference import (  # noqa: E402
    corrected_interval,
    corrected_resampled_ttest,
    corrected_standard_error,
    detectable_gain,
    fold_test_share,
)
from fusion_dag.metadata import build_pipeline, feature_frame  # noqa: E402

CLASSES = ["I", "P", "R"]
SHARES = (0.29, 0.60, 0.11)
# The config's metadata_model but for the trees (--trees; :func:`tree_check` measures what
# they change) and inner_folds: with fixed fusion weights the inner out-of-fold probabilities
# feed no validation prediction, so they change no number simulated here.
FOREST = {"min_samples_leaf": 2, "class_weight": "balanced"}
METADATA_WEIGHT = 0.70
# True gains of the fusion over the forest, in kappa: the null first.
GAINS = (0.0, 0.03, 0.05, 0.10)
DESIGNS = ((3, 2), (5, 2), (5, 5))
PATIENTS = (160, 270)
# The image-like member: P(class <= c) = expit(SHARPNESS x (q_c - z + shift)), z its
# standardised noisy severity, q_c the standard normal quantiles of the class shares; each
# (repeat, fold) draws its shift and log-sharpness with these standard deviations.
SHARPNESS = 1.7
SHIFT_SD = 0.15
LOG_SHARPNESS_SD = 0.15
SIGMAS = np.geomspace(0.02, 50.0, 80)
# Candidate rules: (whether the variance s^2 / J of the J = K x R per-fold values is corrected
# to s^2 (1/J + n_test/n_train), degrees of freedom). The naive rule is a reference: how much
# the folds' values are correlated in this simulation.
RULES = {
    "corrected, J - 1 (Bouckaert-Frank)": (True, lambda folds, repeats: folds * repeats - 1),
    "corrected, K - 1 (today's contrasts)": (True, lambda folds, repeats: folds - 1),
    "naive, J - 1 (reference)": (False, lambda folds, repeats: folds * repeats - 1),
}
ALPHA = 0.05
POWER = 0.80


def population_cuts(seed: int = 0) -> np.ndarray:
    """Cut points of the demo's latent severity that give the study's class shares, from one
    large sample (the demo cuts each table at its own quantiles; a population's labels must not
    depend on which other patients were drawn)."""
    severity = simulate_visits(100_000, np.random.default_rng(seed))["severity"]
    return np.quantile(severity, np.cumsum(SHARES)[:-1])


def simulated_table(rng, patients: int, cuts: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """A prepared visits table (``id``, ``group``, ``label``, the demo's metadata columns,
    numbers typed as numbers) and each visit's latent severity."""
    visits = simulate_visits(patients, rng)
    visits["label"] = np.asarray(CLASSES)[np.searchsorted(cuts, visits["severity"])]
    table = metadata_table(visits, rng)
    table = table.rename(columns={"sample_id": "id", "patient_id": "group"})
    for column in table.columns[3:]:
        numeric = pd.to_numeric(table[column], errors="coerce")
        if numeric.notna().sum() == table[column].notna().sum():
            table[column] = numeric
    return table, visits["severity"].to_numpy()


def image_probabilities(severity, noise, sigma: float, scale: float, jitter=(0.0, 0.0)):
    """The image-like member's probabilities: the severity seen through ``sigma`` x ``noise``,
    standardised by its population spread ``scale`` (the severity's SD at sigma 0), through an
    ordinal logistic link with the ``jitter`` (shift, log-sharpness) of one refit."""
    from scipy.special import expit
    from scipy.stats import norm

    shift, log_sharpness = jitter
    z = (severity + sigma * noise) / np.sqrt(scale**2 + sigma**2)
    cuts = norm.ppf(np.cumsum(SHARES)[:-1])
    below = expit(SHARPNESS * np.exp(log_sharpness) * (cuts[None, :] - z[:, None] + shift))
    cumulative = np.hstack([below, np.ones((len(z), 1))])
    return np.diff(cumulative, axis=1, prepend=0.0)


def fold_jitter(seed: int, repeat: int, fold: int) -> tuple[float, float]:
    """The image member's (shift, log-sharpness) in one (repeat, fold): seeded by them, so a
    design's first repeats are exactly another's with more repeats."""
    rng = np.random.default_rng([seed, repeat, fold])
    return float(rng.normal(0.0, SHIFT_SD)), float(rng.normal(0.0, LOG_SHARPNESS_SD))


def fusion(forest, image):
    """The fixed-weight fusion's probabilities, as the fusion stage computes them."""
    return METADATA_WEIGHT * forest + (1.0 - METADATA_WEIGHT) * image


def fused_kappa(truth, forest, image) -> float:
    """Kappa of the fixed-weight fusion's most probable class."""
    return kappa(truth, fusion(forest, image).argmax(axis=1), len(CLASSES))


def forest_oof(table: pd.DataFrame, folds: int, repeats: int, trees: int, seed: int) -> list:
    """The forest's validation probabilities, refitted on every fold of ``repeats``
    partitions as the workflow's metadata stage does: [(fold of each row, probabilities)]."""
    features, labels = feature_frame(table), table["label"].to_numpy()
    settings = {**FOREST, "n_estimators": trees}
    result = []
    for repeat in range(1, repeats + 1):
        assigned = assign_folds(table, folds, seed + repeat - 1, CLASSES)["fold"].to_numpy()
        probs = np.zeros((len(table), len(CLASSES)))
        for fold in range(1, folds + 1):
            held_out = assigned == fold
            pipeline = build_pipeline(settings, seed + repeat - 1)
            pipeline.fit(features[~held_out], labels[~held_out])
            # The forest's classes are sorted label strings: I, P, R, the classes' order.
            probs[held_out] = pipeline.predict_proba(features[held_out])
        result.append((assigned, probs))
    return result


def scored(truth, partitions: list, images: dict, seed: int) -> dict:
    """Per-fold and pooled kappas of the forest and of its fusion with each member of
    ``images`` (level -> function of (jitter, rows) giving that member's probabilities), over
    ``partitions`` (:func:`forest_oof`), and n_test / n_train: level -> result."""
    forest_values, forest_pooled, shares = [], [], []
    values = {level: [] for level in images}
    pooled = {level: [] for level in images}
    for repeat, (assigned, forest) in enumerate(partitions, start=1):
        fused = {level: np.zeros_like(forest) for level in images}
        for fold in np.unique(assigned):
            rows = assigned == fold
            forest_values.append(kappa(truth[rows], forest[rows].argmax(axis=1), 3))
            jitter = fold_jitter(seed, repeat, fold)
            for level, image_of in images.items():
                fused[level][rows] = fusion(forest[rows], image_of(jitter, rows))
                values[level].append(kappa(truth[rows], fused[level][rows].argmax(axis=1), 3))
        forest_pooled.append(kappa(truth, forest.argmax(axis=1), 3))
        for level in images:
            pooled[level].append(kappa(truth, fused[level].argmax(axis=1), 3))
        shares.append(pd.DataFrame({"repeat": repeat, "fold": assigned}))
    share = fold_test_share(pd.concat(shares))
    return {
        level: {
            "values": {"forest": np.array(forest_values), "fusion": np.array(values[level])},
            "pooled": {
                "forest": float(np.mean(forest_pooled)),
                "fusion": float(np.mean(pooled[level])),
            },
            "test_share": share,
        }
        for level in images
    }


def simulate_dataset(task: tuple) -> dict:
    """One data set's per-fold and pooled kappas, for every design and true gain.

    ``task``: (patients, number, trees, sigmas {folds: {gain: sigma}}, scale, cuts). Five-fold
    designs share their fits: 5 x 2 is the first two repeats of 5 x 5, as a workflow that
    raises cv.repeats from 2 to 5 keeps them."""
    patients, number, trees, sigmas, scale, cuts = task
    seed = 1000 * patients + number
    rng = np.random.default_rng(seed)
    table, severity = simulated_table(rng, patients, cuts)
    noise = rng.normal(size=len(table))
    truth = pd.Categorical(table["label"], categories=CLASSES).codes
    most = {folds: max(r for k, r in DESIGNS if k == folds) for folds, _ in DESIGNS}
    fits = {
        folds: forest_oof(table, folds, repeats, trees, seed) for folds, repeats in most.items()
    }
    result = {}
    for folds, repeats in DESIGNS:
        images = {
            gain: lambda jitter, rows, sigma=sigma: image_probabilities(
                severity[rows], noise[rows], sigma, scale, jitter
            )
            for gain, sigma in sigma_levels(sigmas[folds]).items()
        }
        for gain, values in scored(truth, fits[folds][:repeats], images, seed).items():
            result[(folds, repeats, gain)] = values
    return result


def sigma_levels(levels: dict) -> dict:
    """``levels`` (gain -> sigma), in the order of GAINS."""
    return {gain: levels[gain] for gain in GAINS}


def calibrate(task: tuple) -> dict:
    """The population truth for one training size: ``fits`` forests, each on a fresh sample of
    ``train_patients``, scored on one sample of ``test_patients`` new patients alone and fused
    with the image member at every sigma of SIGMAS (a fresh jitter per fit). Returns the
    forest's expected kappa, the expected gain at every sigma and its Monte Carlo SE, and the
    image member's expected kappa alone."""
    train_patients, fits, test_patients, trees, scale, cuts, seed = task
    rng = np.random.default_rng(seed)
    test, severity = simulated_table(rng, test_patients, cuts)
    noise = rng.normal(size=len(test))
    truth = pd.Categorical(test["label"], categories=CLASSES).codes
    features = feature_frame(test)
    forest_kappas, gains, alone = [], [], []
    for fit in range(fits):
        train, _ = simulated_table(rng, train_patients, cuts)
        pipeline = build_pipeline({**FOREST, "n_estimators": trees}, seed + fit)
        pipeline.fit(feature_frame(train), train["label"].to_numpy())
        forest = pipeline.predict_proba(features)
        jitter = (rng.normal(0.0, SHIFT_SD), rng.normal(0.0, LOG_SHARPNESS_SD))
        forest_kappas.append(kappa(truth, forest.argmax(axis=1), 3))
        images = [image_probabilities(severity, noise, s, scale, jitter) for s in SIGMAS]
        gains.append([fused_kappa(truth, forest, image) - forest_kappas[-1] for image in images])
        alone.append([kappa(truth, image.argmax(axis=1), 3) for image in images])
    gains = np.array(gains)
    return {
        "forest": float(np.mean(forest_kappas)),
        "forest_se": float(np.std(forest_kappas, ddof=1) / np.sqrt(fits)),
        "gain": gains.mean(axis=0),
        "gain_se": gains.std(axis=0, ddof=1) / np.sqrt(fits),
        "image": np.mean(alone, axis=0),
    }


def solved_sigmas(calibration: dict) -> dict:
    """gain -> the sigma whose expected gain it is (interpolated in log sigma on SIGMAS), with
    that sigma's gain SE and the image member's kappa alone."""
    gain = calibration["gain"]
    # The gain falls as sigma grows; interpolate on its running minimum to keep it monotone.
    falling = np.minimum.accumulate(gain)
    levels = {}
    for target in GAINS:
        if not falling[-1] < target < falling[0]:
            raise ValueError(
                f"no sigma gives a gain of {target} (range {falling[-1]:.3f} to {falling[0]:.3f})"
            )
        log_sigma = np.interp(-target, -falling, np.log(SIGMAS))
        levels[target] = {
            "sigma": float(np.exp(log_sigma)),
            "gain_se": float(np.interp(log_sigma, np.log(SIGMAS), calibration["gain_se"])),
            "image": float(np.interp(log_sigma, np.log(SIGMAS), calibration["image"])),
        }
    return levels


def judged(result: dict, corrected: bool, df: int, truth: float, gain: float) -> dict:
    """One data set, one design, one rule: whether the contrast's test rejects (two-sided, at
    ALPHA; ``called``: rejects with the right sign), whether the contrast's and the headline's
    intervals cover their truths, and the contrast's detectable gain."""
    share, values = result["test_share"] if corrected else 0.0, result["values"]
    differences = values["fusion"] - values["forest"]
    t, p = corrected_resampled_ttest(differences, share, df)
    centre = float(differences.mean())
    low, high = corrected_interval(centre, differences, share, 1 - ALPHA, df)
    covered = {}
    for name, expected in (("forest", truth), ("fusion", truth + gain)):
        point = result["pooled"][name]
        bounds = corrected_interval(point, values[name], share, 1 - ALPHA, df)
        covered[name] = bounds[0] <= expected <= bounds[1]
    return {
        "rejected": p < ALPHA,
        "called": p < ALPHA and t > 0,
        "contrast_covered": low <= gain <= high,
        "forest_covered": covered["forest"],
        "fusion_covered": covered["fusion"],
        "detectable": detectable_gain(
            corrected_standard_error(differences, share), df, ALPHA, POWER
        ),
    }


def summarised(datasets: list, truths: dict, patients: int) -> list:
    """Per design and rule: size (with its Monte Carlo SE), power at each gain, coverage of the
    headline and contrast intervals, mean detectable gain."""
    rows = []
    for folds, repeats in DESIGNS:
        for rule, (corrected, degrees) in RULES.items():
            df = degrees(folds, repeats)
            truth = truths[(patients, folds)]["forest"]
            per_gain = {
                gain: pd.DataFrame(
                    [
                        judged(d[(folds, repeats, gain)], corrected, df, truth, gain)
                        for d in datasets
                    ]
                )
                for gain in GAINS
            }
            null = per_gain[0.0]
            n = len(null)
            size = float(null["rejected"].mean())
            every = pd.concat(per_gain.values())
            rows.append(
                {
                    "patients": patients,
                    "design": f"{folds} x {repeats}",
                    "rule": rule,
                    "df": df,
                    "datasets": n,
                    "size": size,
                    "size_se": float(np.sqrt(max(size * (1 - size), ALPHA * (1 - ALPHA)) / n)),
                    **{
                        f"power_{gain:.2f}": float(per_gain[gain]["called"].mean())
                        for gain in GAINS[1:]
                    },
                    "forest_coverage": float(null["forest_covered"].mean()),
                    "fusion_coverage": float(every["fusion_covered"].mean()),
                    "contrast_coverage": float(every["contrast_covered"].mean()),
                    "detectable": float(null["detectable"].mean()),
                }
            )
    return rows


def tree_check(datasets: int, counts: tuple, cuts, scale, patients=160, folds=3, repeats=2):
    """What the number of trees changes, on the same data sets and partitions: the forest's
    mean per-fold kappa, its fold spread, and the spread of the nested contrast's per-fold
    differences at a mid-strength image member (sigma 1)."""
    rows = []
    for trees in counts:
        kappas, spreads, difference_spreads = [], [], []
        for number in range(datasets):
            seed = 7000 + number
            rng = np.random.default_rng(seed)
            table, severity = simulated_table(rng, patients, cuts)
            noise = rng.normal(size=len(table))
            truth = pd.Categorical(table["label"], categories=CLASSES).codes
            partitions = forest_oof(table, folds, repeats, trees, seed)
            image = {
                1.0: lambda jitter, rows, severity=severity, noise=noise: image_probabilities(
                    severity[rows], noise[rows], 1.0, scale, jitter
                )
            }
            result = scored(truth, partitions, image, seed)[1.0]
            values = result["values"]
            kappas.append(values["forest"].mean())
            spreads.append(values["forest"].std(ddof=1))
            difference_spreads.append((values["fusion"] - values["forest"]).std(ddof=1))
        rows.append(
            {
                "trees": trees,
                "kappa": float(np.mean(kappas)),
                "fold_sd": float(np.mean(spreads)),
                "difference_sd": float(np.mean(difference_spreads)),
            }
        )
    return rows


def limited(function, tasks: list, workers: int) -> list:
    """``function`` over ``tasks`` in ``workers`` processes, one BLAS and OpenMP thread each."""
    with ProcessPoolExecutor(workers, initializer=one_thread) as pool:
        return list(pool.map(function, tasks))


def one_thread() -> None:
    """Each worker computes on one thread: the fits are small, and two processes on two cores
    are faster than threads fighting over them."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def run(settings: dict) -> dict:
    """Calibrate the truths, then simulate every data set; the measurements for the report."""
    cuts = population_cuts()
    scale = float(np.std(simulate_visits(100_000, np.random.default_rng(1))["severity"]))
    sizes = sorted({(p, k) for p in settings["patients"] for k, _ in DESIGNS})
    tasks = [
        (
            round(p * (k - 1) / k),
            settings["fits"],
            settings["test_patients"],
            settings["trees"],
            scale,
            cuts,
            500 + index,
        )
        for index, (p, k) in enumerate(sizes)
    ]
    start = time.time()
    calibrations = dict(zip(sizes, limited(calibrate, tasks, settings["workers"]), strict=True))
    truths = {
        size: {"forest": c["forest"], "forest_se": c["forest_se"], "levels": solved_sigmas(c)}
        for size, c in calibrations.items()
    }
    print(f"truths in {time.time() - start:.0f} s", flush=True)
    for size, truth in truths.items():
        print(size, truth, flush=True)
    rows = []
    for patients in settings["patients"]:
        sigmas = {
            k: {g: level["sigma"] for g, level in truths[(patients, k)]["levels"].items()}
            for k, _ in DESIGNS
        }
        tasks = [
            (patients, number, settings["trees"], sigmas, scale, cuts)
            for number in range(settings["datasets"])
        ]
        datasets = limited(simulate_dataset, tasks, settings["workers"])
        rows += summarised(datasets, truths, patients)
        print(pd.DataFrame(rows).round(3).to_string(), flush=True)
        print(f"{patients} patients done at {time.time() - start:.0f} s", flush=True)
    trees = tree_check(settings["tree_datasets"], settings["tree_counts"], cuts, scale)
    return {"truths": truths, "rows": rows, "trees": trees, "seconds": time.time() - start}


def report(measured: dict, settings: dict) -> str:
    """The RESULTS.md section."""
    from run import machine, markdown_table

    n = settings["datasets"]
    main_rows = [
        [
            r["patients"],
            r["design"],
            r["rule"],
            r["df"],
            f"{r['size']:.3f} ± {r['size_se']:.3f}",
            *(f"{r[f'power_{g:.2f}']:.2f}" for g in GAINS[1:]),
            f"{r['forest_coverage']:.3f}",
            f"{r['fusion_coverage']:.3f}",
            f"{r['contrast_coverage']:.3f}",
            f"{r['detectable']:.3f}",
        ]
        for r in measured["rows"]
    ]
    truth_rows = [
        [
            patients,
            folds,
            round(patients * (folds - 1) / folds),
            f"{truth['forest']:.3f} ± {truth['forest_se']:.3f}",
            *(f"{level['sigma']:.2f} ({level['image']:.2f})" for level in truth["levels"].values()),
            f"{max(level['gain_se'] for level in truth['levels'].values()):.4f}",
        ]
        for (patients, folds), truth in measured["truths"].items()
    ]
    tree_rows = [
        [r["trees"], f"{r['kappa']:.3f}", f"{r['fold_sd']:.3f}", f"{r['difference_sd']:.3f}"]
        for r in measured["trees"]
    ]
    gains = ", ".join(f"+{g:.2f}" for g in GAINS[1:])
    # The main table's columns after patients, design and rule: all right-aligned numbers.
    numeric = (
        "df",
        "size ± MC SE",
        *(f"power {g}" for g in gains.split(", ")),
        "cover forest",
        "cover fusion",
        "cover contrast",
        "detectable gain",
    )
    lines = [
        "## Intervals and the paired test: simulations that refit",
        "",
        f"`python bench/intervals.py` on {machine()}, {measured['seconds']:.0f} s. Each of {n} "
        "simulated data sets per number of patients: the demo generator's visits and metadata "
        "table (1 to 6 visits per patient, a patient effect, about 20 mixed columns with 10 % "
        "missing), the workflow's forest pipeline with "
        f"{settings['trees']} trees refitted on every fold of this workflow's patient-grouped "
        "folds, fused at 0.70 / 0.30 with an "
        "image-like member whose noise sets the true gain. Contrast: fusion against the forest "
        f"alone, two-sided at {ALPHA}. Rules: the variance of the mean of the J = K x R per-fold "
        "values, corrected (s^2 (1/J + n_test/n_train), Nadeau and Bengio 2003) or naive "
        "(s^2 / J), with the degrees of freedom named; one rule for the contrast and the "
        "headline intervals. Repeat r of a data set partitions on seed s + r - 1, as the "
        "workflow does, so 5 x 2 is the first two repeats of 5 x 5 (each design's values are "
        "its own; the designs are not independent).",
        "",
        markdown_table(
            ["patients", "design", "rule", *numeric],
            main_rows,
            right=numeric,
        ),
        "",
        "Size: the share of null data sets (true gain 0) whose contrast is called either way; "
        "target 0.03 to 0.07; ± its binomial Monte Carlo SE. Power: the share that call a "
        f"true gain of {gains} `better`. Coverage (target 0.92 to 0.98) of the interval at "
        f"{1 - ALPHA:.2f}: `cover forest` the headline interval of the forest's pooled kappa "
        "(null data sets), `cover fusion` the fusion's, `cover contrast` the contrast's "
        "interval of the true gain (all gains). `detectable gain`: the mean over null data sets "
        f"of (t(1 - {ALPHA}/2, df) + t({POWER}, df)) x the corrected SE of the differences.",
        "",
        markdown_table(
            [
                "patients",
                "folds",
                "training patients",
                "forest's expected kappa",
                *(f"sigma (image kappa) at {g:+.2f}" for g in GAINS),
                "gain's MC SE",
            ],
            truth_rows,
            right=(
                "folds",
                "training patients",
                "forest's expected kappa",
                *(f"sigma (image kappa) at {g:+.2f}" for g in GAINS),
                "gain's MC SE",
            ),
        ),
        "",
        f"The truths: {settings['fits']} forests per row, each trained on a fresh sample of a "
        f"fold's share of the patients, scored on one sample of {settings['test_patients']:,} "
        "new patients alone and fused with the image member at each sigma; sigma is the noise "
        "that makes the fusion's expected kappa minus the forest's equal the gain (in brackets "
        "the image member's own kappa). The image member is generated, not trained: its "
        "fold-to-fold spread is a random shift and sharpness per fold.",
        "",
        markdown_table(
            [
                "trees",
                "forest's mean fold kappa",
                "its fold SD",
                "SD of the contrast's fold differences",
            ],
            tree_rows,
            right=(
                "trees",
                "forest's mean fold kappa",
                "its fold SD",
                "SD of the contrast's fold differences",
            ),
        ),
        "",
        f"Trees: the same {settings['tree_datasets']} data sets of 160 patients at 3 x 2 "
        "(sigma 1), forests of each size (the config has 300).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a minute's run, nothing written")
    parser.add_argument("--datasets", type=int, default=100)
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patients", type=int, nargs="+", default=PATIENTS)
    parser.add_argument("--fits", type=int, default=20, help="forests per truth")
    parser.add_argument("--test-patients", type=int, default=5_000, help="patients per truth")
    arguments = parser.parse_args()
    settings = {
        "datasets": arguments.datasets,
        "patients": tuple(arguments.patients),
        "trees": arguments.trees,
        "fits": arguments.fits,
        "test_patients": arguments.test_patients,
        "tree_datasets": max(1, min(8, arguments.datasets // 10)),
        "tree_counts": (25, 50, 300),
        "workers": arguments.workers,
    }
    if arguments.tiny:
        settings.update(
            datasets=4,
            patients=(160,),
            trees=10,
            fits=4,
            test_patients=1500,
            tree_datasets=1,
            tree_counts=(5, 10),
        )
    measured = run(settings)
    section = report(measured, settings)
    print(section)
    if not arguments.tiny:
        from run import write_section

        write_section(section.splitlines()[0], section)


if __name__ == "__main__":
    main()
