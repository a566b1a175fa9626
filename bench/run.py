"""Benchmarks: what running fusion-dag as a DAG saves, measured side by side in one run.

    python bench/run.py                 # the demo-size measurements, written to bench/RESULTS.md
    python bench/run.py --tiny          # a quick pass on a tiny config (CI keeps it working)
    python bench/run.py --scale study   # the original study's size (268 patients, ~890 visits)
    python bench/run.py --scale 4x --dry-reruns  # four times it; two reruns only planned

Every figure is a ratio of two timings taken in the same run on the same machine. Timings
under a minute are repeated (median and spread over --repeats runs). Nothing here asserts a
time: targets are printed next to the measurements, with whether this run met them.
"""

import argparse
import collections
import copy
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# The package lives beside the rule scripts, where Snakemake finds it too.
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

DEMO_PATIENTS = 160
# Patients of the demo generator at the original study's size (268 patients, about 890 visits)
# and at four times it; images at 128 px, the size a user of pretrained backbones would choose.
SCALES = {"study": 268, "4x": 4 * 268}
SCALE_IMAGE_SIZE = 128
# bench/RESULTS.md has a section per command; each run rewrites its own section only.
DEMO_HEADING = "## Demo size"


def snakemake(workdir: Path, *args: str, config: dict, cores: int = 2) -> tuple[float, dict]:
    """Run the workflow; return (wall seconds, rule -> count of the jobs it ran)."""
    configfile = workdir / "bench_config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]
    command += ["--directory", str(workdir), "--cores", str(cores), *args]
    command += ["--configfile", str(configfile)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{(result.stdout + result.stderr)[-3000:]}")
    rules = re.findall(r"^(?:local)?rule (\w+):$", result.stdout + result.stderr, re.M)
    return elapsed, dict(collections.Counter(rules))


def summary(values: list, unit: str = "s") -> str:
    """Median and spread (min to max) of repeated measurements."""
    if len(values) == 1:
        return f"{values[0]:.2f} {unit}"
    return f"{statistics.median(values):.2f} {unit} (min {min(values):.2f}, max {max(values):.2f})"


def fresh_dir(root: Path, name: str) -> Path:
    """An empty ``root/name``: a measurement starts from no results, never a previous run's."""
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def measure_rerun_costs(root: Path, config: dict, repeats: int) -> dict:
    """Figures 1 and 2: full run, fusion-weight rerun, no-op rerun, bare start-up."""
    workdir = fresh_dir(root, "incremental")
    full_time, full_jobs = snakemake(workdir, "fusion_results", config=config)
    weights = [0.5, 0.6, 0.55, 0.65, 0.45][:repeats]
    reruns, rerun_jobs = [], {}
    for weight in weights:
        changed = {**config, "fusion": {"metadata_weight": weight}}
        elapsed, rerun_jobs = snakemake(workdir, "fusion_results", config=changed)
        reruns.append(elapsed)
    noop = [snakemake(workdir, "fusion_results", config=changed)[0] for _ in range(repeats)]
    startup = [version_seconds() for _ in range(repeats)]
    return {
        "workdir": workdir,
        "full_time": full_time,
        "full_jobs": sum(full_jobs.values()),
        "rerun_times": reruns,
        "rerun_jobs": rerun_jobs,
        "noop_times": noop,
        "startup_times": startup,
    }


def plain_fit_throughput(workdir: Path, config: dict, fold: int, repeats: int) -> dict:
    """Figure 3: a plain Keras model.fit on the same arrays, model, batch size and epochs.

    The plain fit gets the same inner early-stopping rows as validation data (a validation
    pass per epoch is part of the method, not overhead) but none of the job's callbacks,
    metrics, class weights or checkpointing.
    """
    import pandas as pd

    from fusion_dag.artifacts import read_json, read_tsv
    from fusion_dag.branch import build_image_branch, configure_tensorflow
    from fusion_dag.cache import load_cache
    from fusion_dag.folds import inner_split, split_rows

    settings = config["image_model"]
    stage = workdir / f"results/image/thermal_map/repeat1/fold{fold}"
    job_metrics = read_json(stage / "metrics.json")
    epochs = len(pd.read_csv(stage / "history.tsv", sep="\t"))
    configure_tensorflow(settings["intra_op_threads"], 2, config["cv"]["seed"])
    import keras

    images, views = load_cache(
        workdir / "results/prepared/images/thermal_map.npy",
        workdir / "results/prepared/thermal_map_views.tsv",
    )
    folds = read_tsv(workdir / "results/folds/repeat1.tsv")
    folds = folds[folds["id"].isin(views["id"])]
    train = folds[split_rows(folds, fold) == "train"].reset_index(drop=True)
    held_out = inner_split(train, settings["validation_fraction"], config["cv"]["seed"])

    def arrays(rows):
        """Every view of ``rows``, unweighted."""
        chosen = views.reset_index().merge(rows[["id", "label"]], on="id")
        x = images[chosen["index"].to_numpy()]
        return x, chosen["label"].map(config["classes"].index).to_numpy()

    x, y = arrays(train[~held_out])
    validation = arrays(train[held_out])
    rates = []
    for _ in range(repeats):
        model = build_image_branch(
            "thermal_map", images.shape[1:], len(config["classes"]), settings
        )
        model.compile(
            keras.optimizers.Adam(settings["learning_rate"]), "sparse_categorical_crossentropy"
        )
        start = time.perf_counter()
        model.fit(
            x,
            y,
            validation_data=validation,
            epochs=epochs,
            batch_size=settings["batch_size"],
            verbose=0,
        )
        rates.append(len(x) * epochs / (time.perf_counter() - start))
    return {
        "job_rate": job_metrics["fit_images_per_second"],
        "plain_rates": rates,
        "epochs": epochs,
    }


def v2_fit_seconds(workdir: Path, config: dict, fold: int, epochs: int) -> float:
    """Figure 4: a V2-style fusion fit (image branch trained inside) for the same epochs."""
    from fusion_dag.ablation import train_joint
    from fusion_dag.artifacts import read_tsv
    from fusion_dag.cache import load_cache
    from fusion_dag.image import BranchFold

    task = BranchFold(
        *load_cache(
            workdir / "results/prepared/images/thermal_map.npy",
            workdir / "results/prepared/thermal_map_views.tsv",
        ),
        folds=read_tsv(workdir / "results/folds/repeat1.tsv"),
        fold=fold,
        modality="thermal_map",
        classes=config["classes"],
        settings={**config["image_model"], "epochs": epochs, "patience": epochs},
        seed=config["cv"]["seed"],
    )
    rf_probs = read_tsv(workdir / f"results/metadata/repeat1/fold{fold}/probs.tsv")
    start = time.perf_counter()
    train_joint(task, "V2", rf_probs, config["fusion"]["metadata_weight"])
    return time.perf_counter() - start


def benchmark_seconds(workdir: Path, rule_path: str) -> float:
    """Wall time Snakemake's benchmark directive recorded for one job."""
    lines = (workdir / "benchmarks" / rule_path).read_text().splitlines()
    return float(lines[1].split("\t")[0])


def v3_pair_seconds(workdir: Path) -> tuple[float, float]:
    """(V3 fusion job, its image job): metadata+thermal_map and thermal_map, repeat 1, fold 1."""
    return (
        benchmark_seconds(workdir, "fusion/metadata+thermal_map/repeat1/fold1.tsv"),
        benchmark_seconds(workdir, "image/thermal_map/repeat1/fold1.tsv"),
    )


def version_seconds() -> float:
    """Wall time of ``snakemake --version``: the start-up every Snakemake run pays."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True)
    return time.perf_counter() - start


def measure_growth(root: Path, config: dict, scales: list) -> dict:
    """Figure 5: full-pipeline wall time at several patient counts, and 1 against 2 cores."""
    times = {}
    for scale in scales:
        scaled = {
            **config,
            "demo": {**config["demo"], "patients": config["demo"]["patients"] * scale},
        }
        times[scale] = snakemake(
            fresh_dir(root, f"growth_{scale}x"), "fusion_results", config=scaled
        )[0]
    one_core = snakemake(fresh_dir(root, "one_core"), "fusion_results", config=config, cores=1)[0]
    return {"times": times, "one_core": one_core}


def job_memory(workdir: Path) -> dict:
    """Rule -> (jobs, largest peak resident memory in MB, median wall seconds) from Snakemake's
    ``benchmark:`` files."""
    import pandas as pd

    kinds = {}
    for path in sorted((workdir / "benchmarks").rglob("*.tsv")):
        rule = path.relative_to(workdir / "benchmarks").parts[0]
        record = pd.read_csv(path, sep="\t").iloc[0]
        kinds.setdefault(rule, []).append((float(record["max_rss"]), float(record["s"])))
    return {
        rule: (len(values), max(m for m, _ in values), statistics.median(s for _, s in values))
        for rule, values in kinds.items()
    }


def measure_scale(root: Path, config: dict, one_core: bool, dry_reruns: bool) -> dict:
    """The rerun costs at a scale, side by side in one work folder, in this order: full run;
    a fusion.metadata_weight change; one modality's image setting; cv.repeats + 1; a no-op.

    With ``dry_reruns`` the modality and repeats changes are dry runs, each from the state the
    fusion change left: they show which jobs a change schedules (the target) without paying
    for them (at 4x each would retrain a third of the image jobs, most of an hour here).
    """
    workdir = fresh_dir(root, "scale")
    runs = {"full run": snakemake(workdir, "fusion_results", config=config)}
    changed = copy.deepcopy(config)
    changed["fusion"]["metadata_weight"] = 0.6
    runs["rerun after fusion.metadata_weight change"] = snakemake(
        workdir, "fusion_results", config=changed
    )
    depth = copy.deepcopy(changed)
    depth["modalities"]["depth_map"]["patience"] -= 1
    repeats = copy.deepcopy(depth if not dry_reruns else changed)
    repeats["cv"]["repeats"] += 1
    extra = ("--dry-run",) if dry_reruns else ()
    label = "dry run after" if dry_reruns else "rerun after"
    runs[f"{label} modalities.depth_map.patience change"] = snakemake(
        workdir, "fusion_results", *extra, config=depth
    )
    runs[f"{label} cv.repeats + 1"] = snakemake(workdir, "fusion_results", *extra, config=repeats)
    runs["no-op rerun"] = snakemake(
        workdir, "fusion_results", config=changed if dry_reruns else repeats
    )
    fusion, image = v3_pair_seconds(workdir)
    result = {
        "workdir": workdir,
        "runs": runs,
        "startup": version_seconds(),
        "image": image,
        "fusion": fusion,
        "memory": job_memory(workdir),
    }
    if one_core:
        result["one_core"] = snakemake(
            fresh_dir(root, "scale_one_core"), "fusion_results", config=config, cores=1
        )[0]
    return result


def scale_report(name: str, config: dict, measured: dict, command: str) -> str:
    """The Markdown section of one scale: rerun costs with their targets, job kinds' memory."""
    runs = markdown_table(
        ["measurement", "wall time", "jobs", "ratio to the full run"],
        scale_rows(measured),
        right=("wall time", "ratio to the full run"),
    )
    memory = markdown_table(
        ["job kind", "jobs", "peak resident memory (largest job)", "median wall time"],
        memory_rows(name, measured["memory"]),
        right=("jobs", "peak resident memory (largest job)", "median wall time"),
    )
    visits = sum(1 for _ in open(measured["workdir"] / "resources/demo/samples.csv")) - 1
    return (
        f"## Scale: {name}\n\n"
        f"`{command}` on {machine()}: the demo generator at {config['demo']['patients']} "
        f"patients ({visits} visits), the default config (six combinations, three modalities) "
        f"at {config['image_model']['size']} px, {config['cv']['folds']} folds x "
        f"{config['cv']['repeats']} repeats, `--cores 2`.\n\n"
        + runs
        + "\n\nPeak memory of every job kind, from Snakemake's `benchmark:` files (the last "
        "run of each job):\n\n" + memory + "\n"
    )


def scale_rows(measured: dict) -> list:
    """Each run of :func:`measure_scale` against the full run (the fusion change against its
    target, and whether it retrained image or forest jobs), then the fixed costs it is judged
    by: Snakemake's start-up, the V3 fusion job against its image job, and 1 against 2 cores."""
    full = measured["runs"]["full run"][0]
    rows = []
    for label, (seconds, jobs) in measured["runs"].items():
        if label.startswith("dry run"):
            rows.append((label, f"not run ({seconds:.1f} s to plan)", json.dumps(jobs), ""))
            continue
        ratio = f"{seconds / full:.3f}"
        if label == "rerun after fusion.metadata_weight change":
            retrained = sorted({"image", "metadata"} & jobs.keys())
            ratio = against(seconds / full, 0.05) + (
                f"; retrained {retrained}" if retrained else "; no image or forest job: met"
            )
        rows.append((label, f"{seconds:.1f} s", json.dumps(jobs), ratio))
    noop = measured["runs"]["no-op rerun"][0]
    startup = measured["startup"]
    rows.append(
        ("`snakemake --version`", f"{startup:.1f} s", "", f"no-op / version {noop / startup:.2f}")
    )
    rows.append(
        (
            "V3 fusion job (metadata+thermal_map, repeat 1, fold 1) vs its image job",
            f"{measured['fusion']:.1f} s vs {measured['image']:.1f} s",
            "",
            against(measured["fusion"] / measured["image"], 0.05),
        )
    )
    if "one_core" in measured:
        rows.append(
            (
                "full run on 1 core vs 2 cores",
                f"{measured['one_core']:.1f} s vs {full:.1f} s",
                "",
                f"speed-up {measured['one_core'] / full:.2f}",
            )
        )
    return rows


def memory_rows(name: str, memory: dict) -> list:
    """A row per job kind from :func:`job_memory`; at 4x the image job's peak is held to its
    2 GiB target (the size where a laptop or a small SLURM allocation would run out)."""
    rows = []
    for rule, (jobs, rss, seconds) in sorted(memory.items()):
        peak = f"{rss:.0f} MB"
        if rule == "image" and name == "4x":
            peak += f" (target < 2048 MB: {'met' if rss < 2048 else 'missed'})"
        rows.append((rule, jobs, peak, f"{seconds:.1f} s"))
    return rows


def markdown_table(headings: list, rows: list, right: tuple = ()) -> str:
    """``rows`` as a compact Markdown table, ``right`` naming the right-aligned columns.

    Compact (no padding to the widest cell, an empty cell as ``| |``) like every section of
    RESULTS.md, so a rewritten section diffs line by line against the previous run's.
    """
    lines = [
        "| " + " | ".join(headings) + " |",
        "|" + "|".join("--:" if heading in right else "---" for heading in headings) + "|",
    ]
    for row in rows:
        lines.append("|" + "|".join(f" {cell} " if cell != "" else " " for cell in row) + "|")
    return "\n".join(lines)


def against(ratio: float, target: float, at_most: bool = True) -> str:
    """A ratio with its target and whether this run met it."""
    met = ratio <= target if at_most else ratio >= target
    return (
        f"{ratio:.3f} (target {'<=' if at_most else '>='} {target}: {'met' if met else 'missed'})"
    )


def replace_section(text: str, heading: str, section: str) -> str:
    """``text`` with the Markdown section starting at ``heading`` replaced (or appended)."""
    start = text.find(heading)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    end = text.find("\n## ", start + len(heading))
    rest = "\n" + text[end + 1 :] if end >= 0 else ""
    return text[:start] + section.rstrip("\n") + "\n" + rest


def machine() -> str:
    """CPU, cores, memory, Python and OS: timings mean little without the machine they ran on."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as handle:
        names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    return (
        f"{names[0] if names else cpu}, {os.cpu_count()} cores, {memory:.0f} GiB memory, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )


def main() -> None:
    """Measure the demo size (or, with --scale, a larger one), print the Markdown section and
    rewrite that section of bench/RESULTS.md."""
    args = parse_arguments()
    with open(REPO / "config/config.yaml") as handle:
        config = yaml.safe_load(handle)
    if args.scale:
        run_scale(args, config)
    else:
        run_demo(args, config)


def parse_arguments() -> argparse.Namespace:
    """The command line; the module docstring shows the usual invocations."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a quick pass on a tiny config")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs here")
    parser.add_argument(
        "--scale", choices=sorted(SCALES), default=None, help="the study's size, or 4 times it"
    )
    parser.add_argument(
        "--one-core", action="store_true", help="with --scale: also a full run on 1 core"
    )
    parser.add_argument(
        "--dry-reruns",
        action="store_true",
        help="with --scale: the modality and cv.repeats changes as dry runs (jobs, no times)",
    )
    return parser.parse_args()


