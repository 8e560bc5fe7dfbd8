"""OpenClacky's privacy-first usage telemetry for IPython and Jupyter.

``%load_ext clacky_ipy`` sends the startup event; ``%%clacky`` cells (and every
cell with ``track_cells``) send task events. Outside IPython use `startup`,
`task`, `track` and `flush`; `recent` lists what was sent. Nothing is sent before
the first-run notice was displayed. Opt out with ``CLACKY_TELEMETRY=0`` or
``DO_NOT_TRACK=1``, a ``telemetry-off`` policy file in ``/etc/clacky`` or
``{sys.prefix}/etc/clacky``, ``%clacky_telemetry off`` / ``clacky-ipy telemetry off``
(saved), or ``c.ClackyTelemetry.enabled = False``.
"""

from .client import __version__, flush, recent, startup, task, track
from .config import ClackyTelemetry


def load_ipython_extension(shell):
    """``%load_ext clacky_ipy``. IPython is imported here, not by the Python API."""
    from .magics import load

    load(shell)


def unload_ipython_extension(shell):
    """``%unload_ext clacky_ipy``."""
    from .magics import unload

    unload(shell)


def _jupyter_server_extension_points():
    """The Jupyter Server extension (enabled by the jupyter_server_config.d file the wheel installs)."""
    return [{"module": "clacky_ipy.serverext"}]


def _jupyter_labextension_paths():
    """The prebuilt JupyterLab / Notebook 7 extension, for tools that look for it here."""
    return [{"src": "labextension", "dest": "clacky-ipy"}]


__all__ = [
    "ClackyTelemetry",
    "__version__",
    "flush",
    "load_ipython_extension",
    "recent",
    "startup",
    "task",
    "track",
    "unload_ipython_extension",
]
