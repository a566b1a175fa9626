"""The provenance record: data digests that change with the data, git state, versions."""

import hashlib
import subprocess

import pandas as pd

from fusion_dag.provenance import data_hashes, git_state, job_runtimes, package_versions


def views_table(folder, box_x: int = 1) -> pd.DataFrame:
    """Two views of one thermal image (two wound boxes) and one photograph, on disk."""
    (folder / "a.png").write_bytes(b"thermal bytes")
    (folder / "b.jpg").write_bytes(b"photo bytes")
    rows = [
        ("thermal_map", "v1", folder / "a.png", box_x),
        ("thermal_map", "v2", folder / "a.png", 5),
        ("wound_photo", "v1", folder / "b.jpg", 0),
    ]
    table = pd.DataFrame(rows, columns=["modality", "id", "path", "x_min"])
    return table.assign(path=table["path"].astype(str), y_min=0, x_max=9, y_max=9)


def test_data_hashes_record_the_samples_sha256_and_a_digest_per_modality(tmp_path):
    samples = tmp_path / "samples.tsv"
    samples.write_text("sample_id\tlabel\nv1\tI\n")
    hashes = data_hashes(samples, views_table(tmp_path))
    assert hashes["samples"] == {
        "path": str(samples),
        "sha256": hashlib.sha256(samples.read_bytes()).hexdigest(),
    }
    assert (hashes["thermal_map"]["images"], hashes["thermal_map"]["views"]) == (1, 2)
    assert (hashes["wound_photo"]["images"], hashes["wound_photo"]["views"]) == (1, 1)
    file_digest = hashlib.sha256(b"photo bytes").hexdigest()
    expected = hashlib.sha256(f"v1\t{file_digest}\t0,0,9,9\n".encode()).hexdigest()
    assert hashes["wound_photo"]["sha256"] == expected


def test_a_moved_box_or_changed_image_changes_only_its_modalitys_digest(tmp_path):
    samples = tmp_path / "samples.tsv"
    samples.write_text("x\n")
    before = data_hashes(samples, views_table(tmp_path))
    moved = data_hashes(samples, views_table(tmp_path, box_x=2))
    assert moved["thermal_map"]["sha256"] != before["thermal_map"]["sha256"]
    assert moved["wound_photo"] == before["wound_photo"]
    table = views_table(tmp_path)
    (tmp_path / "b.jpg").write_bytes(b"another photo")
    changed = data_hashes(samples, table)
    assert changed["wound_photo"]["sha256"] != before["wound_photo"]["sha256"]
    assert changed["thermal_map"] == before["thermal_map"]


def test_git_state_names_the_commit_and_whether_tracked_files_changed(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a repository

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "Snakefile").write_text("rule all:\n")
    git("add", "Snakefile")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    (tmp_path / "untracked.txt").write_text("not part of the workflow")
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "Snakefile").write_text("rule all:\n    input: 'x'\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}


def test_package_versions_leave_out_packages_not_installed():
    import pandas

    versions = package_versions(("pandas", "no-such-package-fusion-dag"))
    assert versions == {"pandas": pandas.__version__}


def test_job_runtimes_keep_only_jobs_that_recorded_one():
    runtime = {"threads": 2, "deterministic": True}
    records = {"a/metrics.json": {"kappa": 0.3, "runtime": runtime}, "b/metrics.json": {}}
    assert job_runtimes(records) == {"a/metrics.json": runtime}
