from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.screen import screen_fold

with job_log(snakemake.log[0]):
    screened = screen_fold(
        read_tsv(snakemake.input.samples),
        read_tsv(snakemake.input.folds),
        int(snakemake.wildcards.fold),
        snakemake.params.classes,
        snakemake.params.settings,
        snakemake.params.seed,
        snakemake.threads,
    )
    write_tsv(screened, snakemake.output.screen)
