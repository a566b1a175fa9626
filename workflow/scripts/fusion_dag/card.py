"""The model card: what the bundle is for, on whom it was developed, how well it did and where
it fails, in one page beside the bundle (``results/final/model_card.md`` and ``.json``).

Why a card apart from the manifest: the manifest is what a machine needs to apply the models;
the card is what a clinician or a reviewer needs to decide whether to apply them (model cards,
Mitchell et al. 2019, and MONAI bundles' metadata are the convention). Why apart from the
bundle job: the card reports the cross-validation (headline, contrasts, subgroups), and the
bundle must not depend on it (``predict`` with final models only stays minutes cheaper); a
``directory()`` output cannot hold another rule's file, so the card lies beside the bundle
folder and ``predict`` copies it (:func:`card_sources`).

Every number here is read from a table the run wrote; nothing is measured again. The report's
formatting (:mod:`fusion_dag.report`) is imported where it is used: the workflow imports
:func:`card_sources` at start-up, and the report module would add about a second to every
Snakemake invocation.
"""

import shutil
from pathlib import Path

import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, file_sha256
from fusion_dag.weights import member_weights

FORMAT = "fusion-dag-model-card/1"
CARD_FILES = ("model_card.md", "model_card.json")
# The headline metrics the card shows, each with its interval.
CARD_METRICS = ("kappa", "qwk", "balanced_accuracy", "auc", "brier", "ece")
# The packages whose versions a reader checks first (all of them are in the manifest).
KEY_PACKAGES = ("tensorflow", "keras", "scikit-learn", "numpy", "pandas", "skops", "crepes")


def intended_use(classes: list, modalities: list, features: int) -> dict:
    """What the models are for, for whom, and what they are not for."""
    images = ", ".join(modalities) if modalities else "no images"
    return {
        "purpose": (
            f"Suggest the class of a visit among {' < '.join(classes)} (ordinal) from its "
            f"clinical record ({features} metadata column{'s' * (features != 1)}) and its "
            f"images ({images}). In the study this workflow was built for, the classes are "
            "the healing phases of a diabetic foot ulcer: Inflammatory, Proliferative, Remodelling."
        ),
        "users": (
            "The study team, and clinicians whose visits are recorded with the same table "
            "columns and the same cameras and image protocol as the training visits."
        ),
        "decision_support": True,
        "not_for": (
            "Diagnosis or treatment decisions without a clinician's judgement; patients, sites, "
            "cameras or periods unlike the training data before validation on them (predict "
            "with labels reports metrics on patients the bundle never saw)."
        ),
    }


def data_summary(
    samples: pd.DataFrame,
    images: pd.DataFrame,
    classes: list,
    modalities: list,
    temporal: dict | None = None,
) -> dict:
    """The training data: visits, patients, each class's visits and share (in class order),
    the visits' order (by ``evaluation.temporal``'s column when given), and per modality the
    visits without an image (``images``: one row per view with ``modality`` and ``id``)."""
    visits = len(samples)
    counts = samples[LABEL].value_counts()
    missing = []
    for modality in modalities:
        with_image = set(images.loc[images["modality"] == modality, ID])
        without = int((~samples[ID].isin(with_image)).sum())
        missing.append(
            {
                "modality": modality,
                "visits_without": without,
                "share_without": without / visits if visits else 0.0,
            }
        )
    per_patient = samples.groupby(GROUP).size()
    column = (temporal or {}).get("column")
    order = (
        f"patients ordered by their first {column}"
        if column
        else "the samples table's order of visits"
    )
    return {
        "visits": visits,
        "patients": int(samples[GROUP].nunique()),
        "visits_per_patient_median": float(per_patient.median()) if visits else 0.0,
        "classes": [
            {
                "class": name,
                "visits": int(counts.get(name, 0)),
                "share": float(counts.get(name, 0) / visits) if visits else 0.0,
            }
            for name in classes
        ],
        "order": order,
        "sites": None,
        "missing_images": missing,
    }


