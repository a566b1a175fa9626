"""Training an image branch (a small CNN or a ``keras.applications`` backbone) alone per fold.

Why train the branch alone: a CNN trained inside the fusion model learns weak "complementary"
features that fit the training rows only (train kappa 0.96, validation 0.02 in the original
study). Trained alone, with early stopping on an inner patient-grouped split of the training
rows, it learns what the images themselves say; the fusion stage then loads it frozen.

The branch itself (its layers, names and starting weights) is built by
:mod:`fusion_dag.branch`; this module splits the rows, feeds the batches, runs the training
phases with early stopping and writes what they leave behind.
"""

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight

# TensorFlow's C++ start-up notices are not job output; this must be set before it loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
from keras import ops  # noqa: E402

from fusion_dag.artifacts import (
    GROUP,
    ID,
    LABEL,
    label_indices,
    prob_columns,
    write_tsv,
)
from fusion_dag.backbones import SMALL_CNN
from fusion_dag.branch import (
    build_image_branch,
    configure_tensorflow,
    copy_head,
    feature_head,
    fit_standardization,
    load_backbone_weights,
    set_fine_tuning,
)
from fusion_dag.checkpoint import save_branch_weights
from fusion_dag.evaluate import kappa
from fusion_dag.features import (
    FeatureCache,
    check_backbone,
    check_cache_matches,
    feature_arrays,
    no_cache_reason,
)
from fusion_dag.folds import early_stopping_split, image_rows
from fusion_dag.views import view_weights, visit_means

log = logging.getLogger(__name__)


def balanced_class_weights(y: np.ndarray) -> dict:
    """Keras ``class_weight`` that makes each present class count equally in the loss."""
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return dict(zip(present.tolist(), weights.tolist(), strict=True))


@keras.saving.register_keras_serializable(package="fusion_dag")
class CohenKappa(keras.metrics.Metric):
    """Unweighted Cohen's kappa as a streaming Keras metric (a confusion matrix per epoch).

    Keras evaluates it during the training and validation passes it already makes, so the
    per-epoch ``kappa`` and ``val_kappa`` cost no extra predictions. Training ``kappa`` is
    accumulated batch by batch while the weights change, with dropout active, as with any Keras
    training metric. Class weights are not applied to it.
    """

    def __init__(self, n_classes: int, name: str = "kappa", **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_classes = n_classes
        self.confusion = self.add_variable(
            shape=(n_classes, n_classes), initializer="zeros", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.n_classes)
        predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), self.n_classes)
        self.confusion.assign_add(ops.matmul(ops.transpose(truth), predicted))

    def result(self):
        total = ops.maximum(ops.sum(self.confusion), 1.0)
        observed = ops.trace(self.confusion) / total
        expected = ops.sum(ops.sum(self.confusion, 1) * ops.sum(self.confusion, 0)) / (
            total * total
        )
        return ops.where(expected < 1.0, (observed - expected) / (1.0 - expected), 0.0)

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.n_classes, self.n_classes)))

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes}


@dataclass(frozen=True)
class BranchFold:
    """One image modality on one outer fold: the cached views and how to train on them.

    ``images`` is the memory-mapped cache and ``views`` its views table (row i is image i;
    ``id`` names each view's visit); ``folds`` the outer fold table of visits; ``settings`` the
    modality's ``image_model`` settings. Splits are made on visits (patient-grouped), then each
    visit brings all its views, so a visit's views are never on two sides. ``features``, when
    the modality has a feature cache, holds the backbone's cached features of every view (row i
    is image i) and the backbone weights they were computed with.
    """

    images: np.ndarray
    views: pd.DataFrame
    folds: pd.DataFrame
    fold: int
    modality: str
    classes: list
    settings: dict
    seed: int
    features: FeatureCache | None = None

    def rows(self) -> pd.DataFrame:
        """The fold table's visits that have a view, with their outer ``split``."""
        return image_rows(self.folds, self.views, self.fold)

    def views_of(self, visits: pd.DataFrame) -> pd.DataFrame:
        """The views of ``visits`` (in cache order), with each view's cache ``position`` and
        its visit's ``label``, ``group`` and ``split``."""
        views = self.views[["view", ID]].assign(position=np.arange(len(self.views)))
        wanted = [c for c in (ID, LABEL, GROUP, "split") if c in visits.columns]
        return views.merge(visits[wanted], on=ID, how="inner", validate="many_to_one")

    def pixels(self, views: pd.DataFrame) -> np.ndarray:
        """The cached images of ``views``, in their order."""
        return self.images[views["position"].to_numpy()]

    def labels(self, rows: pd.DataFrame) -> np.ndarray:
        """Class indices of ``rows``."""
        return label_indices(rows[LABEL], self.classes)

    def weights(self, views: pd.DataFrame, class_weights: dict | None) -> np.ndarray:
        """Each view's weight in the loss: its class's weight (1 without ``class_weights``)
        divided by its visit's number of views, so each visit weighs the same in the loss and
        in early stopping whatever its number of views (:func:`~fusion_dag.views.view_weights`)."""
        y = self.labels(views)
        per_class = np.ones(len(y))
        if class_weights is not None:
            per_class = np.array([class_weights[label] for label in y], dtype=float)
        return view_weights(views[ID], per_class)

    def training_arrays(self, visits: pd.DataFrame, class_weights: dict | None) -> tuple:
        """(images, labels, weights) of every view of ``visits`` (see :meth:`weights`)."""
        views = self.views_of(visits)
        return self.pixels(views), self.labels(views), self.weights(views, class_weights)


