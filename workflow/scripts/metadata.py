from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.metadata import fold_probabilities, save_pipeline

with job_log(snakemake.log[0]):
    probs, pipeline = fold_probabilities(
        read_tsv(snakemake.input.samples),
        read_tsv(snakemake.input.folds),
        int(snakemake.wildcards.fold),
        snakemake.params.classes,
        snakemake.params.settings,
        snakemake.params.seed,
        snakemake.threads,
    )
    save_pipeline(pipeline, snakemake.output.model)
    write_tsv(probs, snakemake.output.probs)
