from fusion_dag.artifacts import read_tsv
from fusion_dag.figures import plot_weight_sweep, save_figure
from fusion_dag.joblog import job_log
from fusion_dag.weights import METADATA, member_weights

with job_log(snakemake.log[0]):
    figure = plot_weight_sweep(
        read_tsv(snakemake.input.sweep),
        member_weights(snakemake.wildcards.combination.split("+"), **snakemake.params.weights)[
            METADATA
        ],
        snakemake.wildcards.combination,
    )
    save_figure(figure, snakemake.output[0])