class CachedBatches(keras.utils.PyDataset):
    """Model inputs gathered a batch at a time, for ``model.predict``.

    Why: indexing a memory-mapped cache with every row copies every image into memory at
    once, and Keras copies the array again on its way in; with three modalities at four times
    the study's size a fusion job peaked at 2.5 GB that way. Gathering each batch when it is
    predicted keeps a job's memory flat in the number of rows. ``inputs`` maps each model input
    name to (array, row positions in it), all of one length; batches follow that order, so
    ``predict``'s outputs line up with the positions.
    """

    def __init__(self, inputs: dict, batch_size: int):
        super().__init__()
        self.inputs = inputs
        self.batch_size = batch_size
        self.n_rows = len(next(iter(inputs.values()))[1])

    def __len__(self) -> int:
        return -(-self.n_rows // self.batch_size)

    def __getitem__(self, index: int) -> tuple:
        batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return ({name: array[rows[batch]] for name, (array, rows) in self.inputs.items()},)


class FeatureBatches(keras.utils.PyDataset):
    """Training batches of cached features, for ``model.fit`` of the head.

    Each epoch a seeded generator draws a new order of the views and, when the cache holds
    flipped variants, one flip per view (``RandomFlip("horizontal")`` flips each image with
    probability 1/2): the head sees what it would see on pixels, from features computed once.
    Yields (features, labels, sample weights); ``shuffle=False`` keeps the views' order (for
    comparing with a fit on pixels in the same batches).
    """

    def __init__(self, cache: FeatureCache, views: tuple, batch_size: int, seed: int, shuffle=True):
        super().__init__()
        self.features = cache.features
        self.positions, self.labels, self.weights = views
        self.flip = bool(cache.sidecar["flip"])
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = np.random.default_rng(seed)
        self.draw()

    def draw(self) -> None:
        """The next epoch's order of the views and flip of each."""
        n_views = len(self.positions)
        self.order = self.generator.permutation(n_views) if self.shuffle else np.arange(n_views)
        self.variants = (
            self.generator.integers(0, 2, n_views) if self.flip else np.zeros(n_views, dtype=int)
        )

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __getitem__(self, index: int) -> tuple:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        x = self.features[self.positions[rows], self.variants[rows]]
        return x, self.labels[rows], self.weights[rows]

    def on_epoch_end(self) -> None:
        self.draw()


def fit_with_early_stopping(model, fit, stop: tuple, settings: dict, *callbacks):
    """Fit on ``fit`` (x, y, sample weights, or batches that yield them), stopping early on
    ``stop`` (x, y, sample weights: the inner patient-grouped split); the best epoch's weights
    are restored when training ends, stopped early or not. The weights carry the balanced class
    weights and the one-weight-per-visit rule (:meth:`BranchFold.training_arrays`). Shared by
    the image stage's phases and the ablation, so the strategies differ only in what they
    train, not how. Returns (Keras history, the 1-based epoch whose weights were restored, as
    ``EarlyStopping`` recorded it)."""
    warmup = settings.get("warmup_epochs", 0)
    stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=settings["patience"],
        restore_best_weights=True,
        start_from_epoch=warmup,
    )
    if settings.get("reduce_lr_patience", 0):
        reduce = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=settings["reduce_lr_patience"]
        )
        callbacks = (*callbacks, reduce)
    common = {
        "validation_data": stop,
        "epochs": settings["epochs"],
        "callbacks": [*callbacks, stopping],
        "verbose": 2,
    }
    if isinstance(fit, keras.utils.PyDataset):
        # The batches draw their own order each epoch (FeatureBatches).
        history = model.fit(fit, shuffle=False, **common)
    else:
        x_fit, y_fit, w_fit = fit
        history = model.fit(
            x_fit,
            y_fit,
            sample_weight=w_fit,
            batch_size=settings["batch_size"],
            shuffle=True,
            **common,
        )
    if stopping.best_weights is None:
        # Training ended within the warm-up: no epoch was compared, the last one stays.
        return history, len(history.epoch)
    return history, stopping.best_epoch + 1


