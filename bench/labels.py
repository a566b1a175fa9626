"""The label review list (review.tsv) against label errors planted in the demo table.

    python bench/labels.py          # 160 patients, demo seeds 7 and 11, RESULTS.md section
    python bench/labels.py --tiny   # 40 patients, one seed, a small forest: writes nothing

The demo's labels are noise-free, so the review list has never been shown to find a wrong
label. Here a known share of the demo's visits (:data:`SHARE`) is relabelled to a neighbouring
class (the classes are ordinal: I becomes P, R becomes P, P becomes I or R at even odds), the
metadata stage is run as the workflow runs it on the relabelled table
(:func:`fusion_dag.metadata.fold_probabilities` on each fold of ``cv.repeats`` patient-grouped
partitions, :func:`fusion_dag.folds.assign_folds` with each repeat's seed, the config's
metadata_model), and :func:`fusion_dag.explain.review_table` lists the visits its out-of-fold
predictions get wrong in every repeat. The report gives the list's precision (planted errors
among the listed visits) and recall (listed among the planted errors), the precision of the
list's head (it is sorted most confidently wrong first) and, for scale, the share of planted
errors among all visits (a list drawn at random has that precision), and the list's length on
the unchanged labels.

The review combination here is the metadata forest: training the image branches for it would
take most of an hour. A fusion with images predicts better than the forest alone, so its list
is shorter; how much more precise it is this bench does not measure.
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

HEADING = "## Label review: planted label errors"
FULL = {"patients": 160, "seeds": [7, 11]}
TINY = {"patients": 40, "seeds": [7], "n_estimators": 30}
# Share of the visits relabelled to a neighbouring class.
SHARE = 0.10
# Heads of the review list whose precision is reported.
HEADS = [20, 50]
NEIGHBOURS = {"I": ["P"], "P": ["I", "R"], "R": ["P"]}


def relabelled(samples: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, set]:
    """``samples`` with ``share`` of its visits (drawn at random) moved to a neighbouring
    class; and the ids of the visits moved."""
    from fusion_dag.artifacts import ID, LABEL

    rng = np.random.default_rng(seed)
    moved = rng.choice(len(samples), size=round(share * len(samples)), replace=False)
    labels = samples[LABEL].to_numpy(copy=True)
    labels[moved] = [rng.choice(NEIGHBOURS[label]) for label in labels[moved]]
    return samples.assign(**{LABEL: labels}), set(samples[ID].iloc[moved])


def out_of_fold(samples: pd.DataFrame, settings: dict, cv: dict, threads: int) -> pd.DataFrame:
    """The metadata stage's out-of-fold table over ``cv.repeats`` partitions (the fusion
    results' ``oof.tsv`` of the combination ``[metadata]``)."""
    from fusion_dag.artifacts import GROUP, ID, LABEL
    from fusion_dag.folds import assign_folds
    from fusion_dag.metadata import fold_probabilities

    parts = []
    for repeat in range(1, cv["repeats"] + 1):
        seed = cv["seed"] + repeat - 1
        folds = assign_folds(samples, cv["folds"], seed, CLASSES)
        for fold in range(1, cv["folds"] + 1):
            probs, _ = fold_probabilities(samples, folds, fold, CLASSES, settings, seed, threads)
            held_out = probs[probs["split"] == "val"].drop(columns="split")
            rows = folds[[ID, GROUP, LABEL]].merge(held_out, on=ID)
            parts.append(rows.assign(repeat=repeat, fold=fold))
    table = pd.concat(parts, ignore_index=True)
    return table[["repeat", "fold", ID, GROUP, LABEL, *table.columns[3:-2]]]


