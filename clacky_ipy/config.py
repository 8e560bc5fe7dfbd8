"""Configuration: the `ClackyTelemetry` configurable and the opt-out switches.

Traits come from ``ipython_config.py``, the command line and ``%config``; the
environment supplies defaults and can always turn telemetry off. A refused value
prints one line, keeps the previous value and never breaks a later construction.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from traitlets import Bool, Float, Int, List, TraitError, Unicode, default, observe, validate
from traitlets.config import Config, Configurable

from .identity import clacky_home, home_problem

DEFAULT_ENDPOINT = "https://www.openclacky.com"
DEFAULT_FALLBACKS = ("https://api.1024code.com", "https://openclacky.up.railway.app")
DOCS_URL = "https://github.com/clacky-ai/clacky-ipy#what-is-sent"

OFF_WORDS = ("0", "false", "off", "no")
DO_NOT_TRACK_WORDS = ("1", "true", "yes")

#: Files in the Clacky home; their existence is the setting.
OFF_FILE = "ipy-telemetry-off"
NOTICE_FILE = "ipy-telemetry-notice-shown"

#: A file of this name in a policy directory turns telemetry off for everyone there.
POLICY_FILE = "telemetry-off"
#: Extra policy directories (os.pathsep-separated), searched after the two standard ones.
POLICY_DIRS_ENV = "CLACKY_POLICY_DIRS"


#: Upper bounds, in seconds, of `timeout` (one request) and `shutdown_timeout` (exit's flush).
#: Past them a "timeout" is a hang; infinity made ``%clacky_telemetry flush`` raise.
MAX_TIMEOUT = 60.0
MAX_SHUTDOWN_TIMEOUT = 30.0

#: The user-info part of a URL (``user:password@``), wherever it appears in a text.
_USERINFO = re.compile(r"(?<=://)[^/?#\s'\"]+@")  # to the last @: a password may hold one


def mask_credentials(text: str) -> str:
    """`text` with every URL's ``user:password@`` replaced by ``***@``: for anything printed."""
    return _USERINFO.sub("***@", text)


def url_problem(url: Any) -> str | None:
    """Why `url` is not an http(s) base URL, or None when it is one (credentials masked)."""
    if not isinstance(url, str):
        return mask_credentials(f"{url!r} is not a string")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return mask_credentials(f"{url!r} is not an http(s) URL")
    return None


def getenv(name: str) -> str | None:
    """``os.environ.get(name)``, without the KeyError it raises and catches for an unset name.

    That exception costs about 1.4 µs, and the opt-out reads two names on every
    event; CPython's ``os.environ`` keeps its encoded items in ``_data``.
    """
    env = os.environ
    try:
        raw = env._data.get(env.encodekey(name))  # type: ignore[attr-defined]
    except AttributeError:  # os.environ replaced by another mapping
        return env.get(name)
    return None if raw is None else env.decodevalue(raw)  # type: ignore[attr-defined]


def env_off_reason(env: Mapping[str, str] | None = None) -> str | None:
    """The environment's opt-out, which config can never override. Read on every event."""
    get = getenv if env is None else env.get
    value = get("CLACKY_TELEMETRY")
    if value is not None and value.strip().lower() in OFF_WORDS:
        return f"CLACKY_TELEMETRY={value} in the environment"
    value = get("DO_NOT_TRACK")
    if value is not None and value.strip().lower() in DO_NOT_TRACK_WORDS:
        return f"DO_NOT_TRACK={value} in the environment"
    return None


def policy_dirs() -> list[Path]:
    """Where an administrator can turn telemetry off for a machine or an environment.

    ``/etc/clacky`` (the machine), ``{sys.prefix}/etc/clacky`` (a virtualenv, a conda
    environment, a container image, a JupyterHub's kernel environment: it reaches every
    kernel started from it, which an environment variable does not), then the
    directories named by ``$CLACKY_POLICY_DIRS``.
    """
    extra = (getenv(POLICY_DIRS_ENV) or "").split(os.pathsep)
    return [Path("/etc/clacky"), Path(sys.prefix) / "etc" / "clacky", *(Path(d) for d in extra if d.strip())]


_policy_files: tuple[str | None, tuple[str, ...]] = (None, ())


def policy_files() -> tuple[str, ...]:
    """The policy files' paths as strings, built again only when ``$CLACKY_POLICY_DIRS`` changes.

    The worker checks them before every send: building the paths with pathlib each time
    cost 13 to 16 µs an event (10 % of the loopback drain); a cached string and a bare
    ``os.stat`` each cost about 1 µs.
    """
    global _policy_files
    key = getenv(POLICY_DIRS_ENV) or ""
    cached_key, files = _policy_files
    if cached_key != key:
        files = tuple(str(directory / POLICY_FILE) for directory in policy_dirs())
        _policy_files = (key, files)
    return files


