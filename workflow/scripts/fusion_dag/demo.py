"""Deterministic synthetic demo data shaped like the diabetic-foot-ulcer healing-phase problem.

Why synthetic: the workflow must run end to end on a fresh clone with no network, and its tests
need data with known structure. The generator reproduces what makes the real problem hard:

* ordinal, imbalanced classes (I < P < R at about 29/60/11 %) cut from a latent severity;
* a patient-level effect shared by every visit of a patient, so a row-level split would leak;
* about 20 mixed numeric/text metadata columns with about 10 % missing cells;
* one colour-mapped 64x64 thermal map per visit whose wound contrast, size and texture follow
  the latent severity through noise independent of the metadata's noise, so each branch holds
  partial, partly independent signal and their fusion can beat either alone.
"""

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from PIL import Image

from fusion_dag.artifacts import partial_path

CLASSES = ("I", "P", "R")
CLASS_SHARES = (0.29, 0.60, 0.11)
IMAGE_SIZE = 64
MISSING_SHARE = 0.10
# Noise (in units of the latent severity's spread) between the true healing phase and what
# each evidence source sees. Chosen so that, with the default config, metadata alone reaches a
# validation kappa of about 0.25 and the thermal map alone about 0.15, as in the original study.
METADATA_NOISE = 1.5
IMAGE_NOISE = 1.4
TEMPERATURE_RANGE_C = (20.0, 37.0)

NON_FEATURE_COLUMNS = ("sample_id", "patient_id", "label", "thermal_map")


