"""Who is sending, coarsely: device id, brand, frontend, CI and container.

Everything here is computed on the worker thread (or once per process), never in
the cell hook. Paths, host and user names are read to build the hashed device id
or to detect an environment, and are never sent themselves. ``hashlib`` (which
loads OpenSSL) and ``platform`` are imported where used, on the worker: together
they were 8 ms of ``%load_ext``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

#: Environment variables that mark a CI run (the ci-info list, trimmed).
CI_VARS = (
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "TRAVIS",
    "BUILDKITE",
    "JENKINS_URL",
    "TF_BUILD",
    "TEAMCITY_VERSION",
    "CODEBUILD_BUILD_ID",
    "BITBUCKET_BUILD_NUMBER",
    "APPVEYOR",
    "DRONE",
    "SEMAPHORE",
)


def clacky_home(env: os._Environ | dict = os.environ) -> Path:
    """The Clacky home: ``$CLACKY_HOME``, else ``~/.clacky`` (shared with the gem)."""
    home = env.get("CLACKY_HOME")
    return Path(home).expanduser() if home else Path.home() / ".clacky"


def read_brand_file(home: Path) -> dict[str, Any]:
    """``brand.yml`` as a dict; {} when it is missing or unreadable. Never written here."""
    try:
        text = (home / "brand.yml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    import yaml  # lazy: only the worker thread pays for it

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def ruby_platform() -> str:
    """What Ruby's RUBY_PLATFORM would say here, e.g. ``x86_64-linux``, ``arm64-darwin23``."""
    import platform

    machine = platform.machine().lower() or "unknown"
    if sys.platform.startswith("linux"):
        return f"{machine}-linux"
    if sys.platform == "darwin":
        return f"{machine}-darwin{platform.release().split('.')[0]}"
    if sys.platform == "win32":
        return f"{'x64' if machine in ('amd64', 'x86_64') else machine}-mingw-ucrt"
    return f"{machine}-{sys.platform}"


def computed_device_id(env: os._Environ | dict = os.environ) -> str:
    """sha256_hex("{hostname}:{user}:{platform}"), built exactly as the gem builds it."""
    import hashlib
    import socket

    user = env.get("USER")
    if user is None:  # Ruby's `ENV["USER"] || ENV["USERNAME"] || ""`: "" is truthy there
        user = env.get("USERNAME", "")
    raw = f"{socket.gethostname()}:{user}:{ruby_platform()}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def device_and_brand(home: Path, env: os._Environ | dict = os.environ) -> tuple[str, str | None]:
    """The gem's stored device id (one machine is one device) and brand, if any."""
    data = read_brand_file(home)
    device_id = data.get("device_id")
    if not isinstance(device_id, str) or not device_id.strip():
        device_id = computed_device_id(env)
    brand = None
    if data.get("product_name") and isinstance(data.get("package_name"), str):
        brand = data["package_name"]
    return device_id.strip(), brand


def detect_ci(env: os._Environ | dict = os.environ) -> bool:
    """True in a CI run (``CI`` set to anything but false/0, or a known CI variable)."""
    ci = env.get("CI", "").strip().lower()
    if ci and ci not in ("0", "false", "no", "off"):
        return True
    return any(env.get(name) for name in CI_VARS)


def detect_container() -> str | None:
    """``"docker"`` inside a Docker container, else None."""
    if os.path.exists("/.dockerenv"):
        return "docker"
    try:
        with open("/proc/1/cgroup", encoding="utf-8") as fh:
            return "docker" if "docker" in fh.read() else None
    except OSError:
        return None


def detect_frontend(shell: Any, env: os._Environ | dict = os.environ) -> str | None:
    """Coarse frontend from the shell's class and well-known markers, never from a path."""
    if shell is None:
        return None
    if not hasattr(shell, "kernel"):
        return "terminal"
    if "google.colab" in sys.modules or env.get("COLAB_RELEASE_TAG"):
        return "colab"
    if env.get("VSCODE_PID") or env.get("VSCODE_CWD"):
        return "vscode"
    return "jupyter"


def launch_source(env: os._Environ | dict = os.environ) -> str:
    """``installer`` when launched by the Clacky installer, else ``cli`` (as the gem maps it)."""
    return "installer" if env.get("CLACKY_LAUNCHED_BY") == "installer" else "cli"