def policy_off_reason() -> str | None:
    """The policy file that turns telemetry off, which nothing can override; None when there is none."""
    for path in policy_files():
        try:
            os.stat(path)
        except (OSError, ValueError):  # absent (or unreadable: only a file that exists counts)
            continue
        return f"policy file {path}"
    return None


def saved_choice_path(home: Path | None = None) -> Path | None:
    """Where ``%clacky_telemetry off`` / ``clacky-ipy telemetry off`` saves the choice; None
    when the Clacky home cannot be resolved."""
    home = home or clacky_home()
    return None if home is None else home / OFF_FILE


class SavedChoiceUnknown(OSError):
    """The saved choice cannot be checked or saved: the Clacky home is unusable."""


def env_flag(name: str, env: Mapping[str, str] = os.environ) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true")


def persisted_off(home: Path | None = None) -> bool:
    """True once ``%clacky_telemetry off`` was saved for this Clacky home.

    Raises `SavedChoiceUnknown` when that cannot be checked (the home cannot be
    resolved, or checking fails, e.g. ``PermissionError``): the caller keeps
    telemetry off then, privacy first.
    """
    path = saved_choice_path(home)
    if path is None:
        raise SavedChoiceUnknown(f"the Clacky home cannot be used: {home_problem()}")
    try:
        os.stat(path)  # not Path.exists(): from Python 3.13 on it says False for EACCES too
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError) as exc:
        raise SavedChoiceUnknown(f"the Clacky home {path.parent} cannot be used: {exc.strerror or exc}") from exc


def persist_off(off: bool, home: Path | None = None) -> None:
    """Save or clear the user's ``%clacky_telemetry off`` (raises OSError if it cannot)."""
    path = saved_choice_path(home)
    if path is None:
        raise SavedChoiceUnknown(f"the Clacky home cannot be used: {home_problem()}")
    if off:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("telemetry turned off by %clacky_telemetry off\n", encoding="utf-8")
    else:
        path.unlink(missing_ok=True)


#: What a refused endpoint means, said once, in the same sentence as the refusal.
ENDPOINT_OFF = "so telemetry is off until a valid one is set"


def _refusal(message: str) -> None:
    """One line on stderr: what was refused and what stays (never an endpoint's password)."""
    print(mask_credentials(f"clacky_ipy: {message}"), file=sys.stderr)


