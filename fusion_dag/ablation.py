"""The ablation: the original study's fusion strategies, side by side on the same folds.

Why: users need to see on their own data why V3 holds. V1 (one learned fusion weight) and V2
(fixed weights) both train the image branch from random initialisation inside the fusion
model; each is run with training-row forest probabilities taken in-sample (the original's
mistake) and out-of-fold (this workflow's default), so the table separates the two causes of
overfitting. V3 is the ``fusion`` rule's own result and is not recomputed here.
"""

import logging

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, probability_table
from fusion_dag.evaluate import fold_metrics
from fusion_dag.image import balanced_class_weights, build_image_branch, image_rows, inner_split
from fusion_dag.metadata import feature_frame

log = logging.getLogger(__name__)

STRATEGIES = ("V1", "V2")
RF_SOURCES = ("in_sample", "out_of_fold")


def in_sample_forest_probs(
    pipeline, samples: pd.DataFrame, oof_probs: pd.DataFrame, classes: list
) -> pd.DataFrame:
    """Forest probabilities with training rows predicted by the forest that saw them.

    Validation rows keep the fold's own validation probabilities (the same forest).
    """
    train_ids = oof_probs.loc[oof_probs["split"] == "train", ID]
    train = samples.set_index(ID).loc[train_ids].reset_index()
    probs = pipeline.predict_proba(feature_frame(train))
    in_sample = probability_table(train[ID], ["train"] * len(train), probs, classes)
    return pd.concat([in_sample, oof_probs[oof_probs["split"] == "val"]], ignore_index=True)


def fusion_weight_layer(initial_weight: float, learned: bool):
    """``w * rf + (1 - w) * image``; with ``learned``, ``w = sigmoid(logit)`` is trained (V1)."""
    import keras

    class WeightedFusion(keras.layers.Layer):
        def build(self, input_shape):
            logit = float(np.log(initial_weight / (1.0 - initial_weight)))
            self.logit = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(logit),
                trainable=learned,
                name="logit",
            )

        def call(self, inputs):
            rf, image = inputs
            weight = keras.ops.sigmoid(self.logit)
            return weight * rf + (1.0 - weight) * image

    return WeightedFusion(name="fusion_weighted")


def build_joint_model(modality: str, size: int, n_classes: int, weight: float, learned: bool):
    """Image branch from random initialisation plus ``rf_probs``, fused inside one model."""
    import keras

    branch = build_image_branch(modality, size, n_classes)
    rf_probs = keras.Input(shape=(n_classes,), name="rf_probs")
    fused = fusion_weight_layer(weight, learned)([rf_probs, branch.output])
    return keras.Model([rf_probs, branch.input], fused, name=f"fusion_joint_{modality}")


def train_joint(
    strategy: str,
    rf_probs: pd.DataFrame,
    images: np.ndarray,
    positions: pd.Series,
    folds: pd.DataFrame,
    fold: int,
    modality: str,
    classes: list,
    settings: dict,
    metadata_weight: float,
    seed: int,
) -> tuple[pd.DataFrame, int]:
    """Train a V1 or V2 model on the fold's training rows; return (probabilities, epochs run).

    Same optimizer, epochs, class weights and inner patient-grouped early stopping as the
    image branch, so the strategies differ only in how fusion is trained.
    """
    import keras

    keras.utils.set_random_seed(seed)
    columns = [f"prob_{c}" for c in classes]
    table = image_rows(folds, positions, fold).merge(
        rf_probs, on=[ID, "split"], validate="one_to_one"
    )
    train = table[table["split"] == "train"].reset_index(drop=True)
    held_out = inner_split(train, settings["validation_fraction"], seed)

    def arrays(rows: pd.DataFrame):
        x = {
            "rf_probs": rows[columns].to_numpy(dtype="float32"),
            f"{modality}_input": images[positions[rows[ID]].to_numpy()],
        }
        return x, rows[LABEL].map(classes.index).to_numpy()

    x_fit, y_fit = arrays(train[~held_out])
    x_stop, y_stop = arrays(train[held_out])
    model = build_joint_model(
        modality, images.shape[1], len(classes), metadata_weight, learned=strategy == "V1"
    )
    model.compile(
        optimizer=keras.optimizers.Adam(settings["learning_rate"]),
        loss="sparse_categorical_crossentropy",
    )
    history = model.fit(
        x_fit,
        y_fit,
        validation_data=(x_stop, y_stop),
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        class_weight=balanced_class_weights(y_fit),
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=settings["patience"], restore_best_weights=True
            )
        ],
        verbose=2,
    )
    x_all, _ = arrays(table)
    probs = model.predict(x_all, batch_size=settings["batch_size"], verbose=0)
    if strategy == "V1":
        learned = float(keras.ops.sigmoid(model.get_layer("fusion_weighted").logit))
        log.info("%s: learned metadata weight %.3f", strategy, learned)
    epochs = len(history.epoch)
    log.info("%s: %d epochs, %d patients in training", strategy, epochs, train[GROUP].nunique())
    return probability_table(table[ID], table["split"], probs, classes), epochs


def ablation_fold(
    samples: pd.DataFrame,
    folds: pd.DataFrame,
    oof_probs: pd.DataFrame,
    pipeline,
    images: np.ndarray,
    positions: pd.Series,
    fold: int,
    modality: str,
    classes: list,
    settings: dict,
    metadata_weight: float,
    seed: int,
) -> list:
    """Metrics of every V1/V2 variant on one fold, as records for the ablation table."""
    sources = {
        "in_sample": in_sample_forest_probs(pipeline, samples, oof_probs, classes),
        "out_of_fold": oof_probs,
    }
    records = []
    for strategy in STRATEGIES:
        for source in RF_SOURCES:
            log.info("Fold %d: training %s with %s forest probabilities", fold, strategy, source)
            probs, epochs = train_joint(
                strategy,
                sources[source],
                images,
                positions,
                folds,
                fold,
                modality,
                classes,
                settings,
                metadata_weight,
                seed,
            )
            metrics = fold_metrics(probs, folds, classes)
            records.append(
                {
                    "strategy": strategy,
                    "rf_source": source,
                    "fold": fold,
                    "epochs": epochs,
                    **metrics,
                }
            )
    return records


def ablation_table(records: list, v3_records: list) -> pd.DataFrame:
    """Mean and std over folds of validation kappa, train kappa and gap per variant."""
    frame = pd.DataFrame(records + v3_records)
    rows = []
    for (combination, strategy, source), group in frame.groupby(
        ["combination", "strategy", "rf_source"], sort=False
    ):
        row = {
            "combination": combination,
            "strategy": strategy,
            "rf_source": source,
            "n_folds": len(group),
        }
        for metric in ("kappa", "train_kappa", "gap"):
            row[f"{metric}_mean"] = group[metric].mean()
            row[f"{metric}_std"] = group[metric].std(ddof=1) if len(group) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)
