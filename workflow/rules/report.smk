# Each fold's training history of the modality, and its metrics (best epoch, learned or not).
HISTORY_FOLD_FILES = partition_files(
    history="results/image/{modality}/repeat{repeat}/fold{fold}/history.tsv",
    metrics="results/image/{modality}/repeat{repeat}/fold{fold}/metrics.json",
)


rule diagnostics:
    input:
        folds="results/folds.tsv",
        metadata=files_of(diagnostic_fold_files, "metadata"),
        image=files_of(diagnostic_fold_files, "image"),
    output:
        sweep="results/diagnostics/{combination}/weight_sweep.tsv",
        agreement="results/diagnostics/{combination}/branch_agreement.tsv",
    log:
        "logs/diagnostics/{combination}.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        classes=config["classes"],
        weights=pair_weight_settings,
        fold_files=diagnostic_fold_files,
    script:
        "../scripts/diagnostics.py"


rule plot_fold_kappa:
    input:
        per_fold="results/fusion_results_per_fold.tsv",
    output:
        report(
            "results/plots/fold_kappa.png",
            caption="../report/fold_kappa.rst",
            category="Results",
        ),
    log:
        "logs/plot_fold_kappa/plot_fold_kappa.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        combinations=list(COMBINATIONS),
    script:
        "../scripts/plot_fold_kappa.py"


rule plot_confusion_matrices:
    input:
        oof=expand("results/fusion/{combination}/oof.tsv", combination=COMBINATIONS),
    output:
        report(
            "results/plots/confusion_matrices.png",
            caption="../report/confusion_matrices.rst",
            category="Results",
        ),
    log:
        "logs/plot_confusion_matrices/plot_confusion_matrices.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        combinations=list(COMBINATIONS),
        classes=config["classes"],
    script:
        "../scripts/plot_confusion_matrices.py"


rule plot_learning_curves:
    input:
        histories=files_of(HISTORY_FOLD_FILES, "history"),
        metrics=files_of(HISTORY_FOLD_FILES, "metrics"),
    output:
        report(
            "results/plots/learning_curves_{modality}.png",
            caption="../report/learning_curves.rst",
            category="Image branch",
        ),
    log:
        "logs/plot_learning_curves/{modality}.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        fold_files=HISTORY_FOLD_FILES,
        warmup=image_setting("warmup_epochs"),
    script:
        "../scripts/plot_learning_curves.py"


rule plot_weight_sweep:
    input:
        sweep="results/diagnostics/{combination}/weight_sweep.tsv",
    output:
        report(
            "results/plots/weight_sweep_{combination}.png",
            caption="../report/weight_sweep.rst",
            category="Diagnostics",
        ),
    log:
        "logs/plot_weight_sweep/{combination}.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        weights=pair_weight_settings,
    script:
        "../scripts/plot_weight_sweep.py"


# A record of a completed run: written once the results it describes exist.
rule provenance:
    input:
        unpack(samples_input),
        images="results/prepared/images.tsv",
        headline=rules.aggregate_results.output.table,
        metrics=lambda wildcards: jobs.run_metrics(config, COMBINATIONS, MODALITIES),
        plan=ANALYSIS_PLAN_FILE,
    output:
        provenance="results/provenance.json",
    log:
        "logs/provenance/provenance.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=config,
        workflow_dir=workflow.basedir,
    script:
        "../scripts/provenance.py"


# The headline's intervals, the paired differences and calibration, as figures.
rule plot_evaluation:
    input:
        headline=rules.aggregate_results.output.table,
        comparisons=rules.aggregate_results.output.comparisons,
        oof=expand("results/fusion/{combination}/oof.tsv", combination=COMBINATIONS),
    output:
        intervals=report(
            "results/plots/kappa_intervals.png",
            caption="../report/kappa_intervals.rst",
            category="Results",
        ),
        comparisons=report(
            "results/plots/comparisons.png",
            caption="../report/comparisons_plot.rst",
            category="Results",
        ),
        reliability=report(
            "results/plots/reliability.png",
            caption="../report/reliability.rst",
            category="Results",
        ),
        roc=report(
            "results/plots/roc_curves.png",
            caption="../report/roc_curves.rst",
            category="Results",
        ),
    log:
        "logs/plot_evaluation/plot_evaluation.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        combinations=list(COMBINATIONS),
        classes=config["classes"],
        primary=config["evaluation"]["primary"],
    script:
        "../scripts/plot_evaluation.py"


# What a clinical journal asks (TRIPOD+AI): participant flow, Table 1, calibration slopes,
# decision curves and subgroups, from the prepared tables and out-of-fold predictions alone.
rule clinical_report:
    input:
        samples="results/prepared/samples.tsv",
        images="results/prepared/images.tsv",
        view_counts="results/prepared/view_counts.tsv",
        folds="results/folds.tsv",
        oof=expand("results/fusion/{combination}/oof.tsv", combination=COMBINATIONS),
        calibration="results/report/calibration.tsv",
    output:
        participants=report(
            "results/report/participants.tsv",
            caption="../report/participants.rst",
            category="Clinical report",
        ),
        table1=report(
            "results/report/table1.tsv",
            caption="../report/table1.rst",
            category="Clinical report",
        ),
        decision_curves=report(
            "results/report/decision_curves.tsv",
            caption="../report/decision_curves.rst",
            category="Clinical report",
        ),
        subgroups=report(
            "results/report/subgroups.tsv",
            caption="../report/subgroups.rst",
            category="Clinical report",
        ),
        flow=report(
            "results/report/flow.png",
            caption="../report/participants.rst",
            category="Clinical report",
        ),
        decision_plot=report(
            "results/report/decision_curves.png",
            caption="../report/decision_curves.rst",
            category="Clinical report",
        ),
        calibration_plot=report(
            "results/report/calibration.png",
            caption="../report/calibration.rst",
            category="Clinical report",
        ),
    log:
        "logs/clinical_report/clinical_report.log",
    localrule: True
    conda:
        "../envs/tabular.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        combinations=COMBINATIONS,
        classes=config["classes"],
        evaluation=config["evaluation"],
        seed=config["cv"]["seed"],
    script:
        "../scripts/clinical_report.py"
