rule prepare:
    input:
        table=config["samples"],
    output:
        samples="results/prepared/samples.tsv",
        images="results/prepared/images.tsv",
    log:
        "logs/prepare/prepare.log",
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        image_dir=image_dir,
        columns=config["columns"],
        classes=config["classes"],
        modalities=MODALITIES,
        ignored_columns=IGNORED_IMAGE_COLUMNS,
        # Whether (not how) each modality is scaled: a new range never re-runs prepare.
        scaled=[m for m in MODALITIES if modality_settings(m)["value_range"]],
        missing_images=config["missing_images"],
    script:
        "../scripts/prepare.py"


rule folds:
    input:
        samples="results/prepared/samples.tsv",
    output:
        folds="results/folds.tsv",
    log:
        "logs/folds/folds.log",
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        folds=config["cv"]["folds"],
        seed=config["cv"]["seed"],
        classes=config["classes"],
    script:
        "../scripts/folds.py"