def models_summary(manifest: dict) -> dict:
    """The bundled combinations with their members and fusion weights, the default one, and the
    final checks (collapsed branches and whether they were allowed)."""
    fusion = manifest["fusion"]
    return {
        "default_combination": manifest["default_combination"],
        "combinations": [
            {
                "combination": name,
                "members": members,
                "weights": member_weights(members, fusion["metadata_weight"], fusion["weights"]),
            }
            for name, members in manifest["combinations"].items()
        ],
        "final_checks": manifest.get("final_checks", {}),
    }


def performance_rows(headline: pd.DataFrame, combinations: list, classes: list) -> list:
    """The cross-validated headline rows of the bundled combinations: each metric of
    :data:`CARD_METRICS` with its interval, the calibration slope per class (when the headline
    has it) and the folds whose image branches learned nothing."""
    rows = []
    for row in headline[headline["combination"].isin(combinations)].to_dict("records"):
        rows.append(
            {
                "combination": row["combination"],
                "rows": row["rows"],
                "n_rows": int(row["n_rows"]),
                "folds": int(row["n_folds"] * row["n_repeats"]),
                "folds_not_learned": int(row.get("folds_not_learned", 0) or 0),
                "metrics": {
                    metric: {
                        part: nullable(row.get(f"{metric}_{part}"))
                        for part in ("mean", "ci_low", "ci_high")
                    }
                    for metric in CARD_METRICS
                },
                "calibration_slope": {
                    name: nullable(row.get(f"calibration_slope_{name}")) for name in classes
                },
            }
        )
    return rows


def nullable(value):
    """A float for JSON, ``None`` for a missing one."""
    return None if value is None or pd.isna(value) else float(value)


def contrast_rows(comparisons: pd.DataFrame, headline: pd.DataFrame, primary, confidence) -> list:
    """The primary contrasts' verdicts, each with the report's sentence."""
    from fusion_dag.report import contrast_sentences, primary_contrasts

    rows = primary_contrasts(comparisons)
    sentences = contrast_sentences(comparisons, headline, primary, confidence)
    if rows.empty:
        return [{"sentence": sentences[0]}]
    return [
        {
            "combination": row.combination,
            "versus": row.versus,
            "kappa_diff": nullable(row.kappa_diff_folds),
            "kappa_diff_ci_low": nullable(row.kappa_diff_ci_low),
            "kappa_diff_ci_high": nullable(row.kappa_diff_ci_high),
            "p_holm": nullable(row.p_holm),
            "verdict": row.verdict,
            "sentence": sentence,
        }
        for row, sentence in zip(rows.itertuples(index=False), sentences, strict=True)
    ]


def subgroup_rows(subgroups: pd.DataFrame | None, combination: str) -> list | None:
    """The bundle's default combination's subgroup rows; ``None`` when none are configured."""
    if subgroups is None or subgroups.empty:
        return None
    shown = subgroups[subgroups["combination"] == combination]
    if shown.empty:
        shown = subgroups
    return [
        {key: (nullable(value) if isinstance(value, float) else value) for key, value in r.items()}
        for r in shown.to_dict("records")
    ]


def temporal_rows(temporal: pd.DataFrame | None, combinations: list) -> list | None:
    """The temporal table's rows of the bundled combinations (``None`` without
    ``evaluation.temporal``): the later patients' metrics with their patient-bootstrap
    intervals beside the cross-validated ones."""
    if temporal is None:
        return None
    shown = temporal[temporal["combination"].isin(combinations)]
    return [
        {key: (nullable(value) if isinstance(value, float) else value) for key, value in r.items()}
        for r in shown.to_dict("records")
    ]


