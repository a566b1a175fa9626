"""The workflow's settings: command-line values typed, schema errors stated as one line, and
the checks across keys that a JSON schema cannot express.

Why a package module rather than code in ``common.smk``: these rules decide what a run trains
(which combinations, which modalities, each modality's settings), so they need unit tests, and
a Snakefile's functions cannot be imported by one. ``common.smk`` calls them at start-up and
turns a :class:`ConfigError` into Snakemake's own one-line error.
"""

import itertools
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from fusion_dag.backbones import SMALL_CNN
from fusion_dag.weights import METADATA


class ConfigError(ValueError):
    """A setting that cannot run, stated in one line naming the key."""


def load_schema(path: Path) -> dict:
    """The config's JSON schema (YAML)."""
    with open(path) as handle:
        return yaml.safe_load(handle)


def schema_branch(value, schema: dict, root: dict) -> dict:
    """The part of ``schema`` that describes ``value``: ``$ref`` resolved against ``root``'s
    ``$defs``, and of ``oneOf`` alternatives the one for a mapping when ``value`` is one.
    """
    if "$ref" in schema:
        referenced = root["$defs"][schema["$ref"].split("/")[-1]]
        properties = {
            **referenced.get("properties", {}),
            **schema.get("properties", {}),
        }
        schema = {**referenced, **schema, "properties": properties}
    if "oneOf" in schema and isinstance(value, dict):
        mappings = [schema_branch(value, option, root) for option in schema["oneOf"]]
        mappings = [option for option in mappings if option.get("type") == "object"]
        for option in mappings:
            if all(key in value for key in option.get("required", [])):
                return option
        if mappings:
            return mappings[0]
    return schema


def accepted_types(schema: dict) -> set:
    """The JSON types a schema (or any of its ``oneOf`` alternatives) accepts."""
    types = schema.get("type", [])
    types = {types} if isinstance(types, str) else set(types)
    for allowed in [schema["const"]] if "const" in schema else schema.get("enum", []):
        types.add("string" if isinstance(allowed, str) else "number")
    for option in schema.get("oneOf", []):
        types |= accepted_types(option)
    return types


def command_line_values(value, schema: dict, root: dict | None = None):
    """``value`` with strings parsed as YAML wherever the schema expects no string.

    Snakemake hands nested ``--config`` values over as text (``--config
    'fusion={metadata_weight: 0.6}'`` gives ``'0.6'``), so ``0.6``, ``0``, ``null`` or
    ``[[metadata]]`` are parsed the way a config file would have read them. A text that
    parses to a string (``all``, ``frozen``) stays as it is.
    """
    root = schema if root is None else root
    schema = schema_branch(value, schema, root)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            key: command_line_values(
                item,
                properties.get(key, extra if isinstance(extra, dict) else {}),
                root,
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [command_line_values(item, schema.get("items", {}), root) for item in value]
    types = accepted_types(schema)
    if isinstance(value, str) and types and types != {"string"}:
        parsed = yaml.safe_load(value)
        return value if isinstance(parsed, str) else parsed
    return value


def schema_error(config: dict, schema: dict) -> str:
    """The most relevant schema violation of ``config`` as one line naming the key."""
    cause = best_match(Draft202012Validator(schema).iter_errors(config))
    key = ".".join(str(part) for part in cause.absolute_path) or "(top level)"
    return f"Invalid config key '{key}': {cause.message}"


def class_names(classes: list) -> list:
    """The class names as text: ``classes: [1, 2, 3]`` means the labels ``1``, ``2``, ``3``
    (a whole float such as ``2.0`` is written ``2``), so numeric labels need no quoting."""
    names = [str(int(c)) if isinstance(c, float) and c.is_integer() else str(c) for c in classes]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"Invalid config key 'classes': {classes} names class {', '.join(repeated)} twice"
        )
    return names


def check_columns(columns: dict) -> None:
    """The id, group and label columns must be three different columns."""
    roles = {key: columns.get(key) for key in ("id", "group", "label") if columns.get(key)}
    for first, second in itertools.combinations(roles, 2):
        if roles[first] == roles[second]:
            raise ConfigError(
                f"Invalid config key 'columns.{second}': {roles[second]!r} is also columns."
                f"{first}; the id, group and label columns must be three different columns"
            )


