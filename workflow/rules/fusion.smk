rule fusion:
    input:
        unpack(fusion_inputs),
        samples="results/prepared/samples.tsv",
    output:
        probs="results/fusion/{combination}/fold{fold}/probs.tsv",
        metrics="results/fusion/{combination}/fold{fold}/metrics.json",
    log:
        "logs/fusion/{combination}/fold{fold}.log",
    benchmark:
        "benchmarks/fusion/{combination}/fold{fold}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        classes=config["classes"],
        settings=fusion_settings,
    script:
        "../scripts/fusion.py"


rule aggregate_results:
    input:
        metrics=expand(
            "results/fusion/{combination}/fold{fold}/metrics.json",
            combination=COMBINATIONS,
            fold=FOLDS,
        ),
    output:
        per_fold="results/fusion_results_per_fold.tsv",
        table=report(
            "results/fusion_results.tsv",
            caption="../report/fusion_results.rst",
            category="Results",
        ),
        markdown="results/fusion_results.md",
    log:
        "logs/aggregate_results/aggregate_results.log",
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        combinations=list(COMBINATIONS),
        classes=config["classes"],
    script:
        "../scripts/aggregate_results.py"