def write_section(heading: str, section: str) -> None:
    """Rewrite this command's section of bench/RESULTS.md, leaving the other commands' alone."""
    results = REPO / "bench/RESULTS.md"
    results.write_text(replace_section(results.read_text(), heading, section))


def run_scale(args: argparse.Namespace, config: dict) -> None:
    """--scale: the rerun costs and job memory of the default config at a study-like size.

    The work folder is kept (a 4x run takes most of an hour; its results are worth a look).
    """
    config["demo"]["patients"] = SCALES[args.scale]
    config["image_model"]["size"] = SCALE_IMAGE_SIZE
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fusion-dag-scale-"))
    command = f"python bench/run.py --scale {args.scale}"
    command += " --one-core" * args.one_core + " --dry-reruns" * args.dry_reruns
    measured = measure_scale(root, config, args.one_core, args.dry_reruns)
    section = scale_report(args.scale, config, measured, command)
    print(section)
    write_section(f"## Scale: {args.scale}", section)


def demo_settings(config: dict, tiny: bool, repeats: int) -> tuple[list, int]:
    """Narrow ``config`` to the metadata + thermal map pair the figures are about (shrunk with
    --tiny, so CI runs it in minutes); return the growth scales and the timing repeats."""
    config["combinations"] = [["metadata"], ["thermal_map"], ["metadata", "thermal_map"]]
    if not tiny:
        return [1, 2, 4], repeats
    config["demo"]["patients"] = 40
    config["metadata_model"]["n_estimators"] = 30
    config["image_model"].update({"size": 24, "epochs": 2, "warmup_epochs": 1})
    config["cv"]["repeats"] = 1
    return [1], 1


