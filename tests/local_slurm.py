"""A real single-node SLURM cluster on this machine, for the cluster-submission test.

Installs Debian's slurm-wlm and munge when they are missing, writes a slurm.conf for this host
into a temporary folder, starts munged, slurmctld and slurmd with their own sockets, ports and
pid files there, and stops exactly those daemons (by pid) afterwards.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
# Job steps started by snakemake-executor-plugin-slurm-jobstep drop SLURM_CONF from their
# environment (as on a real cluster, where the config sits at the standard path), so the
# temporary config is linked there for the cluster's lifetime.
STANDARD_CONFIG = Path("/etc/slurm/slurm.conf")
PACKAGES = ("slurm-wlm", "munge")


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be installed or its daemons cannot start here; the reason says why."""


def install_when_missing() -> None:
    """apt-get install the SLURM and munge packages if their daemons are not on PATH."""
    if all(shutil.which(d) for d in (*DAEMONS, "sbatch", "squeue")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterUnavailable("slurm-wlm/munge are missing and cannot be installed (not root)")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        result = subprocess.run(command, capture_output=True, text=True, env=environment)
        if result.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(command)} failed: {result.stderr[-500:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(folder: Path, cpus: int, memory_mb: int) -> Path:
    """slurm.conf for one node (this host) and one default partition, without accounting."""
    host = socket.gethostname()
    lines = [
        "ClusterName=fusiondag",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={folder}/munge.socket",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid",
        f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log",
        f"SlurmdLogFile={folder}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        # Finished jobs stay visible to squeue/scontrol for 10 minutes (the status command).
        "MinJobAge=600",
        "MpiDefault=none",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
    ]
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    path = folder / "slurm.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise ClusterUnavailable(f"{what} did not come up within {timeout:.0f} s")


@contextlib.contextmanager
def local_slurm(folder: Path, cpus: int = 2, memory_mb: int = 16000):
    """Run a one-node SLURM cluster in ``folder``; yield the environment its clients need."""
    install_when_missing()
    folder = Path(folder)
    key = folder / "munge.key"
    shutil.copy("/etc/munge/munge.key", key)
    key.chmod(0o600)
    folder.chmod(0o700)
    config = write_config(folder, cpus, memory_mb)
    environment = {**os.environ, "SLURM_CONF": str(config)}
    if STANDARD_CONFIG.exists() or STANDARD_CONFIG.is_symlink():
        raise ClusterUnavailable(f"{STANDARD_CONFIG} exists; not replacing a system SLURM config")
    STANDARD_CONFIG.parent.mkdir(parents=True, exist_ok=True)
    STANDARD_CONFIG.symlink_to(config)
    pid_files = []
    try:
        subprocess.run(
            [
                "munged",
                "--force",
                f"--socket={folder}/munge.socket",
                f"--key-file={key}",
                f"--pid-file={folder}/munged.pid",
                f"--log-file={folder}/munged.log",
                f"--seed-file={folder}/munged.seed",
            ],
            check=True,
            capture_output=True,
        )
        pid_files.append(folder / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon], env=environment, check=True, capture_output=True)
            pid_files.append(folder / f"{daemon}.pid")

        def node_idle():
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=environment, capture_output=True, text=True
            )
            return state.stdout.strip() == "idle"

        wait_for(node_idle, "the SLURM node")
        yield environment
    except subprocess.CalledProcessError as error:
        raise ClusterUnavailable(f"{error.cmd[0]} failed to start: {error.stderr}") from None
    finally:
        for pid_file in reversed(pid_files):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        STANDARD_CONFIG.unlink()
