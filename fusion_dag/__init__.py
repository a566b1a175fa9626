"""fusion-dag: metadata + image fusion for ordinal wound classification, one module per stage.

Stages: prepare, folds, metadata, image, fusion, evaluate, report (and demo for the synthetic
data set). Rule scripts in ``workflow_scripts/`` unpack Snakemake's inputs and call these.
"""