def run_demo(args: argparse.Namespace, config: dict) -> None:
    """The default command: figures 1 to 5 at the demo size, as one table in RESULTS.md (not
    with --tiny, whose timings say only that the benchmark still runs)."""
    scales, repeats = demo_settings(config, args.tiny, args.repeats)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fusion-dag-bench-"))
    reruns = measure_rerun_costs(root, config, repeats)
    workdir = reruns["workdir"]
    throughput = plain_fit_throughput(workdir, config, 1, repeats)
    fusion_seconds, image_seconds = v3_pair_seconds(workdir)
    v2_seconds = v2_fit_seconds(workdir, config, 1, throughput["epochs"])
    growth = measure_growth(root, config, scales)
    rows = [
        *rerun_rows(reruns),
        throughput_row(throughput),
        fusion_row(fusion_seconds, image_seconds, v2_seconds),
        *growth_rows(growth),
    ]
    header = (
        f"{DEMO_HEADING}\n\nMachine: {machine()}.\n"
        f"Config: {'tiny (--tiny)' if args.tiny else 'default demo'}, combinations "
        f"{', '.join('+'.join(c) for c in config['combinations'])}; "
        f"repeats {repeats}; `python bench/run.py{' --tiny' if args.tiny else ''}`.\n\n"
    )
    report = header + markdown_table(["measurement", "measured", "ratio"], rows) + "\n"
    print(report)
    if not args.tiny:
        write_section(DEMO_HEADING, report)
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


