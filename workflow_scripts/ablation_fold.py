import pandas as pd

from fusion_dag.ablation import ablation_fold
from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.image import configure_tensorflow, load_cache
from fusion_dag.joblog import job_log
from fusion_dag.metadata import load_pipeline

with job_log(snakemake.log[0]):
    configure_tensorflow(snakemake.threads, snakemake.params.seed)
    images, positions = load_cache(snakemake.input.cache, snakemake.input.ids)
    records = ablation_fold(
        read_tsv(snakemake.input.samples),
        read_tsv(snakemake.input.folds),
        read_tsv(snakemake.input.metadata),
        load_pipeline(snakemake.input.model),
        images,
        positions,
        int(snakemake.wildcards.fold),
        snakemake.wildcards.combination.split("+")[1],
        snakemake.params.classes,
        snakemake.params.settings,
        snakemake.params.metadata_weight,
        snakemake.params.seed,
    )
    table = pd.DataFrame(records)
    table.insert(0, "combination", snakemake.wildcards.combination)
    write_tsv(table, snakemake.output.metrics)
