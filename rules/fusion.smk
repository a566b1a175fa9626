rule fusion:
    input:
        unpack(fusion_inputs),
        samples="results/prepared/samples.tsv",
    output:
        probs="results/fusion/{combination}/fold{fold}/probs.tsv",
        metrics="results/fusion/{combination}/fold{fold}/metrics.json",
    log:
        "logs/fusion/{combination}/fold{fold}.log",
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        classes=config["classes"],
        weights=fusion_weights,
    script:
        "../workflow_scripts/fusion.py"


rule fusion_results:
    input:
        metrics=expand(
            "results/fusion/{combination}/fold{fold}/metrics.json",
            combination=COMBINATIONS,
            fold=FOLDS,
        ),
    output:
        per_fold="results/fusion_results_per_fold.tsv",
        table="results/fusion_results.tsv",
        markdown="results/fusion_results.md",
    log:
        "logs/fusion_results/fusion_results.log",
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        combinations=list(COMBINATIONS),
        classes=config["classes"],
    script:
        "../workflow_scripts/fusion_results.py"