def training_phases(settings: dict) -> list:
    """The branch's training phases, in order.

    ``head``: the head on the frozen backbone (from cached features when there are);
    ``fine_tune``: then the top backbone layers on pixels at ``fine_tune_learning_rate``, as
    keras.io fine-tunes pretrained weights only once the new head has converged (a random
    head's large gradients would destroy the pretrained features); ``all``: every trainable
    layer at once at ``learning_rate`` (``small_cnn``, a backbone trained from random weights).
    """
    if settings.get("backbone", SMALL_CNN) == SMALL_CNN:
        return ["all"]
    if settings.get("fine_tune", "frozen") == "frozen":
        return ["head"]
    if settings.get("backbone_weights") is None:
        return ["all"]
    return ["head", "fine_tune"]


def uses_cached_features(task: BranchFold) -> bool:
    """Whether the trained branch's backbone is still the one its features were cached with
    (a frozen backbone), so its views can be scored from the cache."""
    return task.features is not None and training_phases(task.settings) == ["head"]


def compile_branch(model, learning_rate: float, n_classes: int) -> None:
    """Adam at ``learning_rate``, cross-entropy, accuracy and the streaming kappa."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", CohenKappa(n_classes)],
    )


def initial_branch(task: BranchFold):
    """The branch as training starts: randomly initialised, its backbone holding the configured
    pretrained weights, or with a feature cache exactly the weights the features were computed
    with (checked by hash, so the head learns on the backbone it will run on)."""
    settings = task.settings
    model = build_image_branch(task.modality, task.images.shape[1:], len(task.classes), settings)
    if task.features is None:
        load_backbone_weights(model, task.modality, settings)
        return model
    check_cache_matches(task.features, settings, task.images)
    load_backbone_weights(
        model, task.modality, {**settings, "backbone_weights": str(task.features.backbone)}
    )
    check_backbone(
        model.get_layer(f"{task.modality}_backbone"), task.features.sidecar, task.features.backbone
    )
    return model


def set_phase_trainable(model, modality: str, settings: dict, phase: str) -> None:
    """Freeze the backbone for the ``head`` phase; otherwise train what ``fine_tune`` says."""
    if phase == "head":
        model.get_layer(f"{modality}_backbone").trainable = False
        log.info("Backbone %s frozen: the head trains alone", settings["backbone"])
    else:
        set_fine_tuning(model, modality, settings)


def run_phase(model, task: BranchFold, phase: str, views: tuple, pixels) -> tuple:
    """Train one phase (:func:`training_phases`) with early stopping on the inner split.

    ``views`` is ((fit views, their sample weights), (stop views, theirs)); ``pixels()``
    returns the (fit, stop) arrays of images, labels and weights, read from the image cache the
    first time a phase needs them. The head phase with a feature cache trains
    :func:`feature_head` on the cached features and copies it back into the branch. Returns
    (history, best epoch, what it trained on).
    """
    settings = task.settings
    set_phase_trainable(model, task.modality, settings, phase)
    rate = settings["learning_rate"]
    if phase == "fine_tune":
        rate = settings.get("fine_tune_learning_rate", 1e-5)
    (fit_views, fit_weights), (stop_views, stop_weights) = views
    if phase == "head" and task.features is not None:
        head = feature_head(model, task.modality, seed=task.seed)
        compile_branch(head, rate, len(task.classes))
        fit = FeatureBatches(
            task.features,
            (fit_views["position"].to_numpy(), task.labels(fit_views), fit_weights),
            settings["batch_size"],
            task.seed,
        )
        stop_features = feature_arrays(task.features, stop_views["position"].to_numpy())
        stop = (stop_features, task.labels(stop_views), stop_weights)
        history, best_epoch = fit_with_early_stopping(head, fit, stop, settings)
        copy_head(head, model, task.modality)
        source = "cached features" + (" and their flips" if task.features.sidecar["flip"] else "")
    else:
        compile_branch(model, rate, len(task.classes))
        fit, stop = pixels()
        history, best_epoch = fit_with_early_stopping(model, fit, stop, settings)
        source = "pixels"
    return history, best_epoch, f"{phase} on {source}, learning rate {rate:g}"


def early_stopping_views(task: BranchFold) -> tuple:
    """((fit views, their loss weights), (stop views, theirs)) of the fold's training visits.

    Why on visits first: the inner split is drawn on visits, patient-grouped
    (:func:`inner_split`), so early stopping is decided on patients the network never fits;
    then every view of a visit goes where its visit goes. The fit views carry the balanced
    class weights of the fit visits, the stop views none, both one weight per visit
    (:meth:`BranchFold.weights`).
    """
    train, held_out = early_stopping_split(
        task.folds, task.views, task.fold, task.settings["validation_fraction"], task.seed
    )
    fit_rows, stop_rows = train[~held_out], train[held_out]
    class_weights = balanced_class_weights(task.labels(fit_rows))
    fit_views, stop_views = task.views_of(fit_rows), task.views_of(stop_rows)
    log.info(
        "Fold %d, %s: %d training visits (%d views, %d patients), %d held out for early "
        "stopping (%d views, %d patients)",
        task.fold,
        task.modality,
        len(fit_rows),
        len(fit_views),
        fit_rows[GROUP].nunique(),
        len(stop_rows),
        len(stop_views),
        stop_rows[GROUP].nunique(),
    )
    return (
        (fit_views, task.weights(fit_views, class_weights)),
        (stop_views, task.weights(stop_views, None)),
    )


def pixel_loader(task: BranchFold, views: tuple):
    """A function returning the (fit, stop) arrays of images, labels and weights of ``views``.

    Why deferred and kept: the images are read from the cache the first time a phase trains on
    pixels, and only then (a head trained on cached features never reads them); a second phase
    reuses the same arrays.
    """
    return functools.cache(lambda: tuple((task.pixels(v), task.labels(v), w) for v, w in views))


def phase_record(number: int, phase: str, history, best_epoch: int, what: str) -> dict:
    """One phase's line of the job's record (``phase``, ``name``, ``epochs``, ``best_epoch``,
    ``best_val_loss``), logged as it is made so the log reads phase by phase."""
    best_loss = history.history["val_loss"][best_epoch - 1]
    record = {"phase": number, "name": phase, "epochs": len(history.epoch)}
    record |= {"best_epoch": best_epoch, "best_val_loss": float(best_loss)}
    log.info(
        "Phase %d (%s): %d epochs, best epoch %d (validation loss %.4f)",
        number,
        what,
        record["epochs"],
        best_epoch,
        best_loss,
    )
    return record


def keep_best_phase(model, kept: dict | None, record: dict, epoch: int) -> dict:
    """The phase whose weights the branch keeps: this one, unless an earlier phase's best
    validation loss was at least as low, in which case ``model`` gets that phase's weights
    back (a fine-tuning phase that does not improve on the head must not cost the head's
    result). ``epoch`` is this phase's best epoch counted over all phases."""
    if kept is not None and record["best_val_loss"] >= kept["best_val_loss"]:
        model.set_weights(kept["weights"])
        log.info(
            "Phase %d did not improve on phase %d's validation loss (%.4f): phase %d's "
            "weights are kept",
            record["phase"],
            kept["phase"],
            kept["best_val_loss"],
            kept["phase"],
        )
        return kept
    return {**record, "epoch": epoch, "weights": model.get_weights()}


