"""The analysis plan: which contrasts answer the run's question, on which visits, at which level
and by which test, written to ``results/analysis_plan.json`` before any model is trained.

Why: a verdict is only as good as the family it was adjusted in. If the primary family grew or
shrank with whatever else a run happened to train (image-only fusions under
``combinations: all``), or its level moved after the results were seen, Holm's guarantee would
hold for a question nobody asked beforehand. The plan is fixed by the config alone, written
first, kept with every earlier plan it replaced, and a run whose plan differs from the one on
record says so (docs/evaluation.md, "The analysis plan").

The primary family is each fusion holding ``evaluation.primary`` against it, on the complete
visits (those with every member of the fusion): the question is whether an image adds where it
exists. The same contrasts on every visit (scored as ``predict`` scores a visit that lacks an
image) are a secondary family: they also measure the missing-modality policy.
"""

import json
from pathlib import Path

from fusion_dag.artifacts import InputError

# The power at which detectable_gain is stated (fusion_dag.inference computes it). The plan
# module holds it so that Snakemake's start-up, which reads the plan, imports no statistics.
POWER = 0.80

# Comparison families, each Holm-adjusted on its own: the pre-specified question, the same
# contrasts on every visit, and the rest (each fusion against its other members, and a fusion
# that does not hold the primary against it).
PRIMARY, ALL_VISITS, SECONDARY = "primary", "secondary, all visits", "secondary"
# Which visits a headline or comparison row scores: those with every member of the
# combination, or every visit with the members it has (as predict scores it).
COMPLETE, ALL = "complete", "all"


def holds(combination: str, primary: str) -> bool:
    """Whether ``combination`` is a fusion that adds members to ``primary`` (a nested
    contrast: every member of the primary is one of its members)."""
    members = combination.split("+")
    return combination != primary and set(primary.split("+")) <= set(members)


def contrasts(names: list, primary: str) -> list:
    """Every contrast a run with the combinations ``names`` makes, in table order: per fusion
    (a combination of several members), (``combination``, ``versus``, ``family``, ``rows``).

    A fusion holding ``primary`` is compared with it on the complete visits (:data:`PRIMARY`)
    and on every visit (:data:`ALL_VISITS`, made only where some visits lack a member); a fusion
    that does not hold it (an image-only fusion) is compared with it in :data:`SECONDARY`, so
    the primary family does not depend on what else was run. Then each fusion against each of
    its other members that was run (:data:`SECONDARY`)."""
    planned = []
    for name in names:
        members = name.split("+")
        if len(members) < 2:
            continue
        if primary in names and name != primary:
            if holds(name, primary):
                planned += [(name, primary, PRIMARY, COMPLETE), (name, primary, ALL_VISITS, ALL)]
            else:
                planned.append((name, primary, SECONDARY, COMPLETE))
        planned += [
            (name, member, SECONDARY, COMPLETE)
            for member in members
            if member in names and member != primary
        ]
    return planned


def contrast_name(combination: str, versus: str) -> str:
    """A contrast as the plan names it: ``metadata+thermal_map vs metadata``."""
    return f"{combination} vs {versus}"


def analysis_plan(config: dict, combinations: dict) -> dict:
    """The plan of a run from its (validated) config and selected ``combinations`` (name ->
    members): the primary family, alpha, the test rule and the cross-validation design.

    Only what the config fixes, nothing measured: the plan exists before any data is read."""
    evaluation, cv = config["evaluation"], config["cv"]
    primary = evaluation["primary"]
    planned = contrasts(list(combinations), primary)

    def named(family):
        return [contrast_name(c, v) for c, v, f, _ in planned if f == family]

    values = cv["folds"] * cv["repeats"]
    plan = {
        "question": f"Does each fusion holding {primary} add to it?",
        "primary_family": {
            "family": PRIMARY,
            "primary": primary,
            "contrasts": named(PRIMARY),
            "visits": COMPLETE,
            "visits_are": "the visits with every member of the fusion",
        },
        "secondary_families": {
            ALL_VISITS: {
                "contrasts": named(ALL_VISITS),
                "visits": ALL,
                "visits_are": "every visit, scored with the members it has as predict scores "
                "it; only where some visits lack a member of the fusion",
            },
            SECONDARY: {"contrasts": named(SECONDARY), "visits": COMPLETE},
        },
        "confidence": evaluation["confidence"],
        "alpha": round(1.0 - evaluation["confidence"], 12),
        "test": {
            "metric": "unweighted Cohen's kappa, the J paired per-fold differences",
            "name": "corrected repeated k-fold cv test (Bouckaert and Frank 2004)",
            "variance": "s^2 (1/J + n_test/n_train) (Nadeau and Bengio 2003)",
            "values": values,
            "degrees_of_freedom": values - 1,
            "sides": 2,
            "multiplicity": "Holm within each family",
            "verdict": "better or worse when the Holm p is below alpha, else inconclusive",
            "detectable_gain_power": POWER,
        },
        "cv": {
            "folds": cv["folds"],
            "repeats": cv["repeats"],
            "seed": cv["seed"],
            "grouped_by": config["columns"]["group"],
        },
    }
    # As read back from the JSON file, so a plan compares equal to the one on record.
    return json.loads(json.dumps(plan))


def recorded_plan(path) -> dict | None:
    """The plan record in ``path`` (``results/analysis_plan.json``), None when there is none;
    a file that is not one is an error naming it, never silently replaced."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record["plan"], record["written"], record["earlier"]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"{path} is not an analysis plan record ({error!r}): move it away to start a new "
            "plan, or restore it"
        ) from None
    return record


def plan_record(on_record: dict | None, plan: dict, now: str) -> dict:
    """What ``results/analysis_plan.json`` holds after a run with ``plan`` at time ``now``:
    the record on file unchanged when its plan is this plan; otherwise this plan, written now,
    with the earlier plans it replaced (``earlier``: each with when it was written and
    replaced), so a changed family, level or test stays visible after the results were seen."""
    if on_record is not None and on_record["plan"] == plan:
        return on_record
    earlier = []
    if on_record is not None:
        replaced = {"written": on_record["written"], "replaced": now, "plan": on_record["plan"]}
        earlier = [*on_record["earlier"], replaced]
    return {"written": now, "plan": plan, "earlier": earlier}


def flat(record, prefix: str = "") -> dict:
    """A nested plan as dotted key -> value (lists kept whole)."""
    if not isinstance(record, dict):
        return {prefix: record}
    items = {}
    for key, value in record.items():
        items |= flat(value, f"{prefix}.{key}" if prefix else key)
    return items


def plan_changes(earlier: dict, plan: dict) -> list:
    """What differs between two plans, one ``key: old -> new`` per changed entry (a list of
    contrasts as its names), in the newer plan's key order."""
    old, new = flat(earlier), flat(plan)
    keys = [*new, *(key for key in old if key not in new)]
    return [
        f"{key}: {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}"
        for key in keys
        if old.get(key) != new.get(key)
    ]


def plan_notice(record: dict) -> str:
    """A sentence for the report when the plan on record replaced an earlier one (empty when it
    never did): when, and what changed from the plan it replaced."""
    if not record["earlier"]:
        return ""
    last = record["earlier"][-1]
    changes = "; ".join(plan_changes(last["plan"], record["plan"]))
    count = len(record["earlier"])
    return (
        f"The analysis plan changed after an earlier run: the plan written {record['written']} "
        f"replaced the one written {last['written']} ({changes}). The verdicts follow the "
        f"current plan; results/analysis_plan.json keeps the {count} earlier "
        f"plan{'s' if count > 1 else ''}."
    )
