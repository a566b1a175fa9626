import pandas as pd

from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.protocol import screen_repeat

with job_log(snakemake.log[0]):
    # The repeat's pooled out-of-fold forest probabilities: each fold's validation rows.
    oof = pd.concat(
        [read_tsv(path).query("split == 'val'") for path in snakemake.input.metadata],
        ignore_index=True,
    )
    screened, probs = screen_repeat(
        read_tsv(snakemake.input.samples),
        read_tsv(snakemake.input.folds),
        oof,
        snakemake.params.classes,
        snakemake.params.settings,
        snakemake.params.seed,
        snakemake.threads,
    )
    write_tsv(screened, snakemake.output.screened)
    write_tsv(probs, snakemake.output.probs)