def simulate_visits(patients: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw visits and their latent variables.

    Each patient has 1 to 6 visits. Healing progresses over visits, and a patient effect
    shifts every visit of that patient. The label is the latent severity cut at the quantiles
    that give the target class shares; metadata and image each see the severity through their
    own independent noise.
    """
    visits_per_patient = rng.integers(1, 7, size=patients)
    patient_effect = rng.normal(0.0, 1.0, size=patients)
    patient_index = np.repeat(np.arange(patients), visits_per_patient)
    visit_number = np.concatenate([np.arange(1, n + 1) for n in visits_per_patient])
    n_rows = patient_index.size
    severity = (
        0.75 * patient_effect[patient_index]
        + 0.25 * (visit_number - 3.5) / 1.7
        + 0.65 * rng.normal(0.0, 1.0, size=n_rows)
    )
    cuts = np.quantile(severity, np.cumsum(CLASS_SHARES)[:-1])
    label_index = np.searchsorted(cuts, severity)
    return pd.DataFrame(
        {
            "patient_index": patient_index,
            "patient_effect": patient_effect[patient_index],
            "visit_number": visit_number,
            "severity": severity,
            "metadata_signal": severity + METADATA_NOISE * rng.normal(size=n_rows),
            "image_signal": severity + IMAGE_NOISE * rng.normal(size=n_rows),
            "label": np.asarray(CLASSES)[label_index],
        }
    )


def metadata_table(visits: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Clinical metadata columns: patient-level traits plus visit-level wound measurements."""
    n = len(visits)
    patients = visits["patient_index"].to_numpy()
    n_patients = patients.max() + 1
    effect = visits["patient_effect"].to_numpy()
    signal = visits["metadata_signal"].to_numpy()

    def per_patient(values: np.ndarray) -> np.ndarray:
        return values[patients]

    def noise(scale: float) -> np.ndarray:
        return rng.normal(0.0, scale, size=n)

    sample_id = [
        f"P{p + 1:03d}_V{v}" for p, v in zip(patients, visits["visit_number"], strict=True)
    ]
    exudate = np.clip(np.round(1.4 - 0.7 * signal + noise(0.8)), 0, 3).astype(int)
    table = pd.DataFrame(
        {
            "sample_id": sample_id,
            "patient_id": [f"P{p + 1:03d}" for p in patients],
            "label": visits["label"].to_numpy(),
            "age": np.round(per_patient(rng.normal(63, 11, n_patients)), 0),
            "sex": per_patient(rng.choice(["M", "F"], size=n_patients, p=[0.7, 0.3])),
            "bmi": np.round(per_patient(rng.normal(29, 5, n_patients)), 1),
            "hba1c_pct": np.round(
                7.8 - 0.4 * effect + per_patient(rng.normal(0, 0.9, n_patients)), 1
            ),
            "diabetes_duration_years": np.round(
                np.clip(13 - 2.0 * effect + per_patient(rng.normal(0, 5, n_patients)), 1, None), 0
            ),
            "ankle_brachial_index": np.round(
                0.95 + 0.05 * effect + per_patient(rng.normal(0, 0.12, n_patients)), 2
            ),
            "smoking_status": per_patient(
                rng.choice(["never", "former", "current"], size=n_patients, p=[0.5, 0.35, 0.15])
            ),
            "visit_number": visits["visit_number"].to_numpy(),
            "days_since_onset": np.round(np.exp(3.6 + 0.35 * signal + noise(0.45)), 0),
            "wound_area_cm2": np.round(np.exp(0.9 - 0.35 * signal + noise(0.6)), 2),
            "wound_depth_mm": np.round(np.exp(1.2 - 0.2 * signal + noise(0.6)), 1),
            "granulation_pct": np.round(np.clip(55 + 15 * signal + noise(18), 0, 100), 0),
            "exudate_level": np.asarray(["none", "low", "moderate", "high"])[exudate],
            "crp_mg_l": np.round(np.exp(2.2 - 0.35 * signal + noise(0.7)), 1),
            "wbc_count": np.round(rng.normal(8.5, 2.2, n), 1),
            "infection": np.where(-0.8 * signal + noise(1.0) > 1.0, "yes", "no"),
            "pain_score": np.clip(np.round(rng.normal(3, 2, n)), 0, 10),
            "albumin_g_dl": np.round(rng.normal(3.8, 0.5, n), 1),
            "wound_location": rng.choice(["toe", "forefoot", "midfoot", "heel"], size=n),
            "dressing_type": rng.choice(["foam", "alginate", "hydrocolloid", "gauze"], size=n),
            "offloading": rng.choice(["yes", "no"], size=n, p=[0.6, 0.4]),
        }
    )
    features = [c for c in table.columns if c not in NON_FEATURE_COLUMNS]
    missing = rng.random((n, len(features))) < MISSING_SHARE
    table[features] = table[features].astype(object).mask(missing)
    return table


def thermal_map(image_signal: float, rng: np.random.Generator, size: int = IMAGE_SIZE):
    """One colour-mapped thermal image (uint8, size x size x 3) of a foot with a wound.

    A lower image signal (an earlier, inflammatory phase) gives a hotter, larger wound with a
    warm periwound ring and rougher texture; the sensor adds its own noise.
    """
    y, x = np.mgrid[0:size, 0:size] / size
    temperature = 22.0 + 1.0 * y + rng.normal(0, 0.25, (size, size))
    cx, cy = 0.5 + rng.normal(0, 0.03), 0.52 + rng.normal(0, 0.03)
    foot = ((x - cx) / 0.23) ** 2 + ((y - cy) / 0.42) ** 2 <= 1.0
    temperature[foot] = 30.0 + 1.5 * (y[foot] - 0.3) + rng.normal(0, 0.3)
    inflammation = 1.0 / (1.0 + np.exp(1.4 * image_signal))
    wx = cx + rng.uniform(-0.1, 0.1)
    wy = cy + rng.uniform(-0.25, 0.25)
    radius = 0.05 + 0.07 * inflammation + rng.normal(0, 0.01)
    distance = np.sqrt((x - wx) ** 2 + (y - wy) ** 2)
    wound = distance <= radius
    ring = (distance > radius) & (distance <= 1.8 * radius) & foot
    contrast = 0.5 + 3.5 * inflammation
    temperature[wound] += contrast + rng.normal(0, 0.2 + 0.8 * inflammation, wound.sum())
    temperature[ring] += 0.5 * contrast * inflammation
    temperature += rng.normal(0, 0.35, (size, size))
    low, high = TEMPERATURE_RANGE_C
    scaled = np.clip((temperature - low) / (high - low), 0.0, 1.0)
    rgb = matplotlib.colormaps["inferno"](scaled)[..., :3]
    return np.round(rgb * 255).astype(np.uint8)


def write_demo(table_path: Path, patients: int, seed: int) -> pd.DataFrame:
    """Write the demo samples table and its thermal maps; return the table.

    Image paths in the table are relative to the table's folder, which is the default
    ``image_dir``. The images are written before the table so a table never names an image
    that is not there yet.
    """
    rng = np.random.default_rng(seed)
    visits = simulate_visits(patients, rng)
    table = metadata_table(visits, rng)
    table_path = Path(table_path)
    image_folder = table_path.parent / "thermal"
    image_folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample_id, signal in zip(table["sample_id"], visits["image_signal"], strict=True):
        relative = f"thermal/{sample_id}.png"
        Image.fromarray(thermal_map(signal, rng)).save(table_path.parent / relative)
        paths.append(relative)
    table.insert(3, "thermal_map", paths)
    partial = partial_path(table_path)
    table.to_csv(partial, index=False)
    partial.replace(table_path)
    return table
