"""The production compose file has every service the README promises, the GPU reservation included."""

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_declares_the_production_stack():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker-gpu", "worker-cpu", "postgres", "redis", "minio", "minio-init", "flower"} <= set(services)
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    env = compose["x-secateurs-env"]
    assert env["SECATEURS_BROKER_URL"].startswith("redis://") and env["SECATEURS_STORAGE_URL"].startswith("s3://")
    tool = shutil.which("docker-compose")
    if tool:  # the compose tool validates the file where it is installed (Debian's docker-compose here)
        subprocess.run([tool, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], check=True)


def test_dockerfile_installs_the_server_extra_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[server]"' in text and "USER secateurs" in text
