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


def clacky_home(env: os._Environ | dict = os.environ) -> Path | None:
    """The Clacky home: ``$CLACKY_HOME``, else ``~/.clacky`` (shared with the gem).

    None when it cannot be resolved (``CLACKY_HOME=~nosuchuser/x``, or no ``HOME`` and
    no passwd entry, as containers run with an arbitrary uid): never raises. An empty
    variable counts as unset, never as the root directory.
    """
    return _resolve_home(env)[0]


def home_problem(env: os._Environ | dict = os.environ) -> str | None:
    """Why the Clacky home cannot be resolved, in words; None when it can."""
    return _resolve_home(env)[1]


NO_USER_HOME = "HOME is empty or unset and this uid has no user entry"


def _user_home(env: os._Environ | dict) -> str | None:
    """``$HOME``, else this uid's passwd entry; None when neither names a directory.

    Python expands ``~`` with an empty ``HOME`` to ``/``, which put the home at
    ``/.clacky``: an empty ``HOME`` is treated as unset instead.
    """
    if os.name == "nt":  # Path.home()'s own rule there: USERPROFILE, never HOME
        expanded = os.path.expanduser("~")
        return expanded if expanded != "~" else None
    home = env.get("HOME")
    if home:
        return home
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir or None
    except (ImportError, KeyError, OSError):
        return None


def _resolve_home(env: os._Environ | dict) -> tuple[Path | None, str | None]:
    home = env.get("CLACKY_HOME")
    try:
        if home and not (home == "~" or home.startswith(("~/", "~" + os.sep))):
            return Path(home).expanduser(), None  # an absolute path, or ~user/...
        user = _user_home(env)
        if user is None:
            return None, f"{'CLACKY_HOME' if home else 'the home directory'} cannot be resolved: {NO_USER_HOME}"
        return (Path(user, home[2:]) if home else Path(user, ".clacky")), None
    except Exception as exc:  # RuntimeError, or KeyError from pwd on Python 3.9
        return None, f"{'CLACKY_HOME' if home else 'the home directory'} cannot be resolved: {type(exc).__name__}"


#: brand.yml is read only when it is a regular file of at most this size: the gem writes a few lines.
MAX_BRAND_BYTES = 64 * 1024


def read_brand_file(home: Path | None) -> dict[str, Any]:
    """``brand.yml`` as a dict; {} when it is missing, unreadable or not what the gem writes.

    Opened without blocking (a FIFO would wait for a writer for ever) and read only
    when the open file is a regular one (not ``/dev/zero`` behind a symlink) of at
    most `MAX_BRAND_BYTES`; any error of reading or parsing (``OSError``, a YAML
    error, ``RecursionError`` from deep nesting, ``MemoryError``) gives {}. Read on
    the worker thread, never while the user's thread waits; written only by
    `reset_device_id`, on the user's request.
    """
    try:
        data = _brand_text(home)
        if data is None:
            return {}
        data = _parse_brand(data)
    except Exception:  # OSError, UnicodeDecodeError, YAMLError, RecursionError, MemoryError
        return {}
    return data if isinstance(data, dict) else {}


#: Brackets open at once beyond which brand.yml is no file the gem wrote (a flat mapping): refused
#: before parsing, since PyYAML's pure-Python parser slows down super-linearly with nesting depth.
MAX_BRAND_NESTING = 32


def _parse_brand(text: str) -> Any:
    """brand.yml's text as YAML (safe loader); ValueError when it nests deeper than `MAX_BRAND_NESTING`."""
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > MAX_BRAND_NESTING:
                raise ValueError("brand.yml nests too deep")
        elif char in "]}" and depth:
            depth -= 1
    import yaml  # lazy: only the worker thread pays for it

    return yaml.safe_load(text)


def _brand_text(home: Path | None) -> str | None:
    """brand.yml's text; None when there is none; raises when it is not a small regular UTF-8 file."""
    if home is None:
        return None
    try:
        fd = os.open(home / "brand.yml", os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        import stat

        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BRAND_BYTES:
            raise OSError(f"{home / 'brand.yml'} is not a regular file of at most {MAX_BRAND_BYTES} bytes")
        raw = os.read(fd, MAX_BRAND_BYTES + 1)
        if len(raw) > MAX_BRAND_BYTES:
            raise OSError(f"{home / 'brand.yml'} grew while being read")
        return raw.decode("utf-8")
    finally:
        os.close(fd)


def reset_device_id(home: Path | None) -> Path:
    """Write a fresh random device id into ``brand.yml`` (the gem's file, so the gem uses it too):
    64 lowercase hex characters like the derived one, mode 0600, by an atomic rename, every
    other line of the file kept as it was. Returns the file's path.

    Raises OSError (with a sentence to show) when the home cannot be resolved, or brand.yml
    cannot be read as a YAML mapping or written: then nothing is changed.
    """
    import re
    import secrets
    import tempfile

    import yaml

    if home is None:
        raise OSError("the Clacky home cannot be resolved")
    path = home / "brand.yml"
    try:
        text = _brand_text(home) or ""
        data = _parse_brand(text) if text.strip() else {}
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError) as exc:
        raise OSError(f"{path} is not valid YAML ({type(exc).__name__}): not touching it") from None
    if not isinstance(data, dict):
        raise OSError(f"{path} does not hold a YAML mapping: not touching it")
    new_id = secrets.token_hex(32)
    wanted = {**data, "device_id": new_id}
    line = re.compile(r"^device_id[ \t]*:.*$", re.M)
    if "device_id" in data and len(line.findall(text)) == 1:
        out = line.sub(f"device_id: {new_id}", text)
    elif "device_id" not in data:
        out = text + ("" if not text or text.endswith("\n") else "\n") + f"device_id: {new_id}\n"
    else:
        out = ""
    try:
        same = yaml.safe_load(out) == wanted
    except Exception:
        same = False
    if not same:  # a layout the line edit cannot keep (flow style, a quoted key...): rewrite it whole
        out = yaml.safe_dump(wanted, default_flow_style=False, sort_keys=False, allow_unicode=True)
    home.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".brand.yml.", dir=home)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(out)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


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
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()  # undecodable bytes as Ruby sees them


def brand_identity(home: Path | None, env: os._Environ | dict = os.environ) -> tuple[str, str | None, bool]:
    """The gem's stored device id (one machine is one device) and brand, if any, and whether
    the id was read from ``brand.yml`` (True) or computed (False). Never raises."""
    data = read_brand_file(home)
    device_id = data.get("device_id")
    stored = isinstance(device_id, str) and bool(device_id.strip())
    if not stored:
        device_id = computed_device_id(env)
    brand = None
    if data.get("product_name") and isinstance(data.get("package_name"), str):
        brand = data["package_name"]
    return device_id.strip(), brand, stored


def device_and_brand(home: Path | None, env: os._Environ | dict = os.environ) -> tuple[str, str | None]:
    """The gem's stored device id (one machine is one device) and brand, if any."""
    return brand_identity(home, env)[:2]


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
