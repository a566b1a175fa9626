from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.metadata import final_pipeline, save_pipeline

with job_log(snakemake.log[0]):
    pipeline, probs = final_pipeline(
        read_tsv(snakemake.input.samples),
        snakemake.params.classes,
        snakemake.params.settings,
        snakemake.params.seed,
        snakemake.threads,
    )
    save_pipeline(pipeline, snakemake.output.model)
    write_tsv(probs, snakemake.output.probs)
