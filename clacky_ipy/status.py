"""What ``%clacky_telemetry status``, ``clacky-ipy telemetry status`` and the Jupyter server show.

One rendering for all, so the shell command, the magic and JupyterLab's status-bar item never
disagree about which switch decided, where the saved choice lives, or what the device id is.
`machine_status` and `save_choice` are the shell command's state and switch, as data: the
Jupyter server extension answers with them, not with a copy.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import mask_credentials
from .safe import printable

#: What the device id is, in one sentence a user can check (also in the README and the notice).
DEVICE_ID_COMPUTED = (
    'pseudonymous: SHA-256 of "{hostname}:{user}:{platform}", as the openclacky gem computes it, so a machine '
    "counts once across the gem and notebooks; it is not your names, but anyone who knows them can recompute it"
)
DEVICE_ID_RANDOM = (
    "random: stored in {path} (by `clacky-ipy telemetry reset-id`, or by the openclacky gem), not derived from "
    "your host or user names; shared with the gem so a machine counts once"
)
DEVICE_ID_STORED = (
    "pseudonymous: stored by the openclacky gem in {path}, which derives it the same way (SHA-256 of "
    '"{{hostname}}:{{user}}:{{platform}}"); shared with the gem so a machine counts once'
)


#: The switches status names as having decided, in order of precedence (`Client.decided_by`).
SWITCH_NAMES = ("environment", "policy file", "config", "saved choice")
#: The ones nothing can override: a switch in a UI is refused while one of them decides.
FORCED = ("environment", "policy file")

#: What the machine-wide status cannot see: the configuration of each session.
SESSION_CONFIG_NOTE = (
    "A session's configuration (c.ClackyTelemetry.enabled = False, %config) can also turn it off there."
)


def device_id_source(home: Path | None, stored: bool, random: bool = False) -> str:
    """How this machine's device id was derived: read from the gem's brand.yml (`stored`), and there
    either `random` or the derived one; or computed. brand.yml is never read here: status runs on the
    user's thread."""
    if stored and home is not None:
        return (DEVICE_ID_RANDOM if random else DEVICE_ID_STORED).format(path=home / "brand.yml")
    return DEVICE_ID_COMPUTED


def device_text(device_id: str | None) -> str:
    """The device id as status shows it: as sent, escaped, or why none is."""
    if device_id == "":
        return "none sent: brand.yml's device_id is not an id (8 to 64 of A-Z, a-z, 0-9, _ and -)"
    if device_id is None:
        return "still being computed (brand.yml is slow to read); ask again in a moment"
    return printable(device_id)  # it may be brand.yml's text: control and bidi characters escaped


def status_text(status: Mapping[str, Any]) -> str:
    """The status as lines a person reads, credentials in URLs masked.
    Process counters appear only when `status` has them."""
    state = "on (no switch turns it off)" if status["on"] else f"off ({status['off_reason']})"
    saved = status.get("saved_choice")
    lines = [f"Telemetry:    {state}"]
    if saved:
        if status.get("saved_off_removed"):
            choice = (
                f"on for later sessions ({saved} was removed since this session read it), but this session "
                "stays off: %clacky_telemetry on turns it on too"
            )
        elif status.get("saved_off"):
            choice = f"off, saved in {saved}"
        else:
            choice = f"on (`off` would be saved in {saved})"
        lines.append(f"Saved choice: {choice}")
    lines.append(
        f"Endpoint:     {status['endpoint']}"
        + (f" (fallbacks: {', '.join(status['fallback_endpoints'])})" if status["fallback_endpoints"] else "")
    )
    lines.append(f"Device id:    {device_text(status['device_id'])}")
    if status.get("device_id_source"):
        pad = " " * 14
        lines.append(textwrap.fill(status["device_id_source"], width=100, initial_indent=pad, subsequent_indent=pad))
    if status.get("notice_pending") and status["on"]:
        waiting = f" ({status['waiting']} events waiting)" if "queued" in status else ""
        lines.append(f"Notice:       not displayed yet in this Clacky home; nothing is sent until it is{waiting}")
    if "queued" not in status:
        return mask_credentials("\n".join(lines))
    lines += [
        f"track_cells:  {status['track_cells']}",
        "Events:       queued {queued}, sent {sent}, failed {failed}, dropped {dropped}, in flight {in_flight}".format(
            **status
        ),
    ]
    if status["debug"]:
        lines.append(f"Debug:        on: events are printed to stderr, not sent ({status['printed']} printed)")
    if status["paused_seconds"]:
        lines.append(f"Paused:       {status['paused_seconds']} s more (the server answered 429)")
    if status["last_error"]:
        lines.append(f"Last error:   {status['last_error']}")
    return mask_credentials("\n".join(lines))


def _shell_client() -> Any:
    """A client of this process's own, attached to the default configuration: it sends nothing
    (no startup, no worker), it only reads the switches as a new session would."""
    from .client import Client
    from .config import ClackyTelemetry

    client = Client()
    client.attach(ClackyTelemetry())
    return client


def machine_status(wait: float = 5.0) -> dict[str, Any]:
    """What ``clacky-ipy telemetry status`` shows, as data: `Client.switches` as a new session on
    this machine would see them (environment, policy files, saved choice, the notice's marker),
    waiting at most `wait` seconds for the device id."""
    return _shell_client().switches(wait=wait)


def save_choice(off: bool) -> tuple[str | None, str | None]:
    """``clacky-ipy telemetry off|on``: the saved choice, written. Returns (why it could not be
    saved, or None; why telemetry is still off afterwards, or None)."""
    client = _shell_client()
    error = client.set_user_off(off)
    return error, client.off_reason()
