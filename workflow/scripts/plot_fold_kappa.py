from fusion_dag.artifacts import read_tsv
from fusion_dag.joblog import job_log
from fusion_dag.report import plot_fold_kappa, save_figure

with job_log(snakemake.log[0]):
    figure = plot_fold_kappa(read_tsv(snakemake.input.per_fold), snakemake.params.combinations)
    save_figure(figure, snakemake.output[0])