def known_limits(
    data: dict,
    models: dict,
    performance: list,
    subgroups: list | None,
    temporal: list | None = None,
) -> list:
    """Where the models fail or were let through: branches that learned nothing in some folds,
    collapsed final branches bundled with ``final.allow_collapsed``, how often a visit lacks an
    image (and how it is then scored), small subgroups, a kappa on the later patients whose
    interval lies below the cross-validated kappa, and what the in-sample fit is not."""
    limits = []
    for row in performance:
        if row["folds_not_learned"]:
            limits.append(
                f"{row['combination']} ({row['rows']} visits): an image branch learned nothing "
                f"in {row['folds_not_learned']} of {row['folds']} cross-validation folds "
                "(folds_not_learned); its figures there are the other members'."
            )
    checks = models["final_checks"]
    for modality, name in (checks.get("collapsed_branches") or {}).items():
        limits.append(
            f"The final {modality} branch predicts class {name} for every training visit: it "
            "learned nothing from its images and was bundled only because "
            "final.allow_collapsed is true; it only shifts the other members' probabilities."
        )
    for entry in data["missing_images"]:
        if entry["visits_without"]:
            limits.append(
                f"{entry['visits_without']} of {data['visits']} training visits "
                f"({entry['share_without']:.0%}) have no {entry['modality']} image. A visit "
                "without an image is scored by the members it has, with those members' "
                "weights rescaled (the headline's 'all' rows measure this)."
            )
    small = [row for row in subgroups or [] if row.get("small")]
    if small:
        limits.append(
            f"{len(small)} subgroup levels have fewer than 30 visits or 10 patients: their "
            "intervals are wide."
        )
    for row in temporal or []:
        if row["kappa_ci_high"] is not None and row["kappa_ci_high"] < row["cv_kappa"]:
            limits.append(
                f"{row['combination']}: on the {row['n_patients']} later patients kappa was "
                f"{row['kappa']:.3f} [{row['kappa_ci_low']:.3f}, {row['kappa_ci_high']:.3f}], "
                f"below its cross-validated {row['cv_kappa']:.3f}: performance shifts over time."
            )
    limits.append(
        "The final models were fit on every training patient: their fit on those patients "
        "(manifest provenance final_fusion fit_kappa) is in-sample, not performance; the "
        "cross-validated figures above estimate performance on new patients of the same "
        "population."
    )
    return limits


def provenance_summary(manifest: dict, sources: dict) -> dict:
    """Where the card's numbers come from: the bundle's provenance (commit, Python, key
    packages, training data hashes) and the SHA-256 of every table the card read."""
    provenance = manifest.get("provenance", {})
    packages = provenance.get("packages", {})
    return {
        "workflow": provenance.get("workflow"),
        "python": provenance.get("python"),
        "packages": {name: packages[name] for name in KEY_PACKAGES if name in packages},
        "data": provenance.get("data"),
        "spec_sha256": manifest.get("spec_sha256"),
        "sources": {name: file_sha256(path) for name, path in sources.items()},
    }


def model_card(
    manifest: dict,
    headline: pd.DataFrame,
    comparisons: pd.DataFrame,
    samples: pd.DataFrame,
    images: pd.DataFrame,
    evaluation: dict,
    sources: dict,
    subgroups: pd.DataFrame | None = None,
    calibration: dict | None = None,
    temporal: pd.DataFrame | None = None,
) -> dict:
    """The card as a record (``model_card.json``).

    ``manifest`` is the bundle's; ``headline``, ``comparisons`` and ``subgroups`` the run's
    ``results/fusion_results.tsv``, ``results/comparisons.tsv`` and (with
    ``evaluation.subgroups``) ``results/report/subgroups.tsv``; ``samples`` and ``images`` the
    prepared training table and views; ``calibration`` each combination's conformal summary
    from the bundle (with ``predict.coverage``); ``temporal`` the run's
    ``results/temporal.tsv`` (with ``evaluation.temporal``); ``sources`` name -> path of the
    tables read, hashed for provenance.
    """
    classes = manifest["classes"]
    modalities = list(manifest["modalities"])
    models = models_summary(manifest)
    data = data_summary(samples, images, classes, modalities, evaluation.get("temporal"))
    performance = performance_rows(headline, list(manifest["combinations"]), classes)
    groups = subgroup_rows(subgroups, manifest["default_combination"])
    later = temporal_rows(temporal, list(manifest["combinations"]))
    return {
        "format": FORMAT,
        "intended_use": intended_use(classes, modalities, len(manifest.get("features", []))),
        "data": data,
        "models": models,
        "performance": {
            "method": (
                "patient-grouped cross-validation; intervals: corrected resampled t at "
                f"confidence {evaluation['confidence']}"
            ),
            "confidence": evaluation["confidence"],
            "rows": performance,
        },
        "contrasts": contrast_rows(
            comparisons, headline, evaluation["primary"], evaluation["confidence"]
        ),
        "subgroups": groups,
        "temporal": later,
        "prediction_sets": calibration or None,
        "limits": known_limits(data, models, performance, groups, later),
        "provenance": provenance_summary(manifest, sources),
    }


