from fusion_dag.artifacts import read_tsv
from fusion_dag.figures import (
    plot_comparisons,
    plot_kappa_intervals,
    plot_reliability,
    plot_roc_curves,
    save_figure,
)
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]):
    oofs = {
        name: read_tsv(path)
        for name, path in zip(snakemake.params.combinations, snakemake.input.oof, strict=True)
    }
    comparisons = read_tsv(snakemake.input.comparisons)
    save_figure(
        plot_kappa_intervals(read_tsv(snakemake.input.headline)), snakemake.output.intervals
    )
    save_figure(plot_comparisons(comparisons), snakemake.output.comparisons)
    save_figure(plot_reliability(oofs, snakemake.params.classes), snakemake.output.reliability)
    primary = snakemake.params.primary
    fusions = comparisons.loc[comparisons["primary"], "combination"].tolist()
    shown = ([primary] if primary in oofs else []) + fusions
    save_figure(
        plot_roc_curves(oofs, shown or list(oofs), snakemake.params.classes), snakemake.output.roc
    )
