# Temporal validation (evaluation.temporal): the patients ordered in time, the later ones held
# out as fold 1 of repeat 0, outside the cross-validation; the fold stages fit on the earlier
# patients and score the later ones.
rule temporal_split:
    input:
        unpack(temporal_table_input),
        samples="results/prepared/samples.tsv",
    output:
        folds="results/folds/repeat0.tsv",
        patients="results/temporal/patients.tsv",
    log:
        "logs/temporal_split/temporal_split.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        temporal=config["evaluation"]["temporal"],
        na_values=config["na_values"],
    script:
        "../scripts/temporal_split.py"


rule temporal_results:
    input:
        probs=expand(
            "results/fusion/{combination}/repeat0/fold1/probs.tsv",
            combination=COMBINATIONS,
        ),
        folds="results/folds/repeat0.tsv",
        headline="results/fusion_results.tsv",
    output:
        temporal="results/temporal.tsv",
    log:
        "logs/temporal_results/temporal_results.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        combinations=list(COMBINATIONS),
        classes=config["classes"],
        evaluation=config["evaluation"],
        seed=config["cv"]["seed"],
    script:
        "../scripts/temporal_results.py"
