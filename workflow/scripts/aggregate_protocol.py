import pandas as pd

from fusion_dag.artifacts import read_tsv, write_text, write_tsv
from fusion_dag.joblog import job_log
from fusion_dag.protocol import (
    choices_table,
    oof_records,
    protocol_markdown,
    protocol_oofs,
    protocol_table,
    screen_tables,
    screened_counts,
)
from fusion_dag.report import readable_table

with job_log(snakemake.log[0]) as log:
    member_probs = {}
    for record in snakemake.params.member_files:
        place = (record["repeat"], record["fold"])
        member_probs.setdefault(record["member"], {})[place] = read_tsv(record["probs"])
    screen_probs, screened = {}, []
    for record in snakemake.params.screen_files:
        screen_probs[record["repeat"]] = screen_tables(read_tsv(record["probs"]))
        screened.append(read_tsv(record["screened"]).assign(repeat=record["repeat"]))
    settings = snakemake.params.settings
    classes, evaluation = snakemake.params.classes, snakemake.params.evaluation
    oofs, choices = protocol_oofs(
        snakemake.params.combinations,
        member_probs,
        screen_probs,
        read_tsv(snakemake.input.folds),
        settings["weights"],
        settings["validation_fraction"],
        settings["seeds"],
        classes,
    )
    counts = screened_counts(pd.concat(screened, ignore_index=True)) if screened else {}
    table = protocol_table(oofs, choices, counts, classes, evaluation, snakemake.params.seed)
    write_tsv(oof_records(oofs), snakemake.output.oof)
    write_tsv(choices_table(choices), snakemake.output.choices)
    write_tsv(table, snakemake.output.table)
    write_text(protocol_markdown(table, evaluation["confidence"]), snakemake.output.markdown)
    log.info("Protocol (leaky rows optimistic):\n%s", readable_table(table))
