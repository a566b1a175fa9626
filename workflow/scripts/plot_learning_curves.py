from fusion_dag.artifacts import read_tsv
from fusion_dag.figures import plot_learning_curves, save_figure
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]):
    histories = {
        (record["repeat"], record["fold"]): read_tsv(record["history"])
        for record in snakemake.params.fold_files
    }
    figure = plot_learning_curves(histories, snakemake.wildcards.modality)
    save_figure(figure, snakemake.output[0])