def rerun_rows(reruns: dict) -> list:
    """Figures 1 and 2 from :func:`measure_rerun_costs`: the fusion-weight rerun against the
    full run (target 5%), and the no-op rerun against Snakemake's bare start-up."""
    rerun = statistics.median(reruns["rerun_times"])
    noop = statistics.median(reruns["noop_times"])
    startup = statistics.median(reruns["startup_times"])
    return [
        ("1. full run", f"{reruns['full_time']:.1f} s, {reruns['full_jobs']} jobs", ""),
        (
            "1. rerun after fusion.metadata_weight change",
            f"{summary(reruns['rerun_times'])}, jobs {json.dumps(reruns['rerun_jobs'])}",
            f"ratio {against(rerun / reruns['full_time'], 0.05)}",
        ),
        (
            "2. no-op rerun vs `snakemake --version`",
            f"{summary(reruns['noop_times'])} vs {summary(reruns['startup_times'])}",
            f"ratio {noop / startup:.2f}",
        ),
    ]


def throughput_row(throughput: dict) -> tuple:
    """Figure 3 from :func:`plain_fit_throughput`: the image job's fit rate against a plain
    model.fit's (target at least 95%: the job's bookkeeping should cost next to nothing)."""
    plain = statistics.median(throughput["plain_rates"])
    return (
        "3. image job fit throughput vs plain model.fit",
        f"{throughput['job_rate']:.0f} vs {plain:.0f} images/s "
        f"({throughput['epochs']} epochs; plain: {summary(throughput['plain_rates'], 'images/s')})",
        f"ratio {against(throughput['job_rate'] / plain, 0.95, at_most=False)}",
    )


