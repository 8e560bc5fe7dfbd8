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
