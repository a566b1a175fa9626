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
    threads: job_resources("fusion")["threads"]
    resources:
        mem_mb=job_resources("fusion")["mem_mb"],
        runtime=job_resources("fusion")["runtime"],
    params:
        classes=config["classes"],
        settings=fusion_settings,
    script:
        "../workflow_scripts/fusion.py"


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
    threads: job_resources("aggregate_results")["threads"]
    resources:
        mem_mb=job_resources("aggregate_results")["mem_mb"],
        runtime=job_resources("aggregate_results")["runtime"],
    params:
        combinations=list(COMBINATIONS),
        classes=config["classes"],
    script:
        "../workflow_scripts/aggregate_results.py"
