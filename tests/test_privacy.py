"""Privacy as a property: secrets in cells and exception messages never reach a payload."""

from __future__ import annotations

import string

from conftest import CLIENT, load, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clacky_ipy
from clacky_ipy import payload

SECRET = st.text(alphabet=string.ascii_letters + string.digits, min_size=12, max_size=40).map(lambda s: "SECRET" + s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=SECRET, prompt=st.text(min_size=1, max_size=200))
def test_secrets_in_cells_and_errors_never_reach_the_server(ip, receiver, secret, prompt):
    if "clacky_ipy" not in ip.extension_manager.loaded:
        load(ip, endpoint=receiver.url, track_cells=True)
    ip.user_ns.update(secret=secret, prompt=prompt)
    run(ip, f"token = {secret!r}  # {secret}")
    run(ip, f"raise RuntimeError({secret!r})")
    run(ip, f"%%clacky --model gpt-x\nraise PermissionError('denied: ' + {secret!r})")
    run(ip, "%%clacky\n{'status': 'success', 'history': [prompt, secret], 'session_id': secret, 'note': secret}")
    run(ip, f"import clacky_ipy; clacky_ipy.task({{'history': [secret]}}, error=ValueError({secret!r}))")
    receiver.wait()
    bodies = [request.get_data(as_text=True) for request in receiver.requests]
    assert bodies
    for body in bodies:
        assert secret not in body
    for event in receiver.events("task"):
        assert set(event) <= set(payload.KEYS["task"])
        assert event.get("error_kind") in (None, "RuntimeError", "PermissionError", "ValueError")


def test_model_names_from_options_are_sent_only_where_they_belong(ip, receiver):
    """--model is the one user-typed value we send, and only as `model`, capped."""
    load(ip, endpoint=receiver.url)
    run(ip, "%%clacky --model " + "m" * 100 + "\n1")
    receiver.wait()
    (event,) = receiver.events("task")
    assert event["model"] == "m" * 64


@given(message=st.text(min_size=1), name=st.sampled_from(["ValueError", "KeyError", "OSError"]))
def test_error_kind_never_carries_the_message(message, name):
    error = {"ValueError": ValueError, "KeyError": KeyError, "OSError": OSError}[name](message)
    fields = payload.clean("task", {"error_kind": payload.error_kind(error)})
    assert fields == {"error_kind": name}


def test_no_path_host_or_user_in_any_payload(ip, receiver, home):
    import getpass
    import socket

    load(ip, endpoint=receiver.url, track_cells=True)
    run(ip, "x = 1")
    clacky_ipy.task({"model": "m"})
    receiver.wait()
    text = "".join(request.get_data(as_text=True) for request in receiver.requests)
    for private in (str(home), socket.gethostname(), getpass.getuser(), CLIENT.config.endpoint):
        assert private not in text
