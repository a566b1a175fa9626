import pandas as pd

from fusion_dag.artifacts import write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.prepare import prepare_inputs
from fusion_dag.views import VIEW_COUNT_COLUMNS

with job_log(snakemake.log[0]):
    samples, views, counts = prepare_inputs(
        snakemake.params.samples,
        snakemake.params.columns,
        snakemake.params.classes,
        snakemake.params.modalities,
        snakemake.params.missing_images,
        ignored_columns=snakemake.params.ignored_columns,
        scaled=snakemake.params.scaled,
        na_values=snakemake.params.na_values,
    )
    write_tsv(pd.DataFrame(counts, columns=list(VIEW_COUNT_COLUMNS)), snakemake.output.view_counts)
    write_tsv(views, snakemake.output.images)
    write_tsv(samples, snakemake.output.samples)
