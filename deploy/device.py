"""The emulated arm64 phone: a Debian arm64 sysroot, TVM's runtime for it, and QEMU.

``setup()`` builds, once, under ``$MDL_TVM_CACHE/device`` (default ``~/.cache/mdl_tvm``):

* ``sysroot/``  Debian bookworm arm64 (python3.11), from ``debootstrap --foreign`` + ``dpkg -x``;
* ``site/``     aarch64 wheels of TVM's runtime (compiler library removed), numpy, ...;
* ``plugin/``   ``libinsn.so``, a QEMU TCG plugin that counts retired instructions;
* ``bin/python3`` a wrapper that runs the arm64 python under ``qemu-aarch64-static``.

Each part is built in a temporary directory, moved into place, and described by a stamp
(file count and bytes) written atomically after it; ``setup.json`` is written last. A re-run
only re-checks the stamps (well under a second); a missing or changed part is rebuilt.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from deploy import hosttools
from deploy.cpus import DEFAULT_CPU, cpu_features
from deploy.parts import build_part, part_ok
from deploy.peers.install import HOST_WHEELS, PEER_WHEELS, build_peers, build_peers_host
from mdl_tvm.core.errors import ToolchainError
from mdl_tvm.core.io import atomic_write, cache_root

RECIPE = 2  # 2: /proc/cpuinfo of the emulated core, phone functions, peer parts
GUEST_PYTHON = "usr/bin/python3.11"
INCLUDE = "python3,python3-minimal,libpython3.11-stdlib,libstdc++6"
DEVICE_WHEELS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "numpy==2.4.6",
    "ml_dtypes==0.6.0",
    "psutil==7.2.2",
    "cloudpickle==3.1.3",
    "typing_extensions==4.16.0",
)
PLATFORM = (
    "--only-binary=:all: --python-version 3.11 --implementation cp --platform "
    "manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64"
).split()
# not needed on the phone: the compiler (229 MB), CUDA runtime, sources and web runtime
SLIM = "lib/libtvm_compiler.so lib/libtvm_runtime_cuda.so 3rdparty src web".split()
SITECUSTOMIZE_SRC = Path(__file__).with_name("guest_sitecustomize.py")  # RPC workers re-enter QEMU
PLUGIN_SRC = Path(__file__).with_name("insn_plugin.c")
PHONE_SRC = Path(__file__).with_name("phone_functions.py")
CPUINFO = (  # one Cortex-A76 core, as Linux prints it
    f"processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {' '.join(sorted(cpu_features(DEFAULT_CPU)))}"
    "\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b"
    "\nCPU revision\t: 1\n\n")


def device_dir() -> Path:
    """Return the directory that holds the emulated phone (``cache_root()/device``)."""
    return cache_root("device")


@dataclass(frozen=True)
class DeviceEnv:
    """Paths of a set-up emulated phone.

    Attributes
    ----------
    root : Path
        ``device_dir()``.
    sysroot : Path
        Debian arm64 root file system (QEMU's ``-L``).
    site : Path
        Device site-packages (TVM runtime, numpy); on the guest's ``PYTHONPATH``.
    python : Path
        Wrapper script: runs the arm64 ``python3.11`` under ``qemu-aarch64-static``.
    qemu : str
        ``qemu-aarch64-static`` (fast, no plugins).
    qemu_plugins : str
        Debian's dynamic ``qemu-aarch64``, which loads TCG plugins.
    plugin : Path
        ``libinsn.so`` instruction counter.
    runtime_extra : Path
        ``libtvm_runtime_extra.so`` for the RPC server's ``--load-library``.
    peers : Path
        The peer engines' aarch64 packages (``setup(peers=True)``).
    peers_host : Path
        This machine's MNN converter (``setup(peers=True)``).
    """

    root: Path
    sysroot: Path
    site: Path
    python: Path
    qemu: str
    qemu_plugins: str
    plugin: Path
    runtime_extra: Path
    peers: Path
    peers_host: Path

    @property
    def guest_python(self) -> Path:
        """The arm64 interpreter inside the sysroot."""
        return self.sysroot / GUEST_PYTHON


def _env_paths(root: Path) -> DeviceEnv:
    return DeviceEnv(
        root=root,
        sysroot=root / "sysroot",
        site=root / "site",
        python=root / "bin" / "python3",
        qemu=shutil.which("qemu-aarch64-static") or "/usr/bin/qemu-aarch64-static",
        qemu_plugins=shutil.which("qemu-aarch64") or "/usr/bin/qemu-aarch64",
        plugin=root / "plugin" / "libinsn.so",
        runtime_extra=root / "site" / "tvm" / "lib" / "libtvm_runtime_extra.so",
        peers=root / "peers",
        peers_host=root / "peers-host",
    )


def _part_key(name: str) -> str:
    if name == "sysroot":
        return f"{RECIPE}:{hosttools.SUITE}:{INCLUDE}:{CPUINFO}"
    if name == "site":
        return (f"{RECIPE}:" + ",".join(DEVICE_WHEELS) + SITECUSTOMIZE_SRC.read_text()
                + PHONE_SRC.read_text())
    if name == "peers":
        return f"{RECIPE}:" + ",".join(PEER_WHEELS)
    if name == "peers-host":
        return f"{RECIPE}:" + ",".join(HOST_WHEELS)
    return f"{RECIPE}:{hosttools.qemu_source_version()}:{PLUGIN_SRC.read_text()}"


def _run(cmd: list, log_file: Path, what: str, **kw) -> None:
    with open(log_file, "a") as log:
        log.write(f"$ {' '.join(map(str, cmd))}\n")
        log.flush()
        res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **kw)
    if res.returncode != 0:
        tail = log_file.read_text()[-2000:]
        raise ToolchainError(f"{what} failed (exit {res.returncode}); log {log_file}:\n{tail}")


def _build_sysroot(tmp: Path, logf: Path, log) -> None:
    if os.geteuid() != 0:
        raise ToolchainError(
            "building the arm64 sysroot runs debootstrap, which needs root: run "
            "`mdl-tvm device setup` once as root (MDL_TVM_CACHE=DIR puts the result in DIR)"
        )
    mirror = hosttools.debian_mirror()
    log(f"debootstrap {hosttools.SUITE} arm64 from {mirror} (about 30 s)")
    cmd = ["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", f"--include={INCLUDE}"]
    if os.path.exists(hosttools.KEYRING):
        cmd.append(f"--keyring={hosttools.KEYRING}")
    _run(cmd + [hosttools.SUITE, str(tmp), mirror], logf, "debootstrap")
    debs = sorted((tmp / "var/cache/apt/archives").glob("*.deb"))
    if not debs:
        raise ToolchainError(f"debootstrap downloaded no packages; see {logf}")
    for deb in debs:
        _run(["dpkg", "-x", str(deb), str(tmp)], logf, f"dpkg -x {deb.name}")
        deb.unlink()
    shutil.rmtree(tmp / "debootstrap", ignore_errors=True)
    # empty mount points would hide the host's /tmp, /dev, /proc from the guest (QEMU -L)
    for d in ("tmp", "var/tmp", "dev", "proc", "sys", "run"):
        p = tmp / d
        if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()
    if not (tmp / GUEST_PYTHON).exists():
        raise ToolchainError(f"the sysroot has no {GUEST_PYTHON}; see {logf}")
    # QEMU user mode shows guests the host's /proc/cpuinfo (x86): engines that parse it
    # (ONNX Runtime's cpuinfo) crash. QEMU's -L lookup finds this file first.
    (tmp / "proc").mkdir()
    (tmp / "proc" / "cpuinfo").write_text(CPUINFO)
    # Debian compiles byte code in postinst, which never ran: do it with the host's 3.11
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(tmp / "usr/lib/python3.11")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _build_site(tmp: Path, logf: Path, log) -> None:
    log("downloading and installing aarch64 wheels for the device")
    wheels = tmp.parent / "wheels.tmp"
    shutil.rmtree(wheels, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run(
        pip + ["download", "--no-deps", *PLATFORM, "-d", str(wheels), *DEVICE_WHEELS],
        logf,
        "pip download",
    )
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    _run(
        pip
        + [
            "install",
            "--no-deps",
            "--no-index",
            "--no-compile",
            *PLATFORM,
            "--target",
            str(tmp),
            *files,
        ],
        logf,
        "pip install --target",
    )
    shutil.rmtree(wheels, ignore_errors=True)
    for rel in SLIM:
        p = tmp / "tvm" / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    shutil.rmtree(tmp / "bin", ignore_errors=True)
    shutil.copyfile(SITECUSTOMIZE_SRC, tmp / "sitecustomize.py")
    shutil.copyfile(PHONE_SRC, tmp / "mdl_phone.py")
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for req in ("tvm/lib/libtvm_runtime.so", "tvm/lib/libtvm_runtime_extra.so", "numpy"):
        if not (tmp / req).exists():
            raise ToolchainError(f"device site-packages lack {req}; see {logf}")


def _build_plugin(tmp: Path, logf: Path, log) -> None:
    log("building the QEMU instruction-count plugin")
    inc = hosttools.fetch_qemu_plugin_header(tmp / "src", log=log)
    out = tmp / "libinsn.so"
    cc = ["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-I", str(inc), str(PLUGIN_SRC), "-o"]
    _run([*cc, str(out)], logf, "compiling insn_plugin.c")
    shutil.copyfile(inc / "qemu-plugin.h", tmp / "qemu-plugin.h")
    shutil.rmtree(tmp / "src")


def _smoke_plugin(env: DeviceEnv, logf: Path) -> None:
    count = env.root / "plugin-smoke.txt"
    _run(
        [
            env.qemu_plugins,
            "-L",
            str(env.sysroot),
            "-plugin",
            f"{env.plugin},out={count}",
            str(env.sysroot / "usr/bin/true"),
        ],
        logf,
        "plugin smoke test",
    )
    n = int(count.read_text())
    count.unlink()
    if n <= 0:
        raise ToolchainError("the instruction-count plugin counted nothing")


BUILDERS = {"sysroot": _build_sysroot, "site": _build_site, "plugin": _build_plugin}
HASHED = {  # key files whose content the stamp checks (the rest: count and bytes)
    "sysroot": (GUEST_PYTHON,),
    "site": ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so"),
    "plugin": ("libinsn.so",),
}
PEER_BUILDERS = {"peers": partial(build_peers, _run), "peers-host": partial(build_peers_host, _run)}


def _wrapper_text(env: DeviceEnv) -> str:
    q = {k: shlex.quote(str(v)) for k, v in (("python", env.python), ("site", env.site),
                                               ("sysroot", env.sysroot),
                                               ("guest", env.guest_python))}
    return f"""#!/bin/sh
# Written by deploy.device.setup(): the emulated phone's python3 (arm64, under QEMU).
export MDL_TVM_DEVICE_PYTHON={q["python"]}
export PYTHONPATH={q["site"]}
export TVM_USE_RUNTIME_LIB=1
export PYTHONNOUSERSITE=1
export PYTHONDONTWRITEBYTECODE=1
unset PYTHONHOME PYTHONSTARTUP OPENBLAS_CORETYPE OPENBLAS_L2_SIZE LD_LIBRARY_PATH LD_PRELOAD
exec "${{MDL_TVM_QEMU:-{env.qemu}}}" -cpu "${{MDL_TVM_QEMU_CPU:-{DEFAULT_CPU}}}" \\
    ${{MDL_TVM_QEMU_PLUGIN:+-plugin "$MDL_TVM_QEMU_PLUGIN"}} \\
    -L {q["sysroot"]} {q["guest"]} "$@"
"""


def _write_wrapper(env: DeviceEnv) -> None:
    env.python.parent.mkdir(parents=True, exist_ok=True)
    text = _wrapper_text(env)
    if not env.python.exists() or env.python.read_text() != text:
        atomic_write(env.python, text)
    env.python.chmod(0o755)


def _builders(peers: bool) -> dict:
    return {**BUILDERS, **(PEER_BUILDERS if peers else {})}


def is_ready(peers: bool = False) -> bool:
    """Return True when the cached phone (with the peer engines, if asked) is complete
    (stamps match the files on disk)."""
    env = _env_paths(device_dir())
    try:
        stamp = json.loads((env.root / "setup.json").read_text())
    except (OSError, ValueError):
        return False
    parts = stamp.get("parts", {})
    return (
        stamp.get("recipe") == RECIPE
        and all(part_ok(env.root, name, _part_key(name), parts.get(name, {}),
                        HASHED.get(name, ())) for name in _builders(peers))
        and env.python.exists()
        and env.python.read_text() == _wrapper_text(env)
        and not hosttools.missing_packages()
    )


def setup(force: bool = False, log=None, peers: bool = False) -> DeviceEnv:
    """Build (or re-check) the emulated phone and return its paths.

    Parameters
    ----------
    force : bool
        Rebuild every part even if the cache looks complete.
    log : callable, optional
        Progress printer (default: print to stderr).
    peers : bool
        Also install the peer engines (ONNX Runtime, NCNN, MNN, LiteRT) for the phone and
        the MNN converter for this machine (`deploy.peers.install`).

    Returns
    -------
    DeviceEnv
        Paths of the sysroot, device site-packages, wrapper and plugin.

    Raises
    ------
    ToolchainError
        When host packages are missing (and cannot be installed) or a build step fails.
    """
    log = log or (lambda msg: print(f"[device] {msg}", file=sys.stderr, flush=True))
    root = device_dir()
    root.mkdir(parents=True, exist_ok=True)
    env = _env_paths(root)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; others wait, then re-check
        if not force and is_ready(peers):
            return env
        hosttools.ensure_host_packages(log)
        logf = root / "setup.log"
        logf.write_text("")
        try:
            old = json.loads((root / "setup.json").read_text()).get("parts", {})
        except (OSError, ValueError):
            old = {}
        (root / "setup.json").unlink(missing_ok=True)  # rewritten last, when all parts are ready
        for stale in root.glob("*.tmp"):  # left by an interrupted build
            shutil.rmtree(stale, ignore_errors=True)
        parts = {k: v for k, v in old.items()
                 if part_ok(root, k, _part_key(k), v, HASHED.get(k, ()))}
        for name, build in _builders(peers).items():
            if force or not part_ok(root, name, _part_key(name), hashed=HASHED.get(name, ())):
                parts[name] = build_part(root, name, _part_key(name),
                                         lambda tmp, b=build: b(tmp, logf, log), log,
                                         HASHED.get(name, ()))
            else:
                parts[name] = json.loads((root / f"{name}.json").read_text())
        _write_wrapper(env)
        _smoke_plugin(env, logf)
        atomic_write(root / "setup.json", json.dumps({"recipe": RECIPE, "parts": parts}))
    return env


def python_cmd(env: DeviceEnv | None = None) -> list[str]:
    """Return the argv prefix that runs the phone's python3 (sets the phone up if needed).

    Parameters
    ----------
    env : DeviceEnv, optional
        An already set-up phone; ``setup()`` is called when omitted.

    Returns
    -------
    list of str
        e.g. ``["/root/.cache/mdl_tvm/device/bin/python3"]``; append script and arguments.
    """
    env = env or setup()
    return [str(env.python)]
