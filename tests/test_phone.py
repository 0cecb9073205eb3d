"""The emulated phone over TVM RPC: tracker, server, RemoteDevice, and their errors.

Real processes only: a tracker on a free 127.0.0.1 port and the arm64 RPC server under QEMU
(fixtures in phone_fixtures.py, imported by conftest.py).
"""

from __future__ import annotations

import argparse
import math
import os
import uuid

import numpy as np
import pytest

from deploy import procs, rpc_net
from deploy.remote import RemoteDevice
from mdl_tvm.core.errors import DeviceError
from mdl_tvm.core.numerics import relative_error

on_phone = pytest.mark.phone  # needs the emulated phone or a tracker


@on_phone
def test_model_runs_on_phone_via_tracker(phone, arm64_model):
    so_path, x, ref = arm64_model
    with RemoteDevice.connect(phone["tracker"], key=phone["key"], timeout=60) as dev:
        model = dev.load(so_path)
        workpath = dev.session.get_function("tvm.rpc.server.workpath")
        uploaded = workpath(model.remote_name)
        assert os.path.isfile(uploaded)  # QEMU user mode shares the host's file system
        outs = model.run([x])
        assert len(outs) == 1 and outs[0].shape == (1, 10) and outs[0].dtype == np.float32
        assert relative_error(outs[0], ref) <= 1e-4
        ms = model.time(x, number=5, repeat=3)  # measured on the device (no bound: bench/)
        assert math.isfinite(ms) and ms > 0
        model.close()
        assert not os.path.exists(uploaded)  # clean-up removed the library


@on_phone
def test_tracker_string_address_and_run_helper(phone, arm64_model):
    so_path, x, ref = arm64_model
    host, port = phone["tracker"]
    with RemoteDevice.connect(f"{host}:{port}", key=phone["key"], timeout=60) as dev:
        (out,) = dev.run(so_path, x)
    assert relative_error(out, ref) <= 1e-4


def test_tracker_down_is_a_device_error():
    port = rpc_net.free_port()  # nothing listens there: no phone, no tracker needed
    with pytest.raises(DeviceError) as err:
        RemoteDevice.connect(f"127.0.0.1:{port}", key="phone", timeout=5)
    assert f"127.0.0.1:{port}" in str(err.value)
    assert "mdl-tvm tracker start" in str(err.value)  # names the fix


@on_phone
def test_unknown_key_is_a_device_error(phone_tracker):
    key = f"nobody-{uuid.uuid4().hex[:8]}"
    with pytest.raises(DeviceError) as err:
        RemoteDevice.connect(phone_tracker, key=key, timeout=1.5)
    host, port = phone_tracker
    assert f"no device with key {key!r} is registered at tracker {host}:{port}" in str(err.value)
    assert "mdl-tvm device start" in str(err.value)


@on_phone
def test_busy_phone_times_out_then_serves_again(phone, arm64_model):
    so_path, x, ref = arm64_model
    holder = RemoteDevice.connect(phone["tracker"], key=phone["key"], timeout=60)
    try:
        with pytest.raises(DeviceError) as err:
            RemoteDevice.connect(phone["tracker"], key=phone["key"], timeout=2)
        assert f"no device with key {phone['key']!r} became free" in str(err.value)
        assert "within 2 s (1 registered, all busy or dead)" in str(err.value)
    finally:
        holder.close()
    # the abandoned request must not swallow the phone: it is served again
    with RemoteDevice.connect(phone["tracker"], key=phone["key"], timeout=60) as dev:
        assert relative_error(dev.run(so_path, x)[0], ref) <= 1e-4


@on_phone
def test_phone_dying_mid_session_is_a_device_error(phone_env, phone_tracker, arm64_model, tmp_path):
    so_path, x, _ = arm64_model
    key = f"doomed-{uuid.uuid4().hex[:8]}"
    state = procs.start_phone(tracker=phone_tracker, key=key, rundir=tmp_path)
    assert state["key"] == key and procs.status(tmp_path)["phone"]["alive"]
    dev = RemoteDevice.connect(phone_tracker, key=key, timeout=60)
    model = dev.load(so_path)
    assert procs.stop_phone(rundir=tmp_path)  # kills server, session and worker processes
    with pytest.raises(DeviceError) as err:
        model.run([x])
    assert "device status" in str(err.value)
    assert procs.status(tmp_path)["phone"] is None
    assert not (tmp_path / "phone-tmp").exists()  # the dead session's upload is gone too


