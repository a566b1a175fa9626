rule image_cache:
    input:
        images="results/prepared/images.tsv",
    output:
        cache="results/prepared/images/{modality}.npy",
        views="results/prepared/{modality}_views.tsv",
    log:
        "logs/image_cache/{modality}.log",
    benchmark:
        "benchmarks/image_cache/{modality}.tsv"
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        size=image_setting("size"),
        channels=image_setting("channels"),
        value_range=image_setting("value_range"),
        box_margin=lambda wildcards: MODALITIES[wildcards.modality].get("box_margin", 0),
    script:
        "../scripts/image_cache.py"


# Per modality whose frozen keras.applications backbone can be cached (FEATURE_MODALITIES):
# its pooled features of every view (and flip), once for every fold, repeat and final model.
rule features:
    input:
        unpack(backbone_weights_input(lambda wildcards: wildcards.modality)),
        cache="results/prepared/images/{modality}.npy",
        views="results/prepared/{modality}_views.tsv",
    output:
        features="results/features/{modality}/features.npy",
        backbone="results/features/{modality}/backbone.weights.h5",
        sidecar="results/features/{modality}/features.json",
    log:
        "logs/features/{modality}.log",
    benchmark:
        "benchmarks/features/{modality}.tsv"
    wildcard_constraints:
        modality="|".join(re.escape(name) for name in FEATURE_MODALITIES) or "(?!)",
    conda:
        "../envs/tensorflow.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        classes=config["classes"],
        settings=lambda wildcards: jobs.feature_settings(config, wildcards.modality),
    script:
        "../scripts/features.py"


rule image:
    input:
        unpack(backbone_weights_input(lambda wildcards: wildcards.modality)),
        unpack(feature_inputs),
        unpack(screen_input),
        cache="results/prepared/images/{modality}.npy",
        views="results/prepared/{modality}_views.tsv",
        folds="results/folds/repeat{repeat}.tsv",
    output:
        checkpoint="results/image/{modality}/repeat{repeat}/fold{fold}/checkpoint.weights.h5",
        sidecar="results/image/{modality}/repeat{repeat}/fold{fold}/checkpoint.json",
        probs="results/image/{modality}/repeat{repeat}/fold{fold}/probs.tsv",
        view_probs="results/image/{modality}/repeat{repeat}/fold{fold}/view_probs.tsv",
        history="results/image/{modality}/repeat{repeat}/fold{fold}/history.tsv",
        metrics="results/image/{modality}/repeat{repeat}/fold{fold}/metrics.json",
    log:
        "logs/image/{modality}/repeat{repeat}/fold{fold}.log",
    benchmark:
        "benchmarks/image/{modality}/repeat{repeat}/fold{fold}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        classes=config["classes"],
        settings=lambda wildcards: MODALITY_SETTINGS[wildcards.modality],
        seed=repeat_seed,
    script:
        "../scripts/image.py"
