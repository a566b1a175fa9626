rule metadata:
    input:
        samples="results/prepared/samples.tsv",
        folds="results/folds/repeat{repeat}.tsv",
    output:
        probs="results/metadata/repeat{repeat}/fold{fold}/probs.tsv",
        model="results/metadata/repeat{repeat}/fold{fold}/model.skops",
        fit_probs="results/metadata/repeat{repeat}/fold{fold}/fit_probs.tsv",
    log:
        "logs/metadata/repeat{repeat}/fold{fold}.log",
    benchmark:
        "benchmarks/metadata/repeat{repeat}/fold{fold}.tsv"
    conda:
        "../envs/tabular.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        classes=config["classes"],
        settings=config["metadata_model"],
        seed=repeat_seed,
    script:
        "../scripts/metadata.py"
