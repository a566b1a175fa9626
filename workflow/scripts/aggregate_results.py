import pandas as pd

from fusion_dag.artifacts import read_json, read_tsv, write_text, write_tsv
from fusion_dag.clinical import calibration_table, with_calibration
from fusion_dag.joblog import job_log
from fusion_dag.plan import ALL
from fusion_dag.report import (
    all_visits_oofs,
    comparisons_markdown,
    comparisons_table,
    front_page,
    headline_table,
    member_oofs,
    per_fold_table,
    readable_comparisons,
    readable_headline,
    readable_table,
    results_markdown,
    with_branches_learned,
)

with job_log(snakemake.log[0]) as log:
    records = [read_json(path) for path in snakemake.input.metrics]
    for record in records:
        record.pop("weights")
        record.pop("runtime", None)
    combinations = snakemake.params.combinations
    learning = pd.DataFrame(
        [
            {**record, "learned": read_json(record["metrics"])["learned"]}
            for record in snakemake.params.image_files
        ],
        columns=["member", "repeat", "fold", "metrics", "learned"],
    )
    per_fold = with_branches_learned(per_fold_table(records), combinations, learning)
    oofs = {
        name: read_tsv(path) for name, path in zip(combinations, snakemake.input.oof, strict=True)
    }
    classes, evaluation = snakemake.params.classes, snakemake.params.evaluation
    folds = read_tsv(snakemake.input.folds)
    member_files = pd.DataFrame(
        snakemake.params.member_files, columns=["member", "repeat", "fold", "probs"]
    )
    members = member_oofs(member_files, read_tsv, folds, classes)
    fusion = snakemake.params.fusion
    all_visits = all_visits_oofs(combinations, oofs, members, folds, classes, fusion)
    seed = snakemake.params.seed
    headline = headline_table(per_fold, oofs, classes, evaluation, seed, all_visits)
    scored = [(row.combination, row.rows) for row in headline.itertuples(index=False)]
    calibration = calibration_table(
        [(name, rows, all_visits[name] if rows == ALL else oofs[name]) for name, rows in scored],
        classes,
        evaluation["confidence"],
    )
    headline = with_calibration(headline, calibration)
    write_tsv(calibration, snakemake.output.calibration)
    comparisons = comparisons_table(oofs, classes, evaluation, seed, all_visits)
    write_tsv(per_fold, snakemake.output.per_fold)
    write_tsv(headline, snakemake.output.table)
    plan = read_json(snakemake.input.plan)
    write_text(results_markdown(headline, comparisons, evaluation, plan), snakemake.output.markdown)
    write_tsv(comparisons, snakemake.output.comparisons)
    confidence = evaluation["confidence"]
    write_text(comparisons_markdown(comparisons, confidence), snakemake.output.comparisons_markdown)
    if snakemake.output.get("front_page"):
        # Without evaluation.temporal (with it, rule front_page writes the page).
        write_text(
            front_page(headline, comparisons, snakemake.params.run, confidence, plan),
            snakemake.output.front_page,
        )
    log.info("Headline table:\n%s", readable_table(readable_headline(headline, confidence)))
    log.info(
        "Paired comparisons:\n%s", readable_table(readable_comparisons(comparisons, confidence))
    )
