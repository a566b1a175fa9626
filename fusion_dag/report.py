"""Aggregation of per-fold metrics into the headline results table.

The headline is a mean over patient-grouped folds with its standard deviation, because with
three folds of about 50 patients a single fold's kappa moves by several hundredths.
"""

import pandas as pd

MEAN_METRICS = ("kappa", "qwk", "accuracy", "macro_f1")


def per_fold_table(records: list) -> pd.DataFrame:
    """One row per combination and fold from ``{"combination", "fold", **metrics}`` records."""
    table = pd.DataFrame(records)
    return table.sort_values(["combination", "fold"], kind="stable").reset_index(drop=True)


def headline_table(per_fold: pd.DataFrame, combinations: list, classes: list) -> pd.DataFrame:
    """One row per combination, in the given order, with the contracted columns."""
    rows = []
    for name in combinations:
        folds = per_fold[per_fold["combination"] == name]
        row = {"combination": name, "n_folds": len(folds)}
        row["kappa_mean"] = folds["kappa"].mean()
        row["kappa_std"] = folds["kappa"].std(ddof=1) if len(folds) > 1 else 0.0
        for metric in MEAN_METRICS[1:]:
            row[f"{metric}_mean"] = folds[metric].mean()
        for c in classes:
            row[f"f1_{c}_mean"] = folds[f"f1_{c}"].mean()
        row["train_kappa_mean"] = folds["train_kappa"].mean()
        row["gap_mean"] = folds["gap"].mean()
        for c in classes:
            # Pooled share over all validation rows, so a small fold does not count double.
            counts = folds[f"pred_frac_{c}"] * folds["n_val"]
            row[f"pred_frac_{c}"] = counts.sum() / folds["n_val"].sum()
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(headline: pd.DataFrame) -> str:
    """The headline as a Markdown table for people, three decimals."""
    return headline.to_markdown(index=False, floatfmt=".3f") + "\n"