def train_phases(model, task: BranchFold, views: tuple, pixels) -> tuple:
    """Run every phase (:func:`training_phases`) in order on ``model``; return (the kept
    phase's record, every phase's record, every phase's history as a table).

    Why one loop for all phases: each phase starts from the weights the previous one kept, and
    the history numbers epochs on from the previous phase's last, so ``history.tsv`` reads as
    one run tagged by ``phase``.
    """
    frames, phases, kept, epochs_before = [], [], None, 0
    for number, phase in enumerate(training_phases(task.settings), start=1):
        history, best_epoch, what = run_phase(model, task, phase, views, pixels)
        record = phase_record(number, phase, history, best_epoch, what)
        kept = keep_best_phase(model, kept, record, epochs_before + best_epoch)
        frame = pd.DataFrame(history.history)
        frames.append(frame.assign(epoch=epochs_before + np.arange(len(frame)), phase=number))
        epochs_before += len(frame)
        phases.append(record)
    return kept, phases, frames


def write_history(frames: list, path: Path) -> None:
    """Write every epoch of every phase to ``history.tsv``: ``epoch``, ``phase``, then the
    metrics in name order, so the columns do not depend on the order Keras logged them in."""
    history_table = pd.concat(frames, ignore_index=True)
    metrics = sorted(c for c in history_table.columns if c not in ("epoch", "phase"))
    write_tsv(history_table[["epoch", "phase", *metrics]], path)


