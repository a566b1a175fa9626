import numpy as np

from fusion_dag.artifacts import read_tsv
from fusion_dag.evaluate import validation_predictions
from fusion_dag.joblog import job_log
from fusion_dag.report import plot_confusion_matrices, save_figure

with job_log(snakemake.log[0]):
    classes = snakemake.params.classes
    labels = read_tsv(snakemake.input.folds)
    n_folds = len(snakemake.input.probs) // len(snakemake.params.combinations)
    pooled = {}
    for index, name in enumerate(snakemake.params.combinations):
        paths = snakemake.input.probs[index * n_folds : (index + 1) * n_folds]
        pairs = [validation_predictions(read_tsv(p), labels, classes) for p in paths]
        pooled[name] = tuple(np.concatenate(part) for part in zip(*pairs, strict=True))
    save_figure(plot_confusion_matrices(pooled, classes), snakemake.output[0])
