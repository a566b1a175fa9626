from fusion_dag.artifacts import read_json, read_tsv
from fusion_dag.figures import plot_learning_curves, save_figure
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]):
    records = {(record["repeat"], record["fold"]): record for record in snakemake.params.fold_files}
    histories = {place: read_tsv(record["history"]) for place, record in records.items()}
    metrics = {place: read_json(record["metrics"]) for place, record in records.items()}
    figure = plot_learning_curves(
        histories, metrics, snakemake.wildcards.modality, snakemake.params.warmup
    )
    save_figure(figure, snakemake.output[0])
