"""What a package index gets: sdist and wheel with the licence, metadata, a README that reads there."""

from __future__ import annotations

import re
import subprocess
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import PYTHON

#: The checkout these tests belong to (CI imports clacky_ipy from the installed wheel instead).
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [PYTHON, "-m", "hatchling", "build", "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def test_the_wheel_carries_the_licence_urls_and_classifiers(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(zf.read(metadata).decode())
        (licence,) = [n for n in names if n.endswith("/LICENSE") and ".dist-info/" in n]
        assert "MIT License" in zf.read(licence).decode()
    assert meta["License-Expression"] == "MIT"
    urls = meta.get_all("Project-URL")
    assert any(u.startswith("Source, https://github.com/") for u in urls) and any("Issues" in u for u in urls)
    classifiers = meta.get_all("Classifier")
    for minor in range(9, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "anonymous" not in meta["Summary"].lower()
    assert any(n.startswith("clacky_ipy/notebooks/") for n in names)


def test_the_sdist_carries_the_licence(built):
    _, sdist = built
    with tarfile.open(sdist) as tf:
        assert any(n.endswith("/LICENSE") for n in tf.getnames())


def test_the_readme_reads_right_on_an_index():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_screen = "\n".join(readme.splitlines()[:30])
    assert "pip install clacky-ipy" in first_screen
    links = re.findall(r"\]\(([^)]+)\)", readme)
    relative = [
        link for link in links if not link.startswith(("http://", "https://"))
    ]  # anchors too: an index makes no ids
    assert relative == [], "links that break on a package index"
    assert "anonymous" not in readme.lower().replace("not anonymous", "")
    assert "configuration.ipynb" in readme


def test_the_wheel_installs_the_jupyter_extensions(built):
    """The prebuilt labextension and the file enabling the server extension, where Jupyter looks."""
    wheel, sdist = built
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    assert "etc/jupyter/jupyter_server_config.d/clacky_ipy.json" in data
    lab = "share/jupyter/labextensions/clacky-ipy/"
    for name in ("package.json", "install.json", "static/style.js", "schemas/clacky-ipy/plugin.json"):
        assert lab + name in data, name
    assert any(n.startswith(lab + "static/remoteEntry.") for n in data)
    with tarfile.open(sdist) as tf:
        sources = tf.getnames()
    assert any(n.endswith("labextension/src/index.ts") for n in sources)
    assert not any("node_modules" in n for n in sources)


def test_the_committed_labextension_build_is_fresh():
    """Built from the sources as they are: a change to labextension/ needs `jlpm build` and a commit."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stamp", ROOT / "labextension" / "stamp.py")
    if spec is None or not (ROOT / "labextension" / "stamp.py").exists():
        pytest.skip("not a source checkout")
    stamp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stamp)  # type: ignore[union-attr]
    assert stamp.STAMP.exists(), "no build stamp: cd labextension && jlpm install && jlpm build"
    assert stamp.STAMP.read_text().strip() == stamp.sources_hash(), "stale build: cd labextension && jlpm build"


def test_a_fresh_clone_installs_without_node(tmp_path):
    """`pip install .` from a clone, with no node on PATH, puts both Jupyter extensions in place."""
    import os
    import shutil

    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    venv = tmp_path / "venv"
    subprocess.run([PYTHON, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    path = str(bindir)
    assert shutil.which("node", path=path) is None and shutil.which("jlpm", path=path) is None
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_NO_BUILD_ISOLATION")}
    env["PATH"] = path
    proc = subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(clone)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (venv / "share/jupyter/labextensions/clacky-ipy/package.json").exists()
    assert (venv / "etc/jupyter/jupyter_server_config.d/clacky_ipy.json").exists()
    listed = subprocess.run(
        [str(bindir / "python"), "-m", "jupyter_server.extension.serverextension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    if "No module named" not in listed.stderr:
        assert "clacky_ipy enabled" in listed.stdout + listed.stderr
