from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.folds import assign_folds
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    repeat = int(snakemake.wildcards.repeat)
    folds = assign_folds(
        read_tsv(snakemake.input.samples),
        snakemake.params.folds,
        snakemake.params.seed,
        snakemake.params.classes,
    )
    folds.insert(3, "repeat", repeat)
    write_tsv(folds, snakemake.output.folds)
    log.info("Repeat %d: partition seed %d", repeat, snakemake.params.seed)
    for fold, rows in folds.groupby("fold"):
        log.info("Fold %d: %d rows, %d groups", fold, len(rows), rows["group"].nunique())