def selected_combinations(config: dict) -> dict:
    """Name -> members of each combination to run, metadata first, images in config order.

    Default: metadata alone, each image alone, metadata + each image; ``all``: every non-empty
    subset of metadata and the modalities (31 for metadata and four modalities). Selection is
    a list so a --configfile can narrow it (Snakemake merges mappings but replaces lists).
    """
    modalities = list(config["modalities"])
    order = [METADATA, *modalities]
    if config["combinations"] == "all":
        chosen = [
            list(members)
            for size in range(1, len(order) + 1)
            for members in itertools.combinations(order, size)
        ]
    else:
        chosen = config["combinations"] or (
            [[METADATA]] + [[m] for m in modalities] + [[METADATA, m] for m in modalities]
        )
    combinations = {}
    for members in chosen:
        unknown = [m for m in members if m not in order]
        if unknown:
            raise ConfigError(
                f"Invalid config key 'combinations': {unknown} is neither 'metadata' nor a "
                f"modality in 'modalities' ({', '.join(modalities) or 'none'})"
            )
        ordered = sorted(members, key=order.index)
        combinations["+".join(ordered)] = ordered
    return combinations


# The keys of a modality's entry that say where its images are, not how its branch is built.
LAYOUT_KEYS = ("column", "images", "path", "keys", "box", "box_margin", "image_dir")
DEFAULT_BOX_MARGIN = 0.25


def modality_column(config: dict, name: str) -> str | None:
    """The samples-table column holding a modality's image paths (None for an image table)."""
    entry = config["modalities"][name]
    return entry if isinstance(entry, str) else entry.get("column")


def modality_layout(config: dict, name: str) -> dict:
    """Where a modality's images are: ``{column, image_dir}`` for one path per visit in a
    samples column, or ``{images, path, keys, box, box_margin, image_dir}`` for an image table
    with one row per view. Defaults filled in: ``keys`` ``[columns.id]``, ``box`` none,
    ``box_margin`` 0.25, ``image_dir`` the top-level one."""
    entry = config["modalities"][name]
    entry = {"column": entry} if isinstance(entry, str) else entry
    image_dir = entry.get("image_dir") or config["image_dir"]
    if "column" in entry:
        return {"column": entry["column"], "image_dir": image_dir}
    keys = entry.get("keys") or [config["columns"].get("id")]
    if keys == [None]:
        raise ConfigError(
            f"Invalid config key 'modalities.{name}.keys': columns.id is null (rows are "
            "numbered), so the image table cannot be joined by it; name the columns of both "
            "tables that identify a visit, e.g. keys: [patient_id, visit]"
        )
    return {
        "images": entry["images"],
        "path": entry["path"],
        "keys": list(keys),
        "box": list(entry["box"]) if entry.get("box") else None,
        "box_margin": entry.get("box_margin", DEFAULT_BOX_MARGIN),
        "image_dir": image_dir,
    }


def predict_image_dirs(config: dict) -> tuple[str, dict]:
    """The folders a new table's image paths are relative to, as training resolves them:
    (the folder for every modality, modality -> its own folder).

    ``predict.image_dir`` null: each modality's own ``image_dir`` where it has one, else the
    top-level ``image_dir``, so a training config whose views live in their own folder predicts
    a table laid out like its own without a new setting. A string: that folder for every
    modality (the new visits' images are elsewhere). A mapping ``{modality: folder}``: those
    modalities there, the others as with null.
    """
    own = {
        name: entry["image_dir"]
        for name, entry in config["modalities"].items()
        if isinstance(entry, dict) and entry.get("image_dir")
    }
    given = config["predict"]["image_dir"]
    if isinstance(given, str):
        return given, {}
    unknown = sorted(set(given or {}) - set(config["modalities"]))
    if unknown:
        raise ConfigError(
            f"Invalid config key 'predict.image_dir': {', '.join(unknown)} is not a modality "
            f"(modalities: {', '.join(config['modalities'])}); fix the name"
        )
    return config["image_dir"], {**own, **(given or {})}


def check_layouts(config: dict) -> None:
    """A modality mapping with both a samples ``column`` and an image table (``images``).

    Checked before the schema because it is almost always a merge, not a choice: a
    ``--configfile`` mapping merges key by key into the defaults' modality of the same name,
    and the demo's ``thermal_map`` is an image table. The schema would only say that the
    mapping matches no alternative.
    """
    for name, entry in (config.get("modalities") or {}).items():
        if isinstance(entry, dict) and "column" in entry and "images" in entry:
            raise ConfigError(
                f"Invalid config key 'modalities.{name}': it has both a samples column "
                f"(column: {entry['column']!r}) and an image table (images: "
                f"{entry['images']!r}); a --configfile merges into the default modality of "
                "the same name (the demo reads thermal_map from an image table): give your "
                "modality a name of its own, or use one of the two forms"
            )


