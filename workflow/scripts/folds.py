from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.folds import assign_folds
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    folds = assign_folds(
        read_tsv(snakemake.input.samples),
        snakemake.params.folds,
        snakemake.params.seed,
        snakemake.params.classes,
    )
    write_tsv(folds, snakemake.output.folds)
    for fold, rows in folds.groupby("fold"):
        log.info("Fold %d: %d rows, %d groups", fold, len(rows), rows["group"].nunique())
