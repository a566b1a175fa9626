import numpy as np

from fusion_dag.artifacts import read_tsv
from fusion_dag.evaluate import repeat_arrays
from fusion_dag.figures import plot_confusion_matrices, save_figure
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]):
    classes = snakemake.params.classes
    pooled = {}
    for name, path in zip(snakemake.params.combinations, snakemake.input.oof, strict=True):
        arrays = repeat_arrays(read_tsv(path), classes)
        truth = np.concatenate([t for _, t, _ in arrays])
        predicted = np.concatenate([p.argmax(axis=1) for _, _, p in arrays])
        pooled[name] = (truth, predicted)
    save_figure(plot_confusion_matrices(pooled, classes), snakemake.output[0])