def modality_settings(config: dict, name: str) -> dict:
    """A modality's image settings: ``image_model`` with the modality's own overrides (its
    layout keys, :data:`LAYOUT_KEYS`, are not settings of the branch).

    ``backbone_weights: none`` (the word) means no pretrained weights, like null.
    """
    entry = config["modalities"][name]
    overrides = {} if isinstance(entry, str) else entry
    settings = {
        **config["image_model"],
        **{key: value for key, value in overrides.items() if key not in LAYOUT_KEYS},
    }
    if str(settings.get("backbone_weights")).lower() == "none":
        settings["backbone_weights"] = None
    return settings


def setting_key(config: dict, name: str, key: str) -> str:
    """Where a modality's setting comes from, for error messages."""
    entry = config["modalities"][name]
    own = isinstance(entry, dict) and key in entry
    return f"modalities.{name}.{key}" if own else f"image_model.{key}"


def modalities_in_use(config: dict, combinations: dict) -> dict:
    """Modality -> its layout (:func:`modality_layout`), for the modalities some selected
    combination uses: only these are read, validated and trained."""
    return {
        name: modality_layout(config, name)
        for name in config["modalities"]
        if any(name in members for members in combinations.values())
    }


def check_image_settings(config: dict, modalities) -> None:
    """Image settings the schema cannot check alone, each error naming the key."""
    for name in modalities:
        settings = modality_settings(config, name)
        weights = settings["backbone_weights"]
        if settings["backbone"] == SMALL_CNN and weights is not None:
            raise ConfigError(
                f"Invalid config key '{setting_key(config, name, 'backbone_weights')}': "
                f"{weights!r} needs a keras.applications backbone; modality {name} uses "
                "small_cnn, which has no pretrained weights (set backbone_weights: null)"
            )
        if weights not in (None, "imagenet") and not Path(weights).is_file():
            raise ConfigError(
                f"Invalid config key '{setting_key(config, name, 'backbone_weights')}': "
                f"{weights} is not a file (give imagenet, null, or the path of a Keras "
                f".weights.h5 file of {settings['backbone']} built with include_top=False)"
            )
        value_range = settings["value_range"]
        if value_range is not None and value_range[0] >= value_range[1]:
            raise ConfigError(
                f"Invalid config key '{setting_key(config, name, 'value_range')}': "
                f"{list(value_range)} has low >= high; give [low, high] with low < high in "
                "the images' raw units"
            )
        warmup = settings.get("warmup_epochs", 0)
        if warmup >= settings["epochs"]:
            # Early stopping would never compare an epoch, and every fold would be reported as
            # a branch that learned nothing (image.not_learned_reasons).
            raise ConfigError(
                f"Invalid config key '{setting_key(config, name, 'warmup_epochs')}': {warmup} "
                f"warm-up epochs leave none of the {settings['epochs']} epochs for early "
                "stopping to judge; lower it or raise epochs"
            )
        if settings["size"] < 32 and settings["backbone"] != SMALL_CNN:
            raise ConfigError(
                f"Invalid config key '{setting_key(config, name, 'size')}': {settings['size']} "
                f"px is below the 32 px keras.applications backbones ({settings['backbone']}) "
                "accept"
            )


def check_fusion_weights(config: dict, combinations: dict) -> None:
    """``fusion.weights``, when given: one weight per member in use, summing to 1."""
    weights = config["fusion"].get("weights")
    if not weights:
        return
    used = sorted({member for members in combinations.values() for member in members})
    missing = [member for member in used if member not in weights]
    unknown = [member for member in weights if member not in [METADATA, *config["modalities"]]]
    problems = []
    if missing:
        problems.append(f"members without a weight {missing}")
    if unknown:
        problems.append(f"names that are neither metadata nor a modality {unknown}")
    if problems:
        raise ConfigError(f"Invalid config key 'fusion.weights': {'; '.join(problems)}")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"Invalid config key 'fusion.weights': the weights sum to {total:g}, not 1"
        )
    for name, members in combinations.items():
        if sum(weights[m] for m in members) <= 0:
            raise ConfigError(
                f"Invalid config key 'fusion.weights': combination {name} has total weight 0"
            )


