from fusion_dag.artifacts import read_tsv
from fusion_dag.cache import load_cache
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]):
    # Imported here, once the job log holds stderr: TensorFlow prints while it loads.
    from fusion_dag.branch import configure_tensorflow
    from fusion_dag.figures import plot_heatmap_grid, save_figure
    from fusion_dag.heatmaps import modality_heatmaps, write_heatmaps

    params = snakemake.params
    configure_tensorflow(params.intra_op_threads, snakemake.threads, params.seed)
    images, views = load_cache(snakemake.input.cache, snakemake.input.views)
    modality = snakemake.wildcards.modality
    rows, pictures = modality_heatmaps(
        images,
        views,
        read_tsv(snakemake.input.folds),
        params.fold_files,
        {
            "modality": modality,
            "settings": params.settings,
            "classes": params.classes,
            "visits": params.visits,
            "seed": params.seed,
        },
    )
    write_heatmaps(rows, pictures, snakemake.output.heatmaps)
    save_figure(plot_heatmap_grid(rows, pictures, modality), snakemake.output.grid)
