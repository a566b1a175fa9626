from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.folds import without_screened
from fusion_dag.joblog import job_log
from fusion_dag.metadata import fit_probabilities, fold_probabilities, save_pipeline

with job_log(snakemake.log[0]):
    # With label_screen, the fold's screened training visits leave its training.
    screened = read_tsv(snakemake.input.screen) if snakemake.input.get("screen") else None
    samples = without_screened(read_tsv(snakemake.input.samples), screened)
    probs, pipeline = fold_probabilities(
        samples,
        without_screened(read_tsv(snakemake.input.folds), screened),
        int(snakemake.wildcards.fold),
        snakemake.params.classes,
        snakemake.params.settings,
        snakemake.params.seed,
        snakemake.threads,
    )
    save_pipeline(pipeline, snakemake.output.model)
    write_tsv(
        fit_probabilities(pipeline, samples, probs, snakemake.params.classes),
        snakemake.output.fit_probs,
    )
    write_tsv(probs, snakemake.output.probs)
