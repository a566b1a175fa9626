import pandas as pd

from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]) as log:
    folds = pd.concat([read_tsv(path) for path in snakemake.input.folds], ignore_index=True)
    write_tsv(folds, snakemake.output.folds)
    log.info("%d partitions of %d rows", folds["repeat"].nunique(), folds["id"].nunique())
