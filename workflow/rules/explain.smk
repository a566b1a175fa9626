# Each fold's fitted forest, whose permutation importance explain_importance measures.
IMPORTANCE_FOLD_FILES = partition_files(
    model="results/metadata/repeat{repeat}/fold{fold}/model.skops"
)


# Permutation importance of each metadata column on every fold's held-out visits, and the
# leak screen (a column that alone predicts the label).
rule explain_importance:
    input:
        samples="results/prepared/samples.tsv",
        folds="results/folds.tsv",
        models=files_of(IMPORTANCE_FOLD_FILES, "model"),
    output:
        per_fold="results/explain/importance_per_fold.tsv",
        table=report(
            "results/explain/importance.tsv",
            caption="../report/importance.rst",
            category="Explanations",
        ),
        plot=report(
            "results/explain/importance.png",
            caption="../report/importance.rst",
            category="Explanations",
        ),
    log:
        "logs/explain/importance.log",
    benchmark:
        "benchmarks/explain/importance.tsv"
    conda:
        "../envs/tabular.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        classes=config["classes"],
        permutations=config["explain"]["permutations"],
        seed=config["cv"]["seed"],
        folds=config["cv"]["folds"],
        settings=config["metadata_model"],
        fold_files=IMPORTANCE_FOLD_FILES,
    script:
        "../scripts/explain_importance.py"


# Each member's exact part in every fused prediction, the kappa lost without it, and the
# visits the review combination gets wrong in every repeat (no model is retrained).
rule explain_members:
    input:
        folds="results/folds.tsv",
        oof=expand(
            "results/fusion/{combination}/oof.tsv",
            combination=sorted({*FUSIONS, REVIEW}),
        ),
        members=files_of(explain_member_files, "probs"),
    output:
        contributions="results/explain/contributions.tsv",
        member_drop=report(
            "results/explain/member_drop.tsv",
            caption="../report/member_drop.rst",
            category="Explanations",
        ),
        review=report(
            "results/explain/review.tsv",
            caption="../report/review.rst",
            category="Explanations",
        ),
    log:
        "logs/explain/members.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        combinations=FUSIONS,
        oof_names=sorted({*FUSIONS, REVIEW}),
        review=REVIEW,
        review_members=COMBINATIONS[REVIEW],
        classes=config["classes"],
        fusion=config["fusion"],
        evaluation=config["evaluation"],
        seed=config["cv"]["seed"],
        member_files=explain_member_files,
    script:
        "../scripts/explain_members.py"


# Grad-CAM heatmaps of each fold's branch (repeat 1) on validation visits, and their grid.
rule explain_heatmaps:
    input:
        cache="results/prepared/images/{modality}.npy",
        views="results/prepared/{modality}_views.tsv",
        folds="results/folds.tsv",
        checkpoints=files_of(heatmap_fold_files, "checkpoint"),
        sidecars=files_of(heatmap_fold_files, "sidecar"),
        probs=files_of(heatmap_fold_files, "probs"),
        view_probs=files_of(heatmap_fold_files, "view_probs"),
        metrics=files_of(heatmap_fold_files, "metrics"),
    output:
        heatmaps=directory("results/explain/heatmaps/{modality}"),
        grid=report(
            "results/explain/heatmaps_{modality}.png",
            caption="../report/heatmaps.rst",
            category="Explanations",
        ),
    log:
        "logs/explain/heatmaps_{modality}.log",
    benchmark:
        "benchmarks/explain/heatmaps_{modality}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        classes=config["classes"],
        settings=lambda wildcards: MODALITY_SETTINGS[wildcards.modality],
        visits=config["explain"]["visits"],
        seed=config["cv"]["seed"],
        intra_op_threads=config["image_model"]["intra_op_threads"],
        fold_files=heatmap_fold_files,
    script:
        "../scripts/explain_heatmaps.py"


# predict.explain: each new visit's member contributions and Grad-CAM heatmaps.
rule predict_explain:
    input:
        unpack(predict_bundle_input),
        predictions="results/predict/predictions.tsv",
        images="results/predict/images.tsv",
    output:
        contributions="results/predict/contributions.tsv",
        heatmaps=directory("results/predict/heatmaps"),
    log:
        "logs/predict_explain/predict_explain.log",
    conda:
        "../envs/tensorflow.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        combination=config["predict"]["combination"],
        intra_op_threads=config["image_model"]["intra_op_threads"],
    script:
        "../scripts/predict_explain.py"