def fusion_row(fusion_seconds: float, image_seconds: float, v2_seconds: float) -> tuple:
    """Figure 4: a V3 fusion job against its image job and against a V2 fit, which trains the
    image branch itself (what reusing the frozen branch saves)."""
    return (
        "4. V3 fusion job vs its image job; vs V2 fit",
        f"{fusion_seconds:.1f} s vs {image_seconds:.1f} s; V2 fit {v2_seconds:.1f} s",
        f"ratios {fusion_seconds / image_seconds:.3f} and {fusion_seconds / v2_seconds:.3f}",
    )


def growth_rows(growth: dict) -> list:
    """Figure 5 from :func:`measure_growth`: wall time at each patient scale relative to 1x,
    and the speed-up of 2 cores over 1."""
    base = growth["times"][1]
    return [
        (
            "5. growth, 2 cores",
            ", ".join(f"{s}x: {t:.1f} s" for s, t in growth["times"].items()),
            ", ".join(f"{s}x/1x {t / base:.2f}" for s, t in growth["times"].items()),
        ),
        (
            "5. 1 core vs 2 cores (1x)",
            f"{growth['one_core']:.1f} s vs {base:.1f} s",
            f"speed-up {growth['one_core'] / base:.2f}",
        ),
    ]


if __name__ == "__main__":
    main()
