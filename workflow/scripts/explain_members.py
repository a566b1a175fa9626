import pandas as pd

from fusion_dag.artifacts import read_tsv, write_tsv
from fusion_dag.explain import contributions, member_drop_table, review_table
from fusion_dag.joblog import job_log
from fusion_dag.report import member_oofs

with job_log(snakemake.log[0]):
    params = snakemake.params
    classes, fusion = params.classes, params.fusion
    folds = read_tsv(snakemake.input.folds)
    oofs = {
        name: read_tsv(path)
        for name, path in zip(params.oof_names, snakemake.input.oof, strict=True)
    }
    member_files = pd.DataFrame(params.member_files, columns=["member", "repeat", "fold", "probs"])
    members = member_oofs(member_files, read_tsv, folds, classes)
    parts = [
        contributions(combination, members, folds, classes, fusion).assign(combination=name)
        for name, combination in params.combinations.items()
    ]
    write_tsv(
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["combination"]),
        snakemake.output.contributions,
    )
    write_tsv(
        member_drop_table(
            params.combinations, oofs, members, classes, fusion, params.evaluation, params.seed
        ),
        snakemake.output.member_drop,
    )
    write_tsv(
        review_table(oofs[params.review], params.review_members, members, classes),
        snakemake.output.review,
    )
