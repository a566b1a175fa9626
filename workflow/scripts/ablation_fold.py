import pandas as pd

from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.cache import load_cache
from fusion_dag.joblog import job_log

with job_log(snakemake.log[0]):
    # Imported here, once the job log holds stderr: TensorFlow prints while it loads.
    from fusion_dag.ablation import ablation_fold
    from fusion_dag.branch import configure_tensorflow
    from fusion_dag.image import BranchFold
    from fusion_dag.weights import METADATA, member_weights

    settings = snakemake.params.settings
    configure_tensorflow(settings["intra_op_threads"], snakemake.threads, snakemake.params.seed)
    members = snakemake.wildcards.combination.split("+")
    task = BranchFold(
        *load_cache(snakemake.input.cache, snakemake.input.views),
        folds=read_tsv(snakemake.input.folds),
        fold=int(snakemake.wildcards.fold),
        modality=members[1],
        classes=snakemake.params.classes,
        settings=settings,
        seed=snakemake.params.seed,
    )
    records, probs = ablation_fold(
        task,
        read_tsv(snakemake.input.metadata),
        read_tsv(snakemake.input.fit_probs),
        member_weights(members, **snakemake.params.weights)[METADATA],
    )
    write_tsv(probs, snakemake.output.probs)
    table = pd.DataFrame(records)
    table.insert(0, "combination", snakemake.wildcards.combination)
    table.insert(1, "repeat", int(snakemake.wildcards.repeat))
    write_tsv(table, snakemake.output.metrics)
