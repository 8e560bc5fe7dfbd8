"""The kernel's last events for JupyterLab's dialog: the comm target, in a real ipykernel."""

from __future__ import annotations

import uuid

import pytest
from conftest import subprocess_env

pytest.importorskip("ipykernel", reason="needs ipykernel")
from jupyter_client.manager import start_new_kernel

from clacky_ipy.logcomm import TARGET


def open_comm(client, data):
    """Open a comm to TARGET the way the dialog does; the messages the kernel answers with."""
    comm_id = uuid.uuid4().hex
    msg = client.session.msg("comm_open", {"comm_id": comm_id, "target_name": TARGET, "data": data})
    client.shell_channel.send(msg)
    seen = []
    while True:
        reply = client.get_iopub_msg(timeout=30)
        if reply["msg_type"] in ("comm_msg", "comm_close") and reply["content"].get("comm_id") == comm_id:
            seen.append(reply)
            if reply["msg_type"] == "comm_close":
                return seen


def test_the_kernel_answers_with_its_last_events(tmp_path, receiver):
    env = subprocess_env(CLACKY_LICENSE_SERVER=receiver.url)
    manager, client = start_new_kernel(env=env, cwd=str(tmp_path))
    try:
        before = open_comm(client, {"n": 5})  # not loaded: the comm is closed at once, no answer
        assert [m["msg_type"] for m in before] == ["comm_close"]
        code = "%load_ext clacky_ipy\nimport clacky_ipy\nclacky_ipy.task(model='m-1')\nclacky_ipy.flush(5)"
        reply = client.execute_interactive(code, timeout=60)
        assert reply["content"]["status"] == "ok"
        answer = open_comm(client, {"n": 5})
        assert [m["msg_type"] for m in answer] == ["comm_msg", "comm_close"]
        events = answer[0]["content"]["data"]["events"]
        assert [e["event"] for e in events][-1] == "task" and '"model":"m-1"' in events[-1]["payload"]
        assert all(e["outcome"].startswith("sent") for e in events)
        assert len(open_comm(client, {"n": "all"})[0]["content"]["data"]["events"]) == len(events)  # a bad n: 20
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
