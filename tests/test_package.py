"""lmlab as an installed package: a wheel built from this checkout, installed into a fresh virtual environment,
runs from a directory outside the repo (prepare -> train -> generate), with its configs, the demo's text, the
C++ kernel source and the playground's files inside the package.

The fresh venv gets the wheel with --no-deps and sees this venv's already-installed dependencies through a .pth
line (nothing is downloaded). A .pth line only adds a directory to sys.path; the .pth files in that directory
(this venv's editable install of lmlab) are not run, so the only lmlab it can import is the wheel's.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ENV, ROOT, write_config

PACKAGE_DATA = ["lmlab/models/decode_kernels.cpp", "lmlab/texts/tinyshakespeare.txt",
                "lmlab/texts/peoples-daily-1998.txt",
                *(f"lmlab/serve/static/{p.name}" for p in (ROOT / "src/lmlab/serve/static").iterdir()),
                *(f"lmlab/configs/{p.name}" for p in (ROOT / "src/lmlab/configs").glob("*.yaml"))]


def _version(dist: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in metadata.version(dist).split(".")[:2] if x.isdigit())
    except metadata.PackageNotFoundError:
        return ()


def _cannot_build() -> str | None:
    """Why this interpreter cannot build the wheel and install it offline, or None."""
    if _version("setuptools") < (77,):  # pyproject.toml's build-system.requires
        return "building the wheel offline needs setuptools >= 77 in this environment"
    if _version("pip") < (22, 3):
        return "installing into another venv needs pip >= 22.3 (pip --python) in this environment"
    return None


CANNOT_BUILD = _cannot_build()
pytestmark = pytest.mark.skipif(CANNOT_BUILD is not None, reason=str(CANNOT_BUILD))


def _run(*args, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env or ENV,
                       timeout=timeout)
    assert r.returncode == 0, f"{args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built offline from a copy of its sources (so the build writes no build/ or
    *.egg-info into the checkout, and no stale file of an earlier build can slip into the wheel)."""
    base = tmp_path_factory.mktemp("wheel")
    sources = base / "sources"
    shutil.copytree(ROOT / "src", sources / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, sources / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--disable-pip-version-check", "--wheel-dir", base / "dist", sources)
    (built,) = (base / "dist").glob("lmlab-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (--no-deps), seeing this venv's dependencies through a .pth line."""
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet",
         "--disable-pip-version-check", wheel)
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(site) / "lmlab-test-dependencies.pth").write_text("".join(f"{p}\n" for p in ours), encoding="utf-8")
    return venv


def test_the_wheel_holds_the_kernel_source_configs_demo_text_and_playground(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [p for p in PACKAGE_DATA if p not in names] == []


# Runs in the fresh venv: where lmlab, its kernel source, the demo's files and the playground come from, and
# whether the kernels compiled (into the test's own cache directory, so from the installed source).
_WHERE = """
import json, lmlab, lmlab.demo as demo, lmlab.models.kernels as kernels, lmlab.serve.app as app
print(json.dumps({"lmlab": lmlab.__file__, "source": str(kernels.SOURCE), "static": str(app.STATIC),
                  "demo": [str(demo.TEXT), str(demo.CONFIG), str(demo.CHINESE.text)], "kernels": kernels.available()}))
"""


def test_the_installed_wheel_prepares_trains_and_generates_outside_the_repo(venv, corpus, tmp_path):
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}  # nothing may point back at a checkout's src/
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    bin_dir = venv / "bin"

    where = json.loads(_run(bin_dir / "python", "-c", _WHERE, cwd=tmp_path, env=env).stdout)
    installed = venv.resolve()
    for path in [where["lmlab"], where["source"], where["static"], *where["demo"]]:
        assert Path(path).resolve().is_relative_to(installed), f"{path} is not the wheel's"
        assert Path(path).exists(), path
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler and sys.platform == "linux" and env.get("LMLAB_KERNELS", "1") != "0":
        built = list((tmp_path / "cache" / "lmlab" / "kernels").glob("*.so"))
        assert where["kernels"] and built, "the kernels did not compile from the installed source"

    lmlab = bin_dir / "lmlab"
    assert "usage: lmlab" in _run(lmlab, "--help", cwd=tmp_path, env=env).stdout
    _run(lmlab, "prepare", corpus, "--tokenizer", "char", "--out", "d", cwd=tmp_path, env=env)
    write_config(tmp_path / "tiny.yaml", Path("d"), train={
        "max_iters": 4, "eval_interval": 2, "eval_iters": 1, "save_interval": 2, "log_interval": 2,
        "warmup_iters": 1, "tensorboard": False})
    _run(lmlab, "train", "--config", "tiny.yaml", "--out", "run", "--quiet", cwd=tmp_path, env=env)
    out = _run(lmlab, "generate", "run", "--prompt", "ROMEO:", "--max-new-tokens", 20, "--seed", 1,
               cwd=tmp_path, env=env).stdout
    assert out.startswith("ROMEO:") and len(out.strip()) > len("ROMEO:")
