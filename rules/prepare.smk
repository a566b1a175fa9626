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
    threads: job_resources("prepare")["threads"]
    resources:
        mem_mb=job_resources("prepare")["mem_mb"],
        runtime=job_resources("prepare")["runtime"],
    params:
        image_dir=image_dir,
        columns=config["columns"],
        classes=config["classes"],
        modalities=MODALITIES,
        missing_images=config["missing_images"],
    script:
        "../workflow_scripts/prepare.py"


rule folds:
    input:
        samples="results/prepared/samples.tsv",
    output:
        folds="results/folds.tsv",
    log:
        "logs/folds/folds.log",
    conda:
        "../envs/tabular.yaml"
    threads: job_resources("folds")["threads"]
    resources:
        mem_mb=job_resources("folds")["mem_mb"],
        runtime=job_resources("folds")["runtime"],
    params:
        folds=config["cv"]["folds"],
        seed=config["cv"]["seed"],
        classes=config["classes"],
    script:
        "../workflow_scripts/folds.py"


rule provenance:
    input:
        table=config["samples"],
        images="results/prepared/images.tsv",
    output:
        provenance="results/provenance.json",
    log:
        "logs/provenance/provenance.log",
    conda:
        "../envs/tabular.yaml"
    threads: job_resources("provenance")["threads"]
    resources:
        mem_mb=job_resources("provenance")["mem_mb"],
        runtime=job_resources("provenance")["runtime"],
    params:
        config=config,
        workflow_dir=workflow.basedir,
    script:
        "../workflow_scripts/provenance.py"
