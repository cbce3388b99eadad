"""`pip install secateurs` is the light client: pydantic and httpx, no torch, no server packages, one
import name; the shared job spec works there, and engine commands say which extra to install."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_light_install_has_no_torch_and_one_import_name(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], check=True, capture_output=True, timeout=600)
    installed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                               check=True).stdout.lower()
    for heavy in ("torch", "fastapi", "celery", "sqlalchemy", "onnx", "uvicorn", "boto3"):
        assert f"\n{heavy}==" not in "\n" + installed, heavy
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = sorted(p.name for p in site.iterdir() if p.is_dir() and (p / "__init__.py").exists()
                  and p.name in {"secateurs", "api", "db", "client", "worker", "pruning", "_secateurs"})
    assert ours == ["secateurs"]
    static = site / "secateurs" / "api" / "static"  # the dashboard's files travel in the package
    assert {"index.html", "dashboard.js", "charts.js", "dashboard.css", "icon.svg"} <= {p.name for p in static.iterdir()}
    check = ("from secateurs.pruning import PruneSpec; import sys; "
             "assert PruneSpec(signal='taylor').needs_data; "
             "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'fastapi', 'sqlalchemy')]")
    subprocess.run([str(py), "-c", check], check=True, timeout=60)
    proc = subprocess.run([str(env_dir / "bin" / "secateurs"), "prune", "m.onnx", "-o", "p.onnx"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "secateurs[server]" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([str(env_dir / "bin" / "secateurs"), "convert-weights", "w.pth", "-o", "w.safetensors"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "secateurs[convert]" in proc.stderr and "Traceback" not in proc.stderr


def test_the_shared_spec_imports_only_pydantic():
    code = ("import sys; from secateurs.pruning import PruneSpec; import secateurs.pruning.flags; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'numpy', 'fastapi'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
