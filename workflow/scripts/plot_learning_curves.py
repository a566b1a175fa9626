from fusion_dag.artifacts import read_tsv
from fusion_dag.figures import plot_learning_curves, save_figure
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]):
    histories = {
        tuple(partition): read_tsv(path)
        for partition, path in zip(
            snakemake.params.partitions, snakemake.input.histories, strict=True
        )
    }
    figure = plot_learning_curves(histories, snakemake.wildcards.modality)
    save_figure(figure, snakemake.output[0])
