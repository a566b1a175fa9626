from fusion_dag.artifacts import read_tsv
from fusion_dag.joblog import job_log
from fusion_dag.report import plot_weight_sweep, save_figure

with job_log(snakemake.log[0]):
    figure = plot_weight_sweep(
        read_tsv(snakemake.input.sweep),
        snakemake.params.metadata_weight,
        snakemake.wildcards.combination,
    )
    save_figure(figure, snakemake.output[0])
