from pathlib import Path

from fusion_dag.artifacts import read_tsv, write_text, write_tsv
from fusion_dag.bundle import choose_combination, load_bundle, load_calibration
from fusion_dag.card import copy_card
from fusion_dag.joblog import job_log
from fusion_dag.predict import prediction_summary, score_table, with_prediction_sets
from fusion_dag.predict_table import read_new_samples
from fusion_dag.report import external_metrics

with job_log(snakemake.log[0]) as log:
    bundle = snakemake.input.bundle
    spec = load_bundle(bundle)
    members = choose_combination(spec, snakemake.params.combination)
    coverage = snakemake.params.coverage
    # Refused before any model is loaded when the bundle cannot make the sets.
    calibration = load_calibration(bundle, spec, "+".join(members)) if coverage else None
    samples = read_new_samples(snakemake.input.samples, spec)
    predictions = score_table(
        bundle,
        spec,
        members,
        samples,
        read_tsv(snakemake.input.images),
        (snakemake.params.intra_op_threads, snakemake.threads),
    )
    if coverage:
        predictions = with_prediction_sets(predictions, calibration, spec["classes"], coverage)
    evaluation = snakemake.params.evaluation
    metrics = external_metrics(
        predictions, members, spec["classes"], evaluation, snakemake.params.seed
    )
    write_tsv(predictions, snakemake.output.predictions)
    write_tsv(metrics, snakemake.output.metrics)
    write_text(prediction_summary(predictions, metrics, members, bundle), snakemake.output.summary)
    card = copy_card(snakemake.params.card_folders, Path(snakemake.output.predictions).parent)
    if card is None:
        log.info("No model card beside bundle %s: none copied", bundle)
    else:
        log.info("Model card of the bundle copied from %s", card)
