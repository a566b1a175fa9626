from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.clinical import (
    check_subgroup_columns,
    decision_curves,
    participants_table,
    shown_combinations,
    subgroup_table,
    table_one,
)
from fusion_dag.figures import (
    plot_calibration_slopes,
    plot_decision_curves,
    plot_participant_flow,
    save_figure,
)
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]):
    combinations, classes = snakemake.params.combinations, snakemake.params.classes
    evaluation = snakemake.params.evaluation
    samples = read_tsv(snakemake.input.samples)
    subgroups = evaluation.get("subgroups") or []
    check_subgroup_columns(samples, subgroups, snakemake.input.samples)
    oofs = {
        name: read_tsv(path) for name, path in zip(combinations, snakemake.input.oof, strict=True)
    }
    shown = shown_combinations(combinations, evaluation["primary"])
    participants = participants_table(
        samples,
        read_tsv(snakemake.input.images),
        read_tsv(snakemake.input.view_counts),
        read_tsv(snakemake.input.folds),
        oofs,
        classes,
    )
    curves = decision_curves(oofs, evaluation.get("decisions"), shown)
    by_level = subgroup_table(
        oofs, samples, subgroups, shown, classes, evaluation, snakemake.params.seed
    )
    write_tsv(participants, snakemake.output.participants)
    write_tsv(table_one(samples, classes), snakemake.output.table1)
    write_tsv(curves, snakemake.output.decision_curves)
    write_tsv(by_level, snakemake.output.subgroups)
    save_figure(plot_participant_flow(participants), snakemake.output.flow)
    save_figure(plot_decision_curves(curves), snakemake.output.decision_plot)
    save_figure(
        plot_calibration_slopes(read_tsv(snakemake.input.calibration)),
        snakemake.output.calibration_plot,
    )
