"""Packaging: the three import packages install (editable and wheel) and keep their boundaries."""
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import ezm_gpu
import ezm_gpu.envs
import ezm_gpu.kernels

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, **env))
    return result.stdout


def test_installed_layout_maps_folders_to_packages():
    assert pathlib.Path(ezm_gpu.kernels.__file__).parent.name == "kernels"
    assert pathlib.Path(ezm_gpu.envs.__file__).parent.name == "envs"
    assert set(ezm_gpu.kernels.__all__) >= {"sampled_gumbel_search", "SearchConfig", "SearchOutput", "select",
                                            "expand", "backup", "sequential_halving", "root_outputs"}


def test_ezm_gpu_import_is_light():
    loaded = json.loads(_run("import sys, json, ezm_gpu; print(json.dumps(sorted(sys.modules)))"))
    assert "torch" not in loaded and "triton" not in loaded


def test_kernels_do_not_import_the_algorithm():
    code = ("import sys, json, ezm_gpu.kernels, ezm_gpu.kernels.triton_ops, ezm_gpu.kernels.aot, ezm_gpu.envs\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ezm_gpu'))))")
    loaded = json.loads(_run(code))
    foreign = [m for m in loaded if m != "ezm_gpu" and not m.startswith(("ezm_gpu.kernels", "ezm_gpu.envs"))]
    assert foreign == []


def test_wheel_contains_and_imports_all_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("ezm_gpu-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("ezm_gpu/__init__.py", "ezm_gpu/kernels/__init__.py", "ezm_gpu/kernels/triton_ops.py",
                     "ezm_gpu/envs/__init__.py", "ezm_gpu/configs/__init__.py", "ezm_gpu/configs/train.yaml",
                     "ezm_gpu/envs/asset_manifest.sha256"):
        assert required in names, f"{required} missing from {wheel.name}"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import ezm_gpu, ezm_gpu.kernels, ezm_gpu.envs; "
            "print(ezm_gpu.kernels.__file__); print(ezm_gpu.kernels.SearchConfig().num_simulations)")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert out[0].startswith(str(target)) and out[1] == "32"