def train_branch(task: BranchFold, checkpoint_path: Path, history_path: Path):
    """Train one modality's branch on one outer fold's training visits; return the best model.

    The inner split for early stopping is drawn on visits (:func:`early_stopping_views`). Each
    phase (:func:`training_phases`) stops early on the inner split's loss and restores its best
    epoch; a fine-tuning phase that does not improve on the head phase's best loss gives the
    head phase's weights back (:func:`keep_best_phase`). The weights are written, keyed by
    layer name, once training has finished, and ``history.tsv`` holds every epoch with its
    ``phase`` (1, 2). Returns (model, ``best_epoch`` counted over all phases, ``best_phase``
    (whose weights were kept), ``fit_images_per_second``, ``phases``: each phase's epochs and
    best epoch).
    """
    views = early_stopping_views(task)
    pixels = pixel_loader(task, views)
    model = initial_branch(task)
    if f"{task.modality}_standardize" in {layer.name for layer in model.layers}:
        fit_standardization(model, task.modality, pixels()[0][0])
    started = time.perf_counter()
    kept, phases, frames = train_phases(model, task, views, pixels)
    seconds = time.perf_counter() - started
    epochs = sum(p["epochs"] for p in phases)
    fit_views, _ = views[0]
    images_per_second = len(fit_views) * epochs / seconds
    log.info("Trained %d epochs at %.0f views/s", epochs, images_per_second)
    save_branch_weights(model, task.modality, checkpoint_path)
    write_history(frames, history_path)
    return model, {
        "best_epoch": kept["epoch"],
        "best_phase": kept["phase"],
        "fit_images_per_second": images_per_second,
        "phases": phases,
    }


def view_probabilities(model, task: BranchFold, visits: pd.DataFrame) -> pd.DataFrame:
    """``view``, ``id``, ``split`` and ``prob_{class}`` of every view of ``visits``: from the
    cached features when the backbone stayed frozen (the head on the features the backbone
    gives), else from the pixels through the whole branch."""
    views = task.views_of(visits)
    positions = views["position"].to_numpy()
    if uses_cached_features(task):
        head = feature_head(model, task.modality)
        features = feature_arrays(task.features, positions)
        probs = head.predict(features, batch_size=task.settings["batch_size"], verbose=0)
    else:
        inputs = {model.input.name: (task.images, positions)}
        probs = model.predict(CachedBatches(inputs, task.settings["batch_size"]), verbose=0)
    table = views[["view", ID, "split"]].reset_index(drop=True)
    return pd.concat([table, pd.DataFrame(probs, columns=prob_columns(task.classes))], axis=1)


