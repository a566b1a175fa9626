from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.explain import forest_importance, importance_table, leak_warnings, screen_columns
from fusion_dag.figures import plot_importance, save_figure
from fusion_dag.joblog import job_log
from fusion_dag.metadata import load_pipeline

with job_log(snakemake.log[0]) as log:
    params = snakemake.params
    samples = read_tsv(snakemake.input.samples)
    per_fold = forest_importance(
        samples,
        read_tsv(snakemake.input.folds),
        params.fold_files,
        load_pipeline,
        {
            "classes": params.classes,
            "permutations": params.permutations,
            "seed": params.seed,
            "n_jobs": snakemake.threads,
        },
    )
    screen = screen_columns(
        samples, params.classes, params.settings, params.folds, params.seed, snakemake.threads
    )
    importance = importance_table(per_fold, screen)
    warnings = leak_warnings(importance)
    for line in warnings:
        log.warning(line)
    write_tsv(per_fold, snakemake.output.per_fold)
    write_tsv(importance, snakemake.output.table)
    save_figure(plot_importance(importance, warnings), snakemake.output.plot)