class ClackyTelemetry(Configurable):
    """Pseudonymous usage telemetry for OpenClacky agents in IPython and Jupyter."""

    enabled = Bool(
        True,
        help="Send telemetry. The environment (CLACKY_TELEMETRY=0, DO_NOT_TRACK=1) and a "
        "policy file (telemetry-off in /etc/clacky or {sys.prefix}/etc/clacky) always win.",
    ).tag(config=True)
    endpoint = Unicode(
        help="Base URL of the telemetry server (default: $CLACKY_LICENSE_SERVER, else "
        f"{DEFAULT_ENDPOINT}). Events go to {{endpoint}}/api/v1/telemetry/startup and /task."
    ).tag(config=True)
    fallback_endpoints = List(
        Unicode(),
        help="Hosts tried in order after a connection error. Default: the gem's two "
        "fallbacks, or none when `endpoint` was set by environment or config.",
    ).tag(config=True)
    track_cells = Bool(False, help="Send a task event (trigger 'cell') for every executed top-level cell.").tag(
        config=True
    )
    timeout = Float(
        3.0, help=f"Seconds, used as both connect and read timeout of one request (0 < timeout <= {MAX_TIMEOUT:g})."
    ).tag(config=True)
    shutdown_timeout = Float(
        1.0,
        help="The most seconds interpreter exit may wait to deliver queued events "
        f"(0 < shutdown_timeout <= {MAX_SHUTDOWN_TIMEOUT:g}).",
    ).tag(config=True)
    max_queue_size = Int(1000, help="Bound of the in-memory queue; when full, new events are dropped and counted.").tag(
        config=True
    )
    max_connections = Int(
        4,
        help="The most requests in flight at once while events wait, each on its own keep-alive "
        "connection. With nothing waiting there is one connection and one thread.",
    ).tag(config=True)
    debug = Bool(
        help="Write each event to stderr as one JSON line instead of sending it "
        "(default: True when CLACKY_TELEMETRY_DEBUG is 1/true)."
    ).tag(config=True)

    #: Why a refused endpoint keeps telemetry off (None when the endpoint is usable).
    #: A trait (not config) so that the client hears when it changes.
    endpoint_problem = Unicode(None, allow_none=True)

    # `%config ClackyTelemetry` prints `class_get_help(instance)`, which shows each trait's
    # current value ("Current: 'http://bob:pw@host'"), and a generated config file shows
    # defaults (an endpoint from CLACKY_LICENSE_SERVER): both with credentials masked.
    @classmethod
    def class_get_trait_help(cls, *args: Any, **kwargs: Any) -> str:
        return mask_credentials(super().class_get_trait_help(*args, **kwargs))

    @classmethod
    def class_config_section(cls, *args: Any, **kwargs: Any) -> str:
        return mask_credentials(super().class_config_section(*args, **kwargs))

    def __init__(self, **kwargs: Any) -> None:
        self._fallbacks_chosen = False  # set once the user picks fallback_endpoints
        self._refused: list[str] = []
        super().__init__(**kwargs)
        self.endpoint  # noqa: B018 - resolve the env default now: a bad one must turn telemetry off

    @default("endpoint")
    def _default_endpoint(self) -> str:
        env = os.environ.get("CLACKY_LICENSE_SERVER", "").strip()
        if not env:
            return DEFAULT_ENDPOINT
        problem = url_problem(env)
        if problem:
            self.endpoint_problem = f"CLACKY_LICENSE_SERVER={problem}"
        return env.rstrip("/")

    @default("fallback_endpoints")
    def _default_fallbacks(self) -> list[str]:
        custom = self.endpoint != DEFAULT_ENDPOINT or os.environ.get("CLACKY_LICENSE_SERVER")
        return [] if custom else list(DEFAULT_FALLBACKS)

    @default("debug")
    def _default_debug(self) -> bool:
        return env_flag("CLACKY_TELEMETRY_DEBUG")

    @validate("endpoint")
    def _check_endpoint(self, proposal: Any) -> str:
        problem = url_problem(proposal.value)
        if problem:
            raise TraitError(f"endpoint {problem}")
        self.endpoint_problem = None
        return proposal.value.strip().rstrip("/")

    @validate("fallback_endpoints")
    def _check_fallbacks(self, proposal: Any) -> list[str]:
        for url in proposal.value:
            problem = url_problem(url)
            if problem:
                raise TraitError(f"fallback_endpoints: {problem}")
        return [url.strip().rstrip("/") for url in proposal.value]

    @validate("timeout", "shutdown_timeout")
    def _check_seconds(self, proposal: Any) -> float:
        name = proposal.trait.name
        most = MAX_TIMEOUT if name == "timeout" else MAX_SHUTDOWN_TIMEOUT
        if not (math.isfinite(proposal.value) and 0 < proposal.value <= most):  # also refuses NaN
            raise TraitError(f"{name} must be a positive number of seconds, at most {most:g}")
        return proposal.value

    @validate("max_queue_size", "max_connections")
    def _check_positive(self, proposal: Any) -> int:
        if proposal.value < 1:
            raise TraitError(f"{proposal.trait.name} must be a positive integer")
        return proposal.value

    @observe("endpoint")
    def _endpoint_changed(self, change: Any) -> None:
        if not self._fallbacks_chosen:  # fallbacks follow the endpoint until the user sets them
            self.set_trait("fallback_endpoints", [] if change.new != DEFAULT_ENDPOINT else list(DEFAULT_FALLBACKS))
            self._fallbacks_chosen = False

    @observe("fallback_endpoints")
    def _fallbacks_changed(self, change: Any) -> None:
        self._fallbacks_chosen = True

    # -- tolerant config loading -------------------------------------------------
    #: (name, repr(value)) refused by a live %config. IPython still merges them into
    #: shell.config, so a later construction skips them quietly instead of refusing twice.
    _refused_live: set[tuple[str, str]] = set()

    def _load_config(self, cfg: Config, section_names: Any = None, traits: Any = None) -> None:
        """Load each value on its own, so one bad value is refused alone.

        traitlets would otherwise roll back every value of the batch and raise
        out of the constructor (IPython keeps a refused ``%config`` value in
        ``shell.config``, so the next ``%reload_ext`` would crash).
        """
        mine = self._find_my_config(cfg)
        for name in sorted(mine, key=lambda n: n != "endpoint"):  # endpoint first: fallbacks follow it
            if (name, repr(mine[name])) in self._refused_live:
                continue
            one = Config({type(self).__name__: {name: mine[name]}})
            old = getattr(self, name, None) if name in self.trait_names() else None
            try:
                super()._load_config(one, section_names, traits)
            except TraitError as err:
                self._refused.append(name)
                if name == "endpoint":  # never fall back to the default hosts when meant elsewhere
                    problem = url_problem(mine[name])
                    self.endpoint_problem = f"ClackyTelemetry.endpoint {problem}"
                    _refusal(f"refused ClackyTelemetry.endpoint: {problem}, {ENDPOINT_OFF}")
                else:
                    _refusal(f"refused ClackyTelemetry.{name}: {err}; kept {old!r}")

    def update_config(self, config: Config) -> None:
        """``%config``: refused values are not kept, so they are not applied again later."""
        self._refused = []
        super().update_config(config)
        section = self.config.get(type(self).__name__)
        for name in self._refused:
            if isinstance(section, Config) and name in section:
                type(self)._refused_live.add((name, repr(section.pop(name))))