def review_figures(oof: pd.DataFrame, planted: set) -> dict:
    """The review list of ``oof`` against the ``planted`` errors."""
    from fusion_dag.artifacts import ID
    from fusion_dag.explain import review_table

    review = review_table(oof, ["metadata"], {"metadata": oof}, CLASSES)
    hits = review[ID].isin(planted).to_numpy()
    figures = {
        "visits": oof[ID].nunique(),
        "planted": len(planted),
        "listed": len(review),
        "found": int(hits.sum()),
        "precision": hits.mean() if len(review) else np.nan,
        "recall": hits.sum() / len(planted) if planted else np.nan,
    }
    for head in HEADS:
        figures[f"precision_{head}"] = hits[:head].mean() if len(review) >= head else np.nan
    return figures


def measure(root: Path, size: dict, settings: dict, cv: dict, threads: int) -> list:
    """Per demo seed: the review's figures on the unchanged and the relabelled labels."""
    results = []
    for seed in size["seeds"]:
        samples = demo_samples(root, size["patients"], seed)
        noisy, planted = relabelled(samples, SHARE, seed + 2000)
        for name, table, errors in (("unchanged", samples, set()), ("relabelled", noisy, planted)):
            started = time.perf_counter()
            figures = review_figures(out_of_fold(table, settings, cv, threads), errors)
            results.append({"seed": seed, "labels": name, **figures})
            print(f"seed {seed}, {name}: {time.perf_counter() - started:.0f} s, {figures}")
    return results


def report(results: list, size: dict, settings: dict, cv: dict, seconds: float, tiny: bool):
    """The RESULTS.md section."""

    def share(value) -> str:
        return "" if pd.isna(value) else f"{value:.2f}"

    rows = []
    for r in results:
        base = r["planted"] / r["visits"]
        rows.append(
            [
                str(r["seed"]),
                r["labels"],
                str(r["visits"]),
                str(r["planted"]),
                str(r["listed"]),
                str(r["found"]),
                share(r["precision"]) if r["planted"] else "",
                *[share(r[f"precision_{head}"]) if r["planted"] else "" for head in HEADS],
                share(base) if r["planted"] else "",
                share(r["recall"]),
            ]
        )
    headings = [
        "seed",
        "labels",
        "visits",
        "planted errors",
        "listed",
        "planted among listed",
        "precision",
        *[f"precision, first {head}" for head in HEADS],
        "precision at random",
        "recall",
    ]
    relabelled = [r for r in results if r["labels"] == "relabelled"]
    return "\n".join(
        [
            HEADING,
            "",
            f"`python bench/labels.py{' --tiny' if tiny else ''}` on {machine()}, "
            f"{seconds:.0f} s: the demo table ({size['patients']} patients, demo seeds "
            f"{', '.join(map(str, size['seeds']))}), {SHARE:.0%} of the visits relabelled to a "
            "neighbouring class (I to P, R to P, P to I or R), the metadata stage's out-of-fold "
            f"probabilities ({cv['folds']} folds x {cv['repeats']} repeats, cv.seed "
            f"{cv['seed']}, {settings['n_estimators']} trees) and review.tsv's rule: the visits "
            "wrong in every repeat, most confidently wrong first. The review combination is "
            "the metadata forest alone (bench/labels.py's docstring says why).",
            "",
            markdown_table(headings, rows, right=set(headings[2:])),
            "",
            "Mean over the seeds with planted errors: precision "
            f"{np.mean([r['precision'] for r in relabelled]):.2f} (at random "
            f"{np.mean([r['planted'] / r['visits'] for r in relabelled]):.2f}), recall "
            f"{np.mean([r['recall'] for r in relabelled]):.2f}.",
            "",
        ]
    )


def main() -> None:
    options = arguments(__doc__)
    size = TINY if options.tiny else FULL
    settings, cv = forest_settings(TINY if options.tiny else None), workflow_config()["cv"]
    run_and_publish(
        HEADING,
        "labels",
        lambda folder: measure(folder, size, settings, cv, options.threads),
        lambda results, seconds: report(results, size, settings, cv, seconds, options.tiny),
        options.tiny,
    )


if __name__ == "__main__":
    main()
