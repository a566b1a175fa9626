"""fusion-dag: metadata + image fusion for ordinal wound classification, one module per stage.

Stages: prepare, folds, metadata, cache, image, checkpoint, fusion, evaluate, report,
provenance (and demo for the synthetic data set). The rule scripts beside this package
(``workflow/scripts/``) unpack Snakemake's inputs and call these.
"""
