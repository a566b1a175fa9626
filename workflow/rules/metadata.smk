rule metadata:
    input:
        samples="results/prepared/samples.tsv",
        folds="results/folds.tsv",
    output:
        probs="results/metadata/fold{fold}/probs.tsv",
        model="results/metadata/fold{fold}/model.skops",
    log:
        "logs/metadata/fold{fold}.log",
    conda:
        "../envs/tabular.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        classes=config["classes"],
        settings=config["metadata_model"],
        seed=config["cv"]["seed"],
    script:
        "../scripts/metadata.py"
