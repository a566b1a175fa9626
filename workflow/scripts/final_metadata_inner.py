from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.metadata import final_inner_probabilities

with job_log(snakemake.log[0]):
    probs = final_inner_probabilities(
        read_tsv(snakemake.input.samples),
        snakemake.params.classes,
        snakemake.params.settings,
        snakemake.params.seed,
        snakemake.threads,
    )
    write_tsv(probs, snakemake.output.probs)
