# The final models: every stage fit on all labelled patients, under the same V3 contract.
rule final_metadata:
    input:
        samples="results/prepared/samples.tsv",
    output:
        model="results/final/metadata/model.skops",
        probs="results/final/metadata/probs.tsv",
    log:
        "logs/final_metadata/final_metadata.log",
    benchmark:
        "benchmarks/final_metadata/final_metadata.tsv"
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
        "../scripts/final_metadata.py"


# With fusion.learn: every labelled row's inner out-of-fold forest probabilities, which the
# final fusion learns on (the final forest's own probabilities are in-sample).
rule final_metadata_inner:
    input:
        samples="results/prepared/samples.tsv",
    output:
        probs="results/final/metadata/inner_probs.tsv",
    log:
        "logs/final_metadata/final_metadata_inner.log",
    benchmark:
        "benchmarks/final_metadata/final_metadata_inner.tsv"
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
        "../scripts/final_metadata_inner.py"


# The image branch alone on every row; early stopping on an inner patient-grouped split.
rule final_image:
    input:
        unpack(backbone_weights_input(lambda wildcards: wildcards.modality)),
        unpack(feature_inputs),
        cache="results/prepared/images/{modality}.npy",
        views="results/prepared/{modality}_views.tsv",
        samples="results/prepared/samples.tsv",
    output:
        checkpoint="results/final/image/{modality}/checkpoint.weights.h5",
        sidecar="results/final/image/{modality}/checkpoint.json",
        probs="results/final/image/{modality}/probs.tsv",
        view_probs="results/final/image/{modality}/view_probs.tsv",
        history="results/final/image/{modality}/history.tsv",
        metrics="results/final/image/{modality}/metrics.json",
    log:
        "logs/final_image/{modality}.log",
    benchmark:
        "benchmarks/final_image/{modality}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        classes=config["classes"],
        settings=lambda wildcards: MODALITY_SETTINGS[wildcards.modality],
        seed=config["cv"]["seed"],
    script:
        "../scripts/final_image.py"


# Loads each final checkpoint by layer name, freezes and verifies it, as the fold fusions do.
rule final_fusion:
    input:
        unpack(
            lambda wildcards: jobs.final_fusion_inputs(
                config, COMBINATIONS[wildcards.combination]
            )
        ),
        samples="results/prepared/samples.tsv",
    output:
        probs="results/final/fusion/{combination}/probs.tsv",
        metrics="results/final/fusion/{combination}/metrics.json",
    log:
        "logs/final_fusion/{combination}.log",
    benchmark:
        "benchmarks/final_fusion/{combination}.tsv"
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
        "../scripts/final_fusion.py"


# What applying the models needs besides the models: columns, feature types, preprocessing.
rule model_spec:
    input:
        samples="results/prepared/samples.tsv",
    output:
        spec="results/final/model_spec.json",
    log:
        "logs/model_spec/model_spec.log",
    # Before the final models: predict checks a new table against this spec first.
    priority: 50
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        columns=config["columns"],
        classes=config["classes"],
        modalities=jobs.spec_modalities(config, MODALITIES),
        combinations=COMBINATIONS,
        fusion=config["fusion"],
        na_values=config["na_values"],
    script:
        "../scripts/model_spec.py"


rule bundle:
    input:
        unpack(
            lambda wildcards: jobs.bundle_inputs(
                COMBINATIONS, MODALITIES, config["predict"]["coverage"]
            )
        ),
        unpack(samples_input),
        spec="results/final/model_spec.json",
        samples="results/prepared/samples.tsv",
        fusion_metrics=expand(
            "results/final/fusion/{combination}/metrics.json",
            combination=COMBINATIONS,
        ),
        images="results/prepared/images.tsv",
    output:
        bundle=directory(DEFAULT_BUNDLE),
    log:
        "logs/bundle/bundle.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        modalities=list(MODALITIES),
        classes=config["classes"],
        allow_collapsed=config["final"]["allow_collapsed"],
        combinations=list(COMBINATIONS),
        coverage=config["predict"]["coverage"],
        config={key: value for key, value in config.items() if key != "predict"},
        workflow_dir=workflow.basedir,
    script:
        "../scripts/bundle.py"


# The model card: what the bundle is for, its data, cross-validated performance and known
# limits. Beside the bundle folder (a directory() output holds no other rule's file), so the
# bundle and predict never wait for the cross-validation; final_models builds it.
rule model_card:
    input:
        unpack(card_options),
        bundle=DEFAULT_BUNDLE,
        headline="results/fusion_results.tsv",
        comparisons="results/comparisons.tsv",
        samples="results/prepared/samples.tsv",
        images="results/prepared/images.tsv",
    output:
        markdown="results/final/model_card.md",
        json="results/final/model_card.json",
    log:
        "logs/model_card/model_card.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        evaluation=config["evaluation"],
    script:
        "../scripts/model_card.py"
