"""The metadata branch: encoding, imputation and a random forest, fit per outer fold.

Why out-of-fold training probabilities: a forest predicting rows it was fit on is nearly
perfect, so a fusion stage that sees in-sample training probabilities learns to trust the
forest far more than it deserves on new patients. Training-row probabilities therefore come
from an inner patient-grouped cross-validation on the training rows only; validation-row
probabilities come from the forest fit on all training rows.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import skops.io
from joblib import parallel_config
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder

from fusion_dag.artifacts import (
    GROUP,
    ID,
    LABEL,
    InputError,
    label_indices,
    partial_path,
    probability_table,
)
from fusion_dag.folds import split_rows

log = logging.getLogger(__name__)

# Types in a saved pipeline that skops does not trust by default but that this pipeline uses.
TRUSTED_TYPES = [
    "numpy.dtype",
    "sklearn.compose._column_transformer.make_column_selector",
    "sklearn.tree._tree.Tree",
]


def feature_frame(samples: pd.DataFrame) -> pd.DataFrame:
    """The metadata features: every prepared column but id, group and label.

    Text columns become ``object`` with NaN for missing cells, which is what scikit-learn's
    imputers and encoders expect.
    """
    features = samples.drop(columns=[ID, GROUP, LABEL])
    text = features.select_dtypes(exclude="number").columns
    features[text] = features[text].astype(object).where(features[text].notna(), np.nan)
    return features


def build_pipeline(settings: dict, seed: int) -> Pipeline:
    """Median-impute numbers, one-hot encode text (missing as its own level), then a forest.

    ``settings`` is ``metadata_model`` (``n_estimators``, ``min_samples_leaf``,
    ``class_weight``); the forest predicts on one thread until :func:`fit_on` fits it.
    """
    encode = ColumnTransformer(
        [
            (
                "numeric",
                SimpleImputer(strategy="median", keep_empty_features=True),
                make_column_selector(dtype_include="number"),
            ),
            (
                "text",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                make_column_selector(dtype_exclude="number"),
            ),
        ]
    )
    forest = RandomForestClassifier(
        n_estimators=settings["n_estimators"],
        min_samples_leaf=settings["min_samples_leaf"],
        class_weight=settings["class_weight"],
        random_state=seed,
        n_jobs=1,
    )
    return Pipeline([("encode", encode), ("forest", forest)])


def fold_probabilities(
    samples: pd.DataFrame,
    folds: pd.DataFrame,
    fold: int,
    classes: list,
    settings: dict,
    seed: int,
    n_jobs: int,
) -> tuple[pd.DataFrame, Pipeline]:
    """Fit the pipeline on the fold's training rows; return (probabilities, fitted pipeline).

    The probability table has ``id``, ``split`` and ``prob_{class}`` for every sample.
    """
    fold_of = samples[[ID]].merge(folds[[ID, "fold"]], on=ID, how="left", validate="one_to_one")
    split = split_rows(fold_of, fold).to_numpy()
    train, validation = samples[split == "train"], samples[split == "val"]
    inner_folds = settings["inner_folds"]
    if train[GROUP].nunique() < inner_folds:
        raise InputError(
            f"fold {fold}: {train[GROUP].nunique()} training groups cannot fill "
            f"metadata_model.inner_folds={inner_folds}"
        )
    y_train = label_indices(train[LABEL], classes)
    log.info("Fold %d: out-of-fold training probabilities, %d inner folds", fold, inner_folds)
    train_probs = inner_probabilities(train, y_train, settings, seed, n_jobs)
    pipeline = build_pipeline(settings, seed)
    log.info("Fold %d: fitting on %d training rows", fold, len(train))
    fit_on(pipeline, train, y_train, n_jobs)
    validation_probs = pipeline.predict_proba(feature_frame(validation))
    probs = probability_table(
        pd.concat([train[ID], validation[ID]]),
        ["train"] * len(train) + ["val"] * len(validation),
        np.vstack([train_probs, validation_probs]),
        classes,
    )
    return probs, pipeline


def inner_probabilities(
    train: pd.DataFrame, y_train: np.ndarray, settings: dict, seed: int, n_jobs: int
) -> np.ndarray:
    """Each training row's probabilities from a forest fit on the other inner folds
    (``metadata_model.inner_folds``, patient-grouped, label-stratified): out of sample.

    Trees are built in parallel, but probabilities are always summed on one thread: a forest
    predicting on several threads adds tree votes in a racy order, and the last bits differ
    between runs. The inner cross-validation parallelises over folds instead, on threads:
    the trees are built without Python's lock, and threads start in no time where joblib's
    default worker processes each import scikit-learn again (seconds per job on small data).
    """
    inner_folds = settings["inner_folds"]
    inner = StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed)
    with parallel_config(backend="threading"):
        return cross_val_predict(
            build_pipeline(settings, seed),
            feature_frame(train),
            y_train,
            groups=train[GROUP],
            cv=inner,
            method="predict_proba",
            n_jobs=min(n_jobs, inner_folds),
        )


def final_inner_probabilities(
    samples: pd.DataFrame, classes: list, settings: dict, seed: int, n_jobs: int
) -> pd.DataFrame:
    """Every labelled row's inner out-of-fold probabilities (``split`` train), as a fold's
    training rows get them (:func:`inner_probabilities`): what the final fusion learns its
    weights on with ``fusion.learn`` (the final forest's own are in-sample)."""
    log.info("Final forest: out-of-fold probabilities of all %d labelled rows", len(samples))
    probs = inner_probabilities(
        samples, label_indices(samples[LABEL], classes), settings, seed, n_jobs
    )
    return probability_table(samples[ID], ["train"] * len(samples), probs, classes)


def fit_on(pipeline: Pipeline, rows: pd.DataFrame, y: np.ndarray, n_jobs: int) -> Pipeline:
    """Fit with ``n_jobs`` tree builders, then predict on one thread (see fold_probabilities)."""
    pipeline.set_params(forest__n_jobs=n_jobs).fit(feature_frame(rows), y)
    return pipeline.set_params(forest__n_jobs=1)


def final_pipeline(
    samples: pd.DataFrame, classes: list, settings: dict, seed: int, n_jobs: int
) -> tuple[Pipeline, pd.DataFrame]:
    """The forest fit on every labelled row, and its in-sample probabilities (``split`` train).

    No inner cross-validation: the final fusion has no validation rows and learns nothing, so
    out-of-fold training probabilities would feed no decision. The in-sample probabilities are
    what the bundle predicts for these visits; they measure memorisation (``fit_kappa``), not
    quality, which the cross-validation estimates.
    """
    pipeline = build_pipeline(settings, seed)
    log.info("Final forest: fitting on all %d labelled rows", len(samples))
    fit_on(pipeline, samples, label_indices(samples[LABEL], classes), n_jobs)
    predicted = pipeline.predict_proba(feature_frame(samples))
    probs = probability_table(samples[ID], ["train"] * len(samples), predicted, classes)
    return pipeline, probs


def fit_probabilities(
    pipeline: Pipeline, samples: pd.DataFrame, probs: pd.DataFrame, classes: list
) -> pd.DataFrame:
    """The training rows predicted by the forest that was fit on them (in-sample).

    Never what fusion sees: it measures memorisation (``fit_kappa``) and is the input of the
    ablation's in-sample variants, which reproduce the original study's mistake.
    """
    train_ids = probs.loc[probs["split"] == "train", ID]
    train = samples.set_index(ID).loc[train_ids].reset_index()
    predicted = pipeline.predict_proba(feature_frame(train))
    return probability_table(train[ID], ["train"] * len(train), predicted, classes)


def save_pipeline(pipeline: Pipeline, path: Path) -> None:
    """Persist with skops, which loads without executing code (unlike pickle)."""
    partial = partial_path(path)
    skops.io.dump(pipeline, partial)
    partial.replace(path)


def load_pipeline(path: Path) -> Pipeline:
    """Load a pipeline saved by :func:`save_pipeline`.

    Only the types this pipeline is built from are trusted beyond skops' defaults; a file that
    needs anything else is refused by skops rather than executed.
    """
    return skops.io.load(path, trusted=TRUSTED_TYPES)
