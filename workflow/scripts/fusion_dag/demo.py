"""Deterministic synthetic demo data shaped like the diabetic-foot-ulcer healing-phase problem.

Why synthetic: the workflow must run end to end on a fresh clone with no network, and its tests
need data with known structure. The generator reproduces what makes the real problem hard:

* ordinal, imbalanced classes (I < P < R at about 29/60/11 %) cut from a latent severity;
* a patient-level effect shared by every visit of a patient, so a row-level split would leak;
* about 20 mixed numeric/text metadata columns with about 10 % missing cells;
* three images per visit, each seeing the latent severity through noise of its own (independent
  of the metadata's), so each branch holds partial, partly independent signal and their fusion
  can beat any one alone: colour-mapped thermal frames, 2 to 5 views per visit in 320 x 240
  frames listed in an image table with a wound box per view (wound contrast and texture, inside
  the box only), as a study's thermal camera exports them; a 16-bit depth map (distance from
  the camera in 0.1 mm: wound depth and width), the format real depth cameras export; and an
  RGB wound photograph (slough, granulation and epithelium colours, periwound redness);
* some visits without a depth map, a photograph or thermal views, and thermal image rows of
  visits the samples table does not have, as in real collections.
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
DEPTH_NOISE = 1.5
PHOTO_NOISE = 1.6
TEMPERATURE_RANGE_C = (20.0, 37.0)
# Share of visits without that image (empty cell in the table).
MISSING_IMAGE_SHARE = {"depth_map": 0.08, "wound_photo": 0.05}

MODALITY_FOLDERS = {"thermal_map": "thermal", "depth_map": "depth", "wound_photo": "photo"}
NON_FEATURE_COLUMNS = ("sample_id", "patient_id", "label", "depth_map", "wound_photo")
# The thermal camera's views: frames (width, height) in which the wound is a small part, 2 to 5
# views per visit (angles, before and after debridement), each with a wound box; the image
# table beside the samples table lists them.
FRAME_SIZE = (320, 240)
ANGLES = ("left", "middle", "right", "zoom", "after_debridement")
THERMAL_BOX = ("x_min", "y_min", "x_max", "y_max")
THERMAL_TABLE = "thermal_images.csv"
# The later patients write_demo can add (new_patients), and the random stream they come from.
NEW_TABLE = "new_samples.csv"
NEW_THERMAL_TABLE = "new_thermal_images.csv"
NEW_STREAM = 100
MISSING_THERMAL_SHARE = 0.03
# How much one view's appearance differs from another's of the same visit (signal units).
VIEW_NOISE = 0.3
# How strongly the thermal views show the healing phase. ``default``: the wound's size,
# contrast (0.5 to 4 degrees C over the foot), texture and warm ring all follow it. ``faint``:
# the original study's layout, where only the wound core is about 1 degree C warmer or cooler
# by class and each view adds a core offset of about that size (camera angle, evaporation,
# debridement); size, texture and ring say nothing. A small CNN at the demo's thermal settings
# stays on its first plateau there (bench/plateau.py), while statistics of the crop still
# carry a faint signal.
THERMAL_SIGNALS = ("default", "faint")
FAINT_CORE_C = (1.0, 3.0)  # core contrast: 1 + 3 x inflammation (about 1 C a class)
FAINT_VIEW_NOISE_C = 1.0
FAINT_SKIN_C = 1.5  # the foot's temperature from view to view (0.3 by default)


def simulate_visits(
    patients: int, rng: np.random.Generator, cuts: np.ndarray | None = None
) -> pd.DataFrame:
    """Draw visits and their latent variables.

    Each patient has 1 to 6 visits. Healing progresses over visits, and a patient effect
    shifts every visit of that patient. The label is the latent severity cut at the quantiles
    that give the target class shares (or at ``cuts``: a later cohort of the same population
    is labelled at the first cohort's cuts, not at its own quantiles); metadata and image each
    see the severity through their own independent noise.
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
    if cuts is None:
        cuts = class_cuts(severity)
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


def class_cuts(severity: np.ndarray) -> np.ndarray:
    """The severities that cut a cohort into the target class shares."""
    return np.quantile(severity, np.cumsum(CLASS_SHARES)[:-1])


def metadata_table(
    visits: pd.DataFrame, rng: np.random.Generator, prefix: str = "P"
) -> pd.DataFrame:
    """Clinical metadata columns: patient-level traits plus visit-level wound measurements;
    patients are named ``{prefix}001`` onwards."""
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
        f"{prefix}{p + 1:03d}_V{v}" for p, v in zip(patients, visits["visit_number"], strict=True)
    ]
    exudate = np.clip(np.round(1.4 - 0.7 * signal + noise(0.8)), 0, 3).astype(int)
    table = pd.DataFrame(
        {
            "sample_id": sample_id,
            "patient_id": [f"{prefix}{p + 1:03d}" for p in patients],
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
    # The visit number is one of the keys that join the thermal image table: always filled.
    missing[:, features.index("visit_number")] = False
    table[features] = table[features].astype(object).mask(missing)
    return table


def inflammation(signal: float) -> float:
    """0 (healing) to 1 (inflamed): how strongly an image shows the inflammatory phase."""
    return 1.0 / (1.0 + np.exp(1.4 * signal))


def thermal_frame(
    image_signal: float, rng: np.random.Generator, size=FRAME_SIZE, signal: str = "default"
):
    """One colour-mapped thermal frame (uint8, height x width x 3) of a foot with a wound, and
    the wound's box (x_min, y_min, x_max, y_max) in pixels.

    The frame is mostly foot and background, whose temperatures say nothing of the healing
    phase; the wound is a small part of it, as in a study's camera frames. Inside the box, a
    lower image signal (an earlier, inflammatory phase) gives a hotter wound with a warm
    periwound ring and rougher texture; the sensor adds its own noise everywhere. With
    ``signal="faint"`` (:data:`THERMAL_SIGNALS`) only the core's temperature follows the
    signal, by about 1 degree C, under a per-view offset of about that size.
    """
    if signal not in THERMAL_SIGNALS:
        raise ValueError(f"thermal signal {signal!r}: expected one of {THERMAL_SIGNALS}")
    faint = signal == "faint"
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(float)
    temperature = 22.0 + 1.0 * y / height + rng.normal(0, 0.25, (height, width))
    cx, cy = width * (0.5 + rng.normal(0, 0.04)), height * (0.5 + rng.normal(0, 0.04))
    foot = ((x - cx) / (0.3 * width)) ** 2 + ((y - cy) / (0.46 * height)) ** 2 <= 1.0
    # The skin's temperature varies between views (ambient, time since the dressing came off).
    skin = rng.normal(0, FAINT_SKIN_C if faint else 0.3)
    temperature[foot] = 30.0 + 1.5 * (y[foot] / height - 0.3) + skin
    level = inflammation(image_signal)
    # The camera's distance varies between views: the wound's size in pixels with it.
    radius = (12.0 if faint else 9.0 + 6.0 * level) * rng.uniform(0.8, 1.3)
    reach = 1.8 * radius
    wx = cx + rng.uniform(-0.18, 0.18) * width
    wy = cy + rng.uniform(-0.3, 0.3) * height
    wx, wy = np.clip(wx, reach, width - reach), np.clip(wy, reach, height - reach)
    distance = np.sqrt((x - wx) ** 2 + (y - wy) ** 2)
    wound = distance <= radius
    ring = (distance > radius) & (distance <= reach)
    if faint:
        core = FAINT_CORE_C[0] + FAINT_CORE_C[1] * level + rng.normal(0, FAINT_VIEW_NOISE_C)
        temperature[wound] += core + rng.normal(0, 0.5, wound.sum())
        temperature[ring] += 0.5
    else:
        contrast = 0.5 + 3.5 * level
        temperature[wound] += contrast + rng.normal(0, 0.2 + 0.8 * level, wound.sum())
        temperature[ring] += 0.5 * contrast * level
    temperature += rng.normal(0, 0.35, (height, width))
    low, high = TEMPERATURE_RANGE_C
    scaled = np.clip((temperature - low) / (high - low), 0.0, 1.0)
    rgb = np.round(matplotlib.colormaps["inferno"](scaled)[..., :3] * 255).astype(np.uint8)
    # A clinician's box around the wound and its ring, drawn a few pixels loose.
    loose = rng.uniform(0, 4, 4)
    box = (
        wx - reach - loose[0],
        wy - reach - loose[1],
        wx + reach + loose[2],
        wy + reach + loose[3],
    )
    return rgb, tuple(round(float(v), 1) for v in box)


def write_thermal_views(
    folder: Path, table: pd.DataFrame, visits: pd.DataFrame, seed, signal: str = "default"
):
    """Write the thermal frames and their image table; return the table.

    Each visit has 2 to 5 views (angles), each a frame of its own with the wound's box; a few
    visits have none, and a few image rows belong to visits the samples table does not have
    (a visit after the patient's last), as in a study's exports. The table's visit numbers are
    zero-padded text (``03``) where the samples table has numbers: they still match.
    ``signal`` is how strongly the views show the phase (:data:`THERMAL_SIGNALS`); ``seed`` an
    integer or a sequence of them (:func:`write_demo`'s new patients).
    """
    rng = np.random.default_rng([*np.ravel(seed), 3])
    (folder / MODALITY_FOLDERS["thermal_map"]).mkdir(parents=True, exist_ok=True)
    last_visit = visits.groupby("patient_index")["visit_number"].transform("max")
    orphans = visits[(visits["visit_number"] == last_visit) & (rng.random(len(visits)) < 0.03)]
    rows = []
    owners = [
        *zip(table["patient_id"], visits["visit_number"], visits["image_signal"], strict=True)
    ]
    owners += [
        (p, v + 1, s)
        for p, v, s in zip(
            table.loc[orphans.index, "patient_id"],
            orphans["visit_number"],
            orphans["image_signal"],
            strict=True,
        )
    ]
    for patient, visit, phase in owners:
        if rng.random() < MISSING_THERMAL_SHARE:
            continue
        for angle in ANGLES[: rng.integers(2, 6)]:
            frame, box = thermal_frame(phase + VIEW_NOISE * rng.normal(), rng, signal=signal)
            relative = f"{MODALITY_FOLDERS['thermal_map']}/{patient}_V{visit}_{angle}.jpg"
            Image.fromarray(frame).save(folder / relative, quality=92)
            rows.append((patient, f"{visit:02d}", angle, relative, *box))
    return pd.DataFrame(rows, columns=["patient_id", "visit_number", "angle", "file", *THERMAL_BOX])


def foot_outline(size: int, rng: np.random.Generator):
    """Pixel coordinates (x, y in 0-1), the foot mask and its centre, slightly jittered."""
    y, x = np.mgrid[0:size, 0:size] / size
    cx, cy = 0.5 + rng.normal(0, 0.03), 0.52 + rng.normal(0, 0.03)
    foot = ((x - cx) / 0.23) ** 2 + ((y - cy) / 0.42) ** 2 <= 1.0
    return x, y, foot, (cx, cy)


def depth_map(depth_signal: float, rng: np.random.Generator, size: int = IMAGE_SIZE):
    """One 16-bit depth map (uint16, size x size): camera distance in 0.1 mm.

    The foot is a dome about 42 cm from the camera; pixels beyond the sensor's range read 0
    (no measurement), as depth cameras export them. An inflamed (earlier-phase) wound is a
    deeper, wider crater with a rougher bed.
    """
    x, y, foot, (cx, cy) = foot_outline(size, rng)
    distance = np.zeros((size, size))
    dome = ((x - cx) / 0.23) ** 2 + ((y - cy) / 0.42) ** 2
    distance[foot] = 4200.0 + 120.0 * dome[foot]
    level = inflammation(depth_signal)
    wx, wy = cx + rng.uniform(-0.1, 0.1), cy + rng.uniform(-0.25, 0.25)
    radius = 0.06 + 0.08 * level + rng.normal(0, 0.01)
    r = np.sqrt((x - wx) ** 2 + (y - wy) ** 2) / max(radius, 0.02)
    crater = (r <= 1.0) & foot
    depth = 30.0 + 150.0 * level
    distance[crater] += depth * (1.0 - r[crater] ** 2)
    distance[crater] += rng.normal(0, 3.0 + 12.0 * level, crater.sum())
    distance[foot] += rng.normal(0, 3.0, foot.sum())
    return np.round(np.clip(distance, 0, 65535)).astype(np.uint16)


SLOUGH_RGB = np.array([225.0, 200.0, 95.0])
GRANULATION_RGB = np.array([185.0, 40.0, 50.0])
EPITHELIUM_RGB = np.array([235.0, 160.0, 160.0])


def wound_photo(photo_signal: float, rng: np.random.Generator, size: int = IMAGE_SIZE):
    """One RGB wound photograph (uint8, size x size x 3).

    The wound bed mixes yellow slough (inflammatory phase), red granulation (proliferative)
    and pink epithelium (remodelling) by the photo's signal; an inflamed wound is larger with a
    red periwound ring. Skin tone and lighting vary between visits, as in clinic photographs.
    """
    x, y, foot, (cx, cy) = foot_outline(size, rng)
    skin = np.array([205.0, 160.0, 130.0]) * rng.uniform(0.6, 1.1)
    image = np.empty((size, size, 3))
    image[:] = np.array([70.0, 80.0, 95.0])
    image[foot] = skin
    level = inflammation(photo_signal)
    slough = 1.0 / (1.0 + np.exp(2.0 * (photo_signal + 0.6)))
    epithelium = 1.0 / (1.0 + np.exp(-2.0 * (photo_signal - 0.9)))
    granulation = max(0.0, 1.0 - slough - epithelium)
    bed = (slough * SLOUGH_RGB + granulation * GRANULATION_RGB + epithelium * EPITHELIUM_RGB) / (
        slough + granulation + epithelium
    )
    wx, wy = cx + rng.uniform(-0.1, 0.1), cy + rng.uniform(-0.25, 0.25)
    radius = 0.05 + 0.07 * level + rng.normal(0, 0.01)
    distance = np.sqrt((x - wx) ** 2 + (y - wy) ** 2)
    wound = (distance <= radius) & foot
    ring = (distance > radius) & (distance <= 1.7 * radius) & foot
    image[wound] = bed + rng.normal(0, 18, (wound.sum(), 3))
    image[ring] = image[ring] * (1 - 0.5 * level) + np.array([200.0, 60.0, 60.0]) * 0.5 * level
    image *= rng.uniform(0.8, 1.2)
    image += rng.normal(0, 6, image.shape)
    return np.round(np.clip(image, 0, 255)).astype(np.uint8)


def write_images(folder: Path, visits: pd.DataFrame, seed) -> pd.DataFrame:
    """Write the depth maps and photographs; return their relative paths (empty where a visit
    has none). Drawn from generators of their own, so the table and thermal maps do not
    depend on them."""
    paths = pd.DataFrame(index=visits.index)
    makers = {"depth_map": (depth_map, DEPTH_NOISE), "wound_photo": (wound_photo, PHOTO_NOISE)}
    for stream, (modality, (make, noise)) in enumerate(makers.items(), start=1):
        rng = np.random.default_rng([*np.ravel(seed), stream])
        signal = visits["severity"] + noise * rng.normal(size=len(visits))
        missing = rng.random(len(visits)) < MISSING_IMAGE_SHARE[modality]
        (folder / MODALITY_FOLDERS[modality]).mkdir(parents=True, exist_ok=True)
        column = []
        for sample_id, value, absent in zip(visits["sample_id"], signal, missing, strict=True):
            image = make(value, rng)
            relative = f"{MODALITY_FOLDERS[modality]}/{sample_id}.png"
            if not absent:
                Image.fromarray(image).save(folder / relative)
            column.append(None if absent else relative)
        paths[modality] = column
    return paths


def write_demo(
    table_path: Path,
    patients: int,
    seed: int,
    thermal_signal: str = "default",
    new_patients: int = 0,
) -> pd.DataFrame:
    """Write the demo samples table, its thermal image table and every image; return the
    samples table.

    Image paths are relative to the table's folder, which is the default ``image_dir``; the
    thermal image table (:data:`THERMAL_TABLE`) sits beside the samples table. The images are
    written before the tables so a table never names an image that is not there yet.
    ``thermal_signal`` (``default`` or ``faint``, :data:`THERMAL_SIGNALS`) is how strongly the
    thermal views show the healing phase; the table, depth maps and photographs are the same
    either way.

    ``new_patients`` (0: none) more patients of the same population, labelled at the same
    severity cuts and named ``N001`` onwards, are written beside it as :data:`NEW_TABLE` and
    :data:`NEW_THERMAL_TABLE`: patients a bundle trained on the demo never saw, for ``predict``
    to be shown on. They are drawn from random streams of their own, so the demo table and its
    images are the same with or without them.
    """
    rng = np.random.default_rng(seed)
    visits = simulate_visits(patients, rng)
    table = metadata_table(visits, rng)
    table_path = Path(table_path)
    folder = table_path.parent
    cohorts = [(visits, table, seed, (folder / THERMAL_TABLE, table_path))]
    if new_patients:
        later = np.random.default_rng([seed, NEW_STREAM])
        new_visits = simulate_visits(new_patients, later, class_cuts(visits["severity"]))
        new_table = metadata_table(new_visits, later, prefix="N")
        tables = (folder / NEW_THERMAL_TABLE, folder / NEW_TABLE)
        cohorts.append((new_visits, new_table, [seed, NEW_STREAM], tables))
    for cohort, frame, stream, (thermal_path, samples_path) in cohorts:
        thermal = write_thermal_views(folder, frame, cohort, stream, thermal_signal)
        others = write_images(folder, cohort.assign(sample_id=frame["sample_id"]), stream)
        frame.insert(3, "depth_map", others["depth_map"])
        frame.insert(4, "wound_photo", others["wound_photo"])
        for written, path in ((thermal, thermal_path), (frame, samples_path)):
            partial = partial_path(path)
            written.to_csv(partial, index=False)
            partial.replace(path)
    return table