def performance_tables(rows: list, classes: list) -> tuple:
    """The card's performance rows as two readable tables (discrimination, then calibration),
    each narrow enough to read in a terminal."""
    first, second = [], []
    for row in rows:
        key = {"combination": row["combination"], "rows": row["rows"]}
        metrics = {metric: interval_text(values) for metric, values in row["metrics"].items()}
        first.append(
            {
                **key,
                "n": row["n_rows"],
                **{m: metrics[m] for m in ("kappa", "qwk", "auc")},
                "not learned": f"{row['folds_not_learned']} of {row['folds']} folds",
            }
        )
        slopes = (row["calibration_slope"][name] for name in classes)
        second.append(
            {
                **key,
                **{m: metrics[m] for m in ("balanced_accuracy", "brier", "ece")},
                "slope " + "/".join(classes): "/".join(
                    "–" if value is None else f"{value:.2f}" for value in slopes
                ),
            }
        )
    return pd.DataFrame(first), pd.DataFrame(second)


def interval_text(values: dict) -> str:
    """``0.307 [0.230, 0.379]`` from a ``mean``/``ci_low``/``ci_high`` record."""
    from fusion_dag.report import with_interval

    parts = (values[p] for p in ("mean", "ci_low", "ci_high"))
    return with_interval(*(float("nan") if v is None else v for v in parts))