def check_primary(config: dict, combinations: dict) -> None:
    """``evaluation.primary`` names a combination: members joined by ``+``, each metadata or
    a configured modality (a typo would otherwise leave the run without primary contrasts),
    and, when some combination fuses several members, one of the ``combinations`` run: the
    primary family (:mod:`fusion_dag.plan`) compares each fusion with it, so a run without it
    would train every model and answer nothing."""
    primary = config["evaluation"]["primary"]
    known = [METADATA, *config["modalities"]]
    unknown = [member for member in primary.split("+") if member not in known]
    if unknown:
        raise ConfigError(
            f"Invalid config key 'evaluation.primary': {primary!r} names {unknown}, neither "
            f"metadata nor a modality ({', '.join(known)}); write a combination's members "
            "joined by '+', e.g. metadata or metadata+thermal_map"
        )
    fusions = any(len(members) > 1 for members in combinations.values())
    if fusions and primary not in combinations:
        raise ConfigError(
            f"Invalid config key 'evaluation.primary': {primary!r} is not among the "
            f"combinations run ({', '.join(combinations)}); add it to 'combinations' or name "
            "one of them"
        )


def check_review(config: dict, combinations: dict) -> None:
    """``explain.review``, when set, is one of the combinations this run selects (review.tsv
    lists the visits that combination gets wrong in every repeat)."""
    review = config["explain"].get("review")
    if review and review not in combinations:
        raise ConfigError(
            f"Invalid config key 'explain.review': {review!r} is not among the combinations run "
            f"({', '.join(combinations)}); name one of them, or null for the fullest fusion"
        )


def review_combination(combinations: dict, primary: str, requested: str | None) -> str:
    """The fusion whose persistent errors are listed for review: ``explain.review`` when set,
    else the fusion with the most members among those holding ``evaluation.primary`` (the
    run's fullest fusion if none does); the first listed wins a tie."""
    if requested:
        return requested
    fusions = [name for name, members in combinations.items() if len(members) > 1]
    if not fusions:
        return next(iter(combinations))
    wanted = set(primary.split("+"))
    holding = [name for name in fusions if wanted <= set(combinations[name])] or fusions
    return max(holding, key=lambda name: len(combinations[name]))


def check_decisions(config: dict) -> None:
    """``evaluation.decisions`` names binary questions over the classes: each counts some, not
    all, of the configured classes positive (a decision curve of every class is treat-all)."""
    classes = [str(c) for c in config["classes"]]
    for name, positive in (config["evaluation"].get("decisions") or {}).items():
        unknown = [c for c in positive if str(c) not in classes]
        if unknown or not positive or len(set(map(str, positive))) == len(classes):
            raise ConfigError(
                f"Invalid config key 'evaluation.decisions.{name}': {positive!r} must list some "
                f"but not all of the classes {classes}"
                + (f"; {unknown} are not classes" if unknown else "")
                + " (config/config.yaml's decisions name the demo's classes: set your own, or "
                "null)"
            )


def check_subgroups(config: dict, header) -> None:
    """``evaluation.subgroups`` names metadata columns of the samples table (``header``: its
    column names): not its id, group or label column, nor one in ``columns.exclude`` (prepare
    leaves those out of the prepared table the report reads)."""
    columns = config["columns"]
    reserved = {columns.get("id"), columns["group"], columns["label"]}
    reserved |= set(columns.get("exclude") or [])
    wanted = config["evaluation"].get("subgroups") or []
    wrong = [c for c in wanted if c not in header or c in reserved]
    if wrong:
        usable = [c for c in header if c not in reserved]
        raise ConfigError(
            f"Invalid config key 'evaluation.subgroups': {wrong} are not metadata columns of the "
            f"samples table {config['samples']}; use any of {usable}, or [] (config/config.yaml "
            "lists the demo's columns)"
        )


def check_temporal(config: dict, header) -> None:
    """``evaluation.temporal.column`` names a column of the samples table (``header``) other
    than its id, group and label; it may be one the forest leaves out (``columns.exclude``),
    as a visit date usually is."""
    column = (config["evaluation"].get("temporal") or {}).get("column")
    if column is None:
        return
    columns = config["columns"]
    reserved = {columns.get("id"), columns["group"], columns["label"]}
    if column not in header or column in reserved:
        usable = [c for c in header if c not in reserved]
        raise ConfigError(
            f"Invalid config key 'evaluation.temporal.column': '{column}' is not a column of the "
            f"samples table {config['samples']} other than its id, patient and label; use one "
            f"of {usable} (a date or a number), or null to order patients by their first row"
        )
