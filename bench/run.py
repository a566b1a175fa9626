"""Benchmarks: what running fusion-dag as a DAG saves, measured side by side in one run.

    python bench/run.py            # the full measurements, written to bench/RESULTS.md
    python bench/run.py --tiny     # a quick pass on a tiny config (CI keeps it working)

Every figure is a ratio of two timings taken in the same run on the same machine. Timings
under a minute are repeated (median and spread over --repeats runs). Nothing here asserts a
time: targets are printed next to the measurements.
"""

import argparse
import collections
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
        raise RuntimeError(f"snakemake failed:\n{result.stderr[-3000:]}")
    rules = re.findall(r"^(?:local)?rule (\w+):$", result.stdout + result.stderr, re.M)
    return elapsed, dict(collections.Counter(rules))


def summary(values: list, unit: str = "s") -> str:
    """Median and spread (min to max) of repeated measurements."""
    if len(values) == 1:
        return f"{values[0]:.2f} {unit}"
    return f"{statistics.median(values):.2f} {unit} (min {min(values):.2f}, max {max(values):.2f})"


def fresh_dir(root: Path, name: str) -> Path:
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
    startup = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True)
        startup.append(time.perf_counter() - start)
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
    from fusion_dag.cache import load_cache
    from fusion_dag.folds import split_rows
    from fusion_dag.image import build_image_branch, configure_tensorflow, inner_split

    settings = config["image_model"]
    stage = workdir / f"results/image/thermal_map/repeat1/fold{fold}"
    job_metrics = read_json(stage / "metrics.json")
    epochs = len(pd.read_csv(stage / "history.tsv", sep="\t"))
    configure_tensorflow(settings["intra_op_threads"], 2, config["cv"]["seed"])
    import keras

    images, positions = load_cache(
        workdir / "results/prepared/images/thermal_map.npy",
        workdir / "results/prepared/images/thermal_map.ids.tsv",
    )
    folds = read_tsv(workdir / "results/folds/repeat1.tsv")
    train = folds[split_rows(folds, fold) == "train"].reset_index(drop=True)
    held_out = inner_split(train, settings["validation_fraction"], config["cv"]["seed"])

    def arrays(rows):
        x = images[positions[rows["id"]].to_numpy()]
        return x, rows["label"].map(config["classes"].index).to_numpy()

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
            workdir / "results/prepared/images/thermal_map.ids.tsv",
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


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as handle:
        names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    return (
        f"{names[0] if names else cpu}, {os.cpu_count()} cores, {memory:.0f} GiB memory, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a quick pass on a tiny config")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs here")
    args = parser.parse_args()

    with open(REPO / "config/config.yaml") as handle:
        config = yaml.safe_load(handle)
    # The figures here (and in RESULTS.md) are for the metadata + thermal map pair.
    config["combinations"] = [["metadata"], ["thermal_map"], ["metadata", "thermal_map"]]
    if args.tiny:
        config["demo"]["patients"] = 40
        config["metadata_model"]["n_estimators"] = 30
        config["image_model"].update({"size": 24, "epochs": 2})
        config["cv"]["repeats"] = 1
        scales, repeats = [1], 1
    else:
        scales, repeats = [1, 2, 4], args.repeats
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fusion-dag-bench-"))

    reruns = measure_rerun_costs(root, config, repeats)
    workdir = reruns["workdir"]
    throughput = plain_fit_throughput(workdir, config, 1, repeats)
    image_seconds = benchmark_seconds(workdir, "image/thermal_map/repeat1/fold1.tsv")
    fusion_seconds = benchmark_seconds(workdir, "fusion/metadata+thermal_map/repeat1/fold1.tsv")
    v2_seconds = v2_fit_seconds(workdir, config, 1, throughput["epochs"])
    growth = measure_growth(root, config, scales)

    rerun = statistics.median(reruns["rerun_times"])
    noop = statistics.median(reruns["noop_times"])
    startup = statistics.median(reruns["startup_times"])
    plain = statistics.median(throughput["plain_rates"])
    plain_spread = summary(throughput["plain_rates"], "images/s")
    base = growth["times"][1]
    rows = [
        ("1. full run", f"{reruns['full_time']:.1f} s, {reruns['full_jobs']} jobs", ""),
        (
            "1. rerun after fusion.metadata_weight change",
            f"{summary(reruns['rerun_times'])}, jobs {json.dumps(reruns['rerun_jobs'])}",
            f"ratio {rerun / reruns['full_time']:.3f} (target < 0.05)",
        ),
        (
            "2. no-op rerun vs `snakemake --version`",
            f"{summary(reruns['noop_times'])} vs {summary(reruns['startup_times'])}",
            f"ratio {noop / startup:.2f}",
        ),
        (
            "3. image job fit throughput vs plain model.fit",
            f"{throughput['job_rate']:.0f} vs {plain:.0f} images/s "
            f"({throughput['epochs']} epochs; plain: {plain_spread})",
            f"ratio {throughput['job_rate'] / plain:.3f} (target >= 0.95)",
        ),
        (
            "4. V3 fusion job vs its image job; vs V2 fit",
            f"{fusion_seconds:.1f} s vs {image_seconds:.1f} s; V2 fit {v2_seconds:.1f} s",
            f"ratios {fusion_seconds / image_seconds:.3f} and {fusion_seconds / v2_seconds:.3f}",
        ),
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
    table = ["| measurement | measured | ratio |", "|---|---|---|"]
    table += [f"| {name} | {value} | {ratio} |" for name, value, ratio in rows]
    header = (
        f"# fusion-dag benchmarks\n\nMachine: {machine()}.\n"
        f"Config: {'tiny (--tiny)' if args.tiny else 'default demo'}; "
        f"repeats {repeats}; `python bench/run.py{' --tiny' if args.tiny else ''}`.\n\n"
    )
    report = header + "\n".join(table) + "\n"
    print(report)
    if not args.tiny:
        (REPO / "bench/RESULTS.md").write_text(report)
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