def card_markdown(card: dict) -> str:
    """The card for people (``model_card.md``): one section per part of the record."""
    from fusion_dag.report import markdown_list, readable_table

    use, data, models = card["intended_use"], card["data"], card["models"]
    classes = [entry["class"] for entry in data["classes"]]
    lines = ["# Model card", "", "## Intended use", ""]
    lines += markdown_list(
        [
            f"What for: {use['purpose']}",
            f"Who: {use['users']}",
            f"Decision support, not a diagnosis. Not for: {use['not_for']}",
        ]
    )
    lines += ["", "## Data", ""]
    shares = ", ".join(f"{e['class']} {e['visits']} ({e['share']:.0%})" for e in data["classes"])
    lines += markdown_list(
        [
            f"{data['visits']} visits of {data['patients']} patients (median "
            f"{data['visits_per_patient_median']:g} visits per patient); classes: {shares}.",
            f"Order: {data['order']}; sites: {data['sites'] or 'not recorded'}.",
        ]
        + [
            f"Visits without a {e['modality']} image: {e['visits_without']} "
            f"({e['share_without']:.0%})."
            for e in data["missing_images"]
        ]
    )
    lines += ["", "## Members and fusion weights", ""]
    members = pd.DataFrame(
        {
            "combination": c["combination"]
            + (" (default)" if c["combination"] == models["default_combination"] else ""),
            "weights": ", ".join(f"{m} {w:.2f}" for m, w in c["weights"].items()),
        }
        for c in models["combinations"]
    )
    lines += [readable_table(members), ""]
    performance = card["performance"]
    lines += ["## Cross-validated performance", "", f"{performance['method']}.", ""]
    if performance["rows"]:
        for table in performance_tables(performance["rows"], classes):
            lines += [readable_table(table), ""]
    else:
        lines += ["No headline row for the bundled combinations.", ""]
    lines += ["## Primary contrasts", ""]
    lines += markdown_list([row["sentence"] for row in card["contrasts"]])
    lines += [""]
    if card["subgroups"] is not None:
        lines += ["## Subgroups", ""]
        table = pd.DataFrame(card["subgroups"])
        combinations = ", ".join(dict.fromkeys(table["combination"]))
        lines += [f"{combinations}, per level of each column (patient-bootstrap intervals):", ""]
        shown = table[["column", "level", "n_visits", "n_patients", "small"]].copy()
        shown.columns = ["column", "level", "visits", "patients", "small"]
        for metric in ("kappa", "auc", "ece"):
            shown[metric] = [
                interval_text(
                    {
                        "mean": r[metric],
                        "ci_low": r[f"{metric}_ci_low"],
                        "ci_high": r[f"{metric}_ci_high"],
                    }
                )
                for r in card["subgroups"]
            ]
        lines += [readable_table(shown), ""]
    if card["temporal"] is not None:
        lines += ["## Temporal validation", ""]
        lines += [
            "The models fit on the earlier patients, scored on the later ones",
            "(patient-bootstrap intervals), beside the cross-validated estimate:",
            "",
        ]
        table = pd.DataFrame(
            {
                "combination": r["combination"],
                "later patients": r["n_patients"],
                **{
                    f"{m} later": interval_text(
                        {"mean": r[m], "ci_low": r[f"{m}_ci_low"], "ci_high": r[f"{m}_ci_high"]}
                    )
                    for m in ("kappa", "auc")
                },
                "kappa cv": interval_text(
                    {
                        "mean": r["cv_kappa"],
                        "ci_low": r["cv_kappa_ci_low"],
                        "ci_high": r["cv_kappa_ci_high"],
                    }
                ),
            }
            for r in card["temporal"]
        )
        lines += [readable_table(table), ""]
    if card["prediction_sets"]:
        lines += ["## Prediction sets", ""]
        lines += markdown_list(
            [
                f"{name}: {s['method']}, {s['calibration_visits']} calibration visits; in "
                f"cross-validation at coverage {s['cross_validated']['coverage']}: coverage "
                f"{s['cross_validated']['set_coverage']:.3f}, mean set size "
                f"{s['cross_validated']['set_size']:.2f}."
                for name, s in card["prediction_sets"].items()
            ]
        )
        lines += [""]
    lines += ["## Known limits", ""]
    lines += markdown_list(card["limits"])
    provenance = card["provenance"]
    workflow = provenance["workflow"] or {}
    lines += ["", "## Provenance", ""]
    lines += markdown_list(
        [
            f"Workflow commit {workflow.get('commit')} (dirty: {workflow.get('dirty')}); "
            f"Python {provenance['python']}; "
            + ", ".join(f"{k} {v}" for k, v in provenance["packages"].items())
            + ".",
            f"Model spec sha256 {provenance['spec_sha256']}.",
        ]
        + [f"{name} sha256 {digest}." for name, digest in provenance["sources"].items()]
    )
    return "\n".join(lines) + "\n"


def card_sources(bundle: Path, default_bundle: Path) -> list:
    """Where ``predict`` looks for a bundle's card: the bundle folder (a card copied into it
    travels with it), and for the bundle this run builds, the folder beside it
    (``results/final``, where the ``model_card`` rule writes it)."""
    bundle = Path(bundle)
    folders = [bundle]
    if bundle.resolve() == Path(default_bundle).resolve():
        folders.append(bundle.parent)
    return folders


def copy_card(folders: list, destination: Path) -> Path | None:
    """Copy the first card found in ``folders`` (both files) into ``destination``; return the
    folder it came from, or ``None`` (then a stale card in ``destination`` is removed, so the
    predictions never sit beside another bundle's card)."""
    destination = Path(destination)
    for folder in folders:
        if all((Path(folder) / name).is_file() for name in CARD_FILES):
            for name in CARD_FILES:
                shutil.copyfile(Path(folder) / name, destination / name)
            return Path(folder)
    for name in CARD_FILES:
        (destination / name).unlink(missing_ok=True)
    return None
