from fusion_dag.artifacts import read_tsv
from fusion_dag.figures import plot_fold_kappa, save_figure
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]):
    figure = plot_fold_kappa(read_tsv(snakemake.input.per_fold), snakemake.params.combinations)
    save_figure(figure, snakemake.output[0])
