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
    threads: job_resources("metadata")["threads"]
    resources:
        mem_mb=job_resources("metadata")["mem_mb"],
        runtime=job_resources("metadata")["runtime"],
    params:
        classes=config["classes"],
        settings=config["metadata_model"],
        seed=config["cv"]["seed"],
    script:
        "../workflow_scripts/metadata.py"
