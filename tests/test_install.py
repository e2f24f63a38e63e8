"""Build the wheel, install it into a fresh virtual environment, import it from another directory."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_imports_outside_the_source_tree(tmp_path):
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLM_FAST_")}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, env=env, cwd=tmp_path)
    (wheel,) = wheels.glob("molm_fast-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # The fresh venv gets molm_fast itself; its dependencies (torch, ...) come from this environment's site-packages,
    # appended after the venv's own so the freshly installed wheel wins over the editable source tree.
    (venv_site,) = (venv / "lib").glob("python*/site-packages")
    (venv_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, env=env)
    code = ("import json, importlib.resources as r, molm_fast, molm_fast.kernels.pairwise_distance as k; "
            "assets = sorted(p.name for p in r.files('molm_fast').joinpath('assets').iterdir()); "
            "print(json.dumps({'info': molm_fast.build_info(), 'file': molm_fast.__file__, 'kernels': k.__file__, "
            "'assets': assets}))")
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["info"]["cpp"] is True
    assert str(venv) in result["file"] and str(venv) in result["kernels"], result
    assert result["info"]["backends"]["cpu"]["pairwise_distance"] == "cpp"
    shipped = {p.name for p in (ROOT / "molm_fast" / "assets").iterdir()}  # the demo's data travels in the wheel
    assert shipped <= set(result["assets"]), sorted(shipped - set(result["assets"]))