def branch_probabilities(model, task: BranchFold) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the contract's visit probability table, the per-view table) for every visit with a
    view: a visit's probability is the mean of its views'
    (:func:`~fusion_dag.views.visit_means`)."""
    view_probs = view_probabilities(model, task, task.rows())
    visits = visit_means(view_probs, prob_columns(task.classes))
    return visits, view_probs


# A training kappa below this says the branch fits the visits it was trained on no better than
# chance. Why 0.05: under chance agreement kappa's sampling standard error on n visits with
# three near-balanced phases is about 0.7 / sqrt(n), 0.03 to 0.05 for the 200 to 600 training
# visits of a fold of the demo or the study, so a lower kappa is within about one standard
# error of none; a branch that learned anything fits its own training visits above it (the
# faint demo's weakest learned fold, bench/plateau.py: 0.145). It is lower than the 0.1
# bench/plateau.py uses to call a plateau left, so a weak but real branch is not flagged.
LEARNED_KAPPA = 0.05


def not_learned_reasons(
    best_epoch: int, warmup_epochs: int, train_kappa: float, predicted: dict
) -> list:
    """Why a trained branch learned nothing from its images; empty when it did.

    ``best_epoch`` is the kept phase's own best epoch, ``warmup_epochs`` the setting,
    ``train_kappa`` the kappa of the branch's training visits, ``predicted`` split -> the class
    predicted for each of that split's visits. Any of these says the branch did not learn:
    its weights were never better than after the first epoch or the warm-up (early stopping
    never found an improvement: the first plateau, or training ended inside the warm-up), it
    fits its training visits at chance level (:data:`LEARNED_KAPPA`), or it predicts one class
    for every visit of a split (the class prior). No error catches such a branch, and fused
    it only shifts the other members' probabilities: a contrast with it does not measure what
    the images carry.
    """
    reasons = []
    if best_epoch <= max(warmup_epochs, 1):
        reasons.append(
            f"best epoch {best_epoch}, at or before the warm-up's end (warmup_epochs "
            f"{warmup_epochs}) or the first epoch"
        )
    if train_kappa < LEARNED_KAPPA:
        reasons.append(f"training kappa {train_kappa:.3f} < {LEARNED_KAPPA}")
    for split, classes in predicted.items():
        if len(classes) and len(set(classes)) == 1:
            reasons.append(f"class {classes[0]} predicted for every {split} visit")
    return reasons


def learning_verdict(task: BranchFold, probs: pd.DataFrame, fit: dict) -> dict:
    """``learned`` and ``not_learned_reasons`` (:func:`not_learned_reasons`) of the trained
    branch, from its visit probabilities ``probs`` and its training record ``fit``."""
    table = probs.merge(task.rows()[[ID, LABEL]], on=ID, validate="one_to_one")
    indices = table[prob_columns(task.classes)].to_numpy().argmax(axis=1)
    truth = label_indices(table[LABEL], task.classes)
    train = (table["split"] == "train").to_numpy()
    train_kappa = kappa(truth[train], indices[train], len(task.classes))
    predicted = np.asarray(task.classes)[indices]
    by_split = {
        split: list(predicted[(table["split"] == split).to_numpy()]) for split in ("train", "val")
    }
    phase = fit["phases"][fit["best_phase"] - 1]
    reasons = not_learned_reasons(
        phase["best_epoch"], task.settings.get("warmup_epochs", 0), train_kappa, by_split
    )
    return {"learned": not reasons, "not_learned_reasons": reasons}


def warn_if_not_learned(verdict: dict, modality: str, place: str) -> None:
    """Log a WARNING naming the branch and its partition when it learned nothing, and why."""
    if not verdict["learned"]:
        log.warning(
            "%s branch (%s) learned nothing from its images: %s; its contrasts do not measure "
            "what the images carry (raise modalities.%s.epochs or patience, or check the images)",
            modality,
            place,
            "; ".join(verdict["not_learned_reasons"]),
            modality,
        )


def log_feature_source(task: BranchFold) -> None:
    """State whether the branch's head trains on cached features, and if not, why."""
    if task.settings.get("backbone", SMALL_CNN) == SMALL_CNN:
        return
    if task.features is not None:
        log.info(
            "Feature cache: %d views x %d variants x %d features (%s, weights %s, sha256 %s...)",
            *task.features.features.shape,
            task.features.sidecar["backbone"],
            task.features.sidecar["weights_source"] or "randomly initialised",
            task.features.sidecar["backbone_sha256"][:12],
        )
    else:
        reason = no_cache_reason(task.settings) or "none was given to this job"
        log.info("No feature cache for %s: %s; the branch trains on pixels", task.modality, reason)


def train_stage(
    task: BranchFold, checkpoint_path: Path, history_path: Path, threads: int, place: str
):
    """An image job, fold or final (``place``: ``repeat 1, fold 2`` or ``final``, for the log):
    configure TensorFlow, train the branch alone, predict every view; return (model, visit
    probabilities, view probabilities, the job's record: best epoch, whether the branch learned
    (:func:`learning_verdict`), training throughput and how TensorFlow ran)."""
    runtime = configure_tensorflow(task.settings["intra_op_threads"], threads, task.seed)
    log_feature_source(task)
    model, fit = train_branch(task, checkpoint_path, history_path)
    probs, view_probs = branch_probabilities(model, task)
    verdict = learning_verdict(task, probs, fit)
    warn_if_not_learned(verdict, task.modality, place)
    return model, probs, view_probs, {**fit, **verdict, "runtime": {"threads": threads, **runtime}}