@on_phone
def test_standalone_phone_serves_plain_rpc(phone_env, arm64_model, tmp_path):
    import tvm
    from tvm import rpc
    from tvm.runtime.vm import VirtualMachine

    so_path, x, ref = arm64_model
    state = procs.start_phone(port=rpc_net.free_port(), rundir=tmp_path)
    try:
        assert state["tracker"] is None and state["host"] == "127.0.0.1"
        sess = rpc.connect(state["host"], state["port"])
        sess.upload(so_path, target="tiny.so")
        vm = VirtualMachine(sess.load_module("tiny.so"), sess.cpu())
        vm.set_input("main", tvm.runtime.tensor(x, sess.cpu()))
        vm.invoke_stateful("main")
        assert relative_error(vm.get_outputs("main")[0].numpy(), ref) <= 1e-4
    finally:
        assert procs.stop_phone(rundir=tmp_path)


@on_phone
def test_non_loopback_bind_needs_explicit_flag(phone_tracker, tmp_path):
    with pytest.raises(ValueError, match="no authentication"):
        procs.start_phone(tracker=phone_tracker, host="0.0.0.0", rundir=tmp_path)
    with pytest.raises(ValueError, match="allow-remote"):
        procs.start_tracker(host="0.0.0.0", rundir=tmp_path)
    assert procs.status(tmp_path) == {"tracker": None, "phone": None}


def test_tracker_protocol_constants_match_tvm():
    from tvm.rpc import base

    assert rpc_net.TRACKER_MAGIC == base.RPC_TRACKER_MAGIC
    assert rpc_net.SUMMARY == base.TrackerCode.SUMMARY
    assert rpc_net.SUCCESS == base.TrackerCode.SUCCESS


@on_phone
def test_status_lists_the_registered_phone(phone):
    st = procs.status(phone["rundir"])
    assert st["tracker"]["alive"] and st["phone"]["alive"]
    assert st["phone"]["key"] == phone["key"]
    queue = st["tracker"]["summary"]["queue_info"][phone["key"]]
    assert queue["free"] in (0, 1) and queue["pending"] == 0  # idle: nobody waits for it
    keys = [s["key"] for s in st["tracker"]["summary"]["server_info"]]
    assert f"server:{phone['key']}" in keys


@on_phone
def test_cli_status_commands(phone, monkeypatch, capsys):
    from deploy import cli

    parser = argparse.ArgumentParser(prog="mdl-tvm")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    monkeypatch.setenv("MDL_TVM_RUN_DIR", str(phone["rundir"]))
    args = parser.parse_args(["tracker", "status"])
    assert args.func(args) == 0
    args = parser.parse_args(["device", "status"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"{phone['tracker'][0]}:{phone['tracker'][1]}" in out
    assert f"key {phone['key']!r}" in out
    args = parser.parse_args(["device", "insns", "m.so", "--input", "a.npy", "--runs", "3"])
    assert args.runs == 3 and args.input == ["a.npy"] and callable(args.func)
    args = parser.parse_args(["device", "start", "--tracker", "127.0.0.1:9", "--key", "k"])
    assert args.tracker == "127.0.0.1:9" and args.key == "k" and args.host == "127.0.0.1"


def test_liveness_is_the_start_tick_not_the_wall_clock(tmp_path):
    """A running process stays alive when the wall clock (psutil's btime) steps by a
    second; a reused pid (other start tick) is not ours."""
    import json
    import subprocess

    import psutil

    child = subprocess.Popen(["sleep", "60"])
    try:
        state = {"pid": child.pid, "pgid": child.pid, "cmd": ["sleep"], "log": "",
                 "create_time": psutil.Process(child.pid).create_time() + 1.0,
                 "start_ticks": procs.start_ticks(child.pid)}
        (tmp_path / "phone.json").write_text(json.dumps(state))
        assert procs.status(tmp_path)["phone"]["alive"]
        reused = dict(state, start_ticks=state["start_ticks"] - 1)
        (tmp_path / "phone.json").write_text(json.dumps(reused))
        assert not procs.status(tmp_path)["phone"]["alive"]
    finally:
        child.kill()
        child.wait()
    with pytest.raises(psutil.NoSuchProcess):
        procs.start_ticks(child.pid)
