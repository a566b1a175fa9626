rule prepare:
    input:
        unpack(samples_input),
        unpack(image_table_inputs),
    output:
        samples="results/prepared/samples.tsv",
        images="results/prepared/images.tsv",
        view_counts=report(
            "results/prepared/view_counts.tsv",
            caption="../report/views.rst",
            category="Data",
        ),
    log:
        "logs/prepare/prepare.log",
    benchmark:
        "benchmarks/prepare/prepare.tsv"
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        samples=config["samples"],
        na_values=config["na_values"],
        columns=config["columns"],
        classes=config["classes"],
        # Where each modality's images are; not the box margin, which only the cache uses.
        modalities={
            m: {k: v for k, v in layout.items() if k != "box_margin"}
            for m, layout in MODALITIES.items()
        },
        # Path columns of configured modalities not in use: never metadata features either.
        ignored_columns=jobs.ignored_image_columns(config, MODALITIES),
        # Whether (not how) each modality is scaled: a new range never re-runs prepare.
        scaled=[m for m in MODALITIES if MODALITY_SETTINGS[m]["value_range"]],
        missing_images=config["missing_images"],
    script:
        "../scripts/prepare.py"


# One partition per repeat, in a file of its own: raising cv.repeats adds partitions and
# trains only their models.
rule folds:
    input:
        samples="results/prepared/samples.tsv",
    output:
        folds="results/folds/repeat{repeat}.tsv",
    log:
        "logs/folds/repeat{repeat}.log",
    # Repeat 0 is outside the cross-validation (the temporal split, rules/temporal.smk).
    wildcard_constraints:
        repeat=r"[1-9]\d*",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        folds=config["cv"]["folds"],
        seed=repeat_seed,
        classes=config["classes"],
    script:
        "../scripts/folds.py"


# The contract table of every partition: id, group, label, repeat, fold.
rule fold_table:
    input:
        folds=expand("results/folds/repeat{repeat}.tsv", repeat=REPEATS),
    output:
        folds="results/folds.tsv",
    log:
        "logs/fold_table/fold_table.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/fold_table.py"
