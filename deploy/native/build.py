"""Build the native runtime for this machine and for the phone: a plain compiler call, cached.

    >>> from deploy.native.build import ensure_build
    >>> phone = ensure_build("aarch64")     # about 10 s the first time, then a stamp check
    >>> phone.runner, phone.library, phone.header, phone.runtime_libs

What is built (``deploy/native/``): ``libmdl_runtime.so`` (the `mdl_runtime.h` C API over the
TVM runtime), ``mdl_run`` (the runner, its first client) and ``c_api_test`` (a C11 client
that walks the API's error paths), each linked with ``-Wl,-rpath,$ORIGIN``, beside stripped
copies of ``libtvm_ffi.so`` and ``libtvm_runtime.so``: one directory that runs as it is.
Headers come from the apache-tvm-ffi wheel (architecture independent); libraries from the
installed wheels (``host``) or from the phone's device site (``aarch64``, see
`deploy.device.DeviceEnv`). The result lives in ``cache_root("native", ARCH-KEY)``, KEY
hashing the sources, flags, compiler version and wheel versions, so a change to any of
them builds anew; a build is made in a temporary directory and renamed into place.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy.device import setup
from mdl_tvm.core.errors import ToolchainError
from mdl_tvm.core.io import atomic_write, cache_root

HERE = Path(__file__).parent
ARCHES = ("host", "aarch64")
SOURCES = ("mdl_runtime.h", "mdl_runtime.cc", "mdl_run.cc", "c_api_test.c")
RUNTIME_LIBS = ("libtvm_ffi.so", "libtvm_runtime.so")
WHEELS = ("apache-tvm", "apache-tvm-ffi")
RECIPE = 1
CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-Wall")
EXPORTS = "{ global: mdl_*; local: *; };\n"  # libmdl_runtime.so exports the C API only
# 16 KiB segment alignment: loads on 4 KiB and 16 KiB page kernels (Android 15+), and
# avoids the 64 KiB padding of the aarch64 default
ARCH_LDFLAGS = {"host": (), "aarch64": ("-Wl,-z,max-page-size=16384",)}


@dataclass(frozen=True)
class Toolchain:
    """The compilers and strip of one architecture."""

    cxx: str
    cc: str
    strip: str


TOOLCHAINS = {
    "host": Toolchain("g++", "gcc", "strip"),
    "aarch64": Toolchain("aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc",
                         "aarch64-linux-gnu-strip"),
}
PACKAGES = {"g++": "g++", "gcc": "gcc", "strip": "binutils",
            "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
            "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
            "aarch64-linux-gnu-strip": "binutils-aarch64-linux-gnu"}


@dataclass(frozen=True)
class NativeBuild:
    """A built native runtime directory.

    Attributes
    ----------
    arch : str
        ``"host"`` or ``"aarch64"``.
    root : pathlib.Path
        The directory; everything in it finds its neighbours through ``$ORIGIN``.
    """

    arch: str
    root: Path

    @property
    def runner(self) -> Path:
        """``mdl_run``: the command-line runner."""
        return self.root / "mdl_run"

    @property
    def library(self) -> Path:
        """``libmdl_runtime.so``: the C API an app links."""
        return self.root / "libmdl_runtime.so"

    @property
    def header(self) -> Path:
        """``mdl_runtime.h``."""
        return self.root / "mdl_runtime.h"

    @property
    def c_api_test(self) -> Path:
        """The C11 client that checks the API's error paths."""
        return self.root / "c_api_test"

    @property
    def runtime_libs(self) -> tuple[Path, ...]:
        """The stripped TVM runtime libraries beside the runner."""
        return tuple(self.root / name for name in RUNTIME_LIBS)

    def deploy_files(self) -> tuple[Path, ...]:
        """What an app needs besides the model: runner, C API library and header, runtime."""
        return (self.runner, self.library, self.header, *self.runtime_libs)


def _check_arch(arch: str) -> None:
    if arch not in ARCHES:
        raise ValueError(f"unknown native architecture {arch!r}; choose one of {ARCHES}")


def _package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (``import tvm`` loads
    the compiler, ``import tvm_ffi`` torch)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError(f"the Python package {name!r} is not installed: pip install "
                             "apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1")
    return Path(spec.submodule_search_locations[0])


def _site_versions(site: Path) -> dict:
    found = {d.metadata["Name"].lower(): d.version
             for d in importlib.metadata.distributions(path=[str(site)])}
    return {w: found.get(w, "?") for w in WHEELS}


def wheel_paths(arch: str, env=None) -> tuple[Path, tuple[Path, Path], dict]:
    """``(include dir, (tvm_ffi lib dir, tvm lib dir), wheel versions)`` for `arch`.

    ``host``: the installed wheels; ``aarch64``: the phone's device site (`env`, or
    `deploy.device.setup()`).
    """
    _check_arch(arch)
    if arch == "host":
        ffi, tvm = _package_dir("tvm_ffi"), _package_dir("tvm")
        versions = {w: importlib.metadata.version(w) for w in WHEELS}
    else:
        if env is None:

            env = setup()
        ffi, tvm = env.site / "tvm_ffi", env.site / "tvm"
        versions = _site_versions(env.site)
    include = ffi / "include"
    if not include.is_dir():
        include = _package_dir("tvm_ffi") / "include"  # headers do not depend on the CPU
    libs = (ffi / "lib", tvm / "lib")
    fix = ("pip install --force-reinstall apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1"
           if arch == "host" else "mdl-tvm device setup --force")
    for lib_dir, name in zip(libs, RUNTIME_LIBS, strict=True):
        if not (lib_dir / name).is_file():
            raise ToolchainError(f"{lib_dir / name} is missing: reinstall the TVM wheels ({fix})")
    return include, libs, versions


def tool(name: str) -> str:
    """The path of the command `name`; ToolchainError naming its Debian package if missing."""
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"{name} is missing: apt-get install {PACKAGES.get(name, name)} "
                             "(scripts/setup.sh installs it)")
    return path


def build_key(arch: str, env=None) -> str:
    """The cache key of `arch`'s build: sources, flags, compiler and wheel versions."""
    tc = TOOLCHAINS[arch]
    _, _, versions = wheel_paths(arch, env)
    compiler = subprocess.run([tool(tc.cxx), "-dumpfullversion"], capture_output=True,
                              text=True).stdout.strip()
    h = hashlib.sha256(json.dumps([RECIPE, CXXFLAGS, ARCH_LDFLAGS[arch], EXPORTS, compiler,
                                   versions]).encode())
    for name in SOURCES:
        h.update((HERE / name).read_bytes())
    return h.hexdigest()[:16]


def _run(cmd: list, what: str) -> None:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if res.returncode != 0:
        raise ToolchainError(f"{what} failed (exit {res.returncode}):\n"
                             f"{' '.join(map(str, cmd))}\n{(res.stderr or res.stdout)[-2000:]}")


def _compile(arch: str, out: Path, include: Path, libs: tuple[Path, Path]) -> None:
    tc = TOOLCHAINS[arch]
    cxx, cc, strip = tool(tc.cxx), tool(tc.cc), tool(tc.strip)
    ld = [*ARCH_LDFLAGS[arch], "-Wl,-rpath,$ORIGIN", "-s"]
    (out / "exports.map").write_text(EXPORTS)
    _run([cxx, *CXXFLAGS, "-I", HERE, "-I", include, "-c", HERE / "mdl_runtime.cc",
          "-o", out / "mdl_runtime.o"], f"compiling mdl_runtime.cc for {arch}")
    _run([cxx, "-shared", "-o", out / "libmdl_runtime.so", out / "mdl_runtime.o",
          "-Wl,-soname,libmdl_runtime.so", f"-Wl,--version-script={out / 'exports.map'}",
          "-L", libs[0], "-ltvm_ffi", "-ldl", *ld], f"linking libmdl_runtime.so for {arch}")
    client = ["-L", out, "-lmdl_runtime", f"-Wl,-rpath-link,{libs[0]}", *ld]
    _run([cxx, *CXXFLAGS, "-I", HERE, HERE / "mdl_run.cc", "-o", out / "mdl_run", *client],
         f"building mdl_run for {arch}")
    _run([cc, "-std=c11", "-O2", "-Wall", "-Werror", "-I", HERE, HERE / "c_api_test.c",
          "-o", out / "c_api_test", *client], f"building c_api_test for {arch}")
    for name, lib_dir in zip(RUNTIME_LIBS, libs, strict=True):
        _run([strip, "--strip-unneeded", "-o", out / name, lib_dir / name], f"stripping {name}")
    shutil.copyfile(HERE / "mdl_runtime.h", out / "mdl_runtime.h")
    for scratch in ("mdl_runtime.o", "exports.map"):
        (out / scratch).unlink()


def _stamp(root: Path) -> dict:
    return {p.name: p.stat().st_size for p in sorted(root.iterdir()) if p.name != "build.json"}


def _ready(root: Path, key: str) -> bool:
    try:
        stamp = json.loads((root / "build.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("key") == key and stamp.get("files") == _stamp(root)


def ensure_build(arch: str = "host", env=None, force: bool = False, log=None) -> NativeBuild:
    """The native runtime for `arch`, built when missing, damaged or out of date.

    Parameters
    ----------
    arch : str
        ``"host"`` (this machine, the installed wheels) or ``"aarch64"`` (the phone; its
        libraries come from the device site).
    env : deploy.device.DeviceEnv, optional
        The phone, for ``aarch64`` (``deploy.device.setup()`` when omitted).
    force : bool
        Build even when the cached build is complete.
    log : callable, optional
        Progress printer, called when something is built.

    Returns
    -------
    NativeBuild

    Raises
    ------
    ToolchainError
        When a compiler or a wheel library is missing, or a build step fails (the message
        has the command and the compiler's output).
    """
    _check_arch(arch)
    if arch == "aarch64" and env is None:

        env = setup()
    include, libs, _ = wheel_paths(arch, env)
    key = build_key(arch, env)
    base = cache_root("native")
    base.mkdir(parents=True, exist_ok=True)
    build = NativeBuild(arch, base / f"{arch}-{key}")
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; others wait, then re-check
        if not force and _ready(build.root, key):
            return build
        if log:
            log(f"building the native runtime for {arch} in {build.root}")
        tmp = base / f".{arch}-{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _compile(arch, tmp, include, libs)
            atomic_write(tmp / "build.json", json.dumps({"key": key, "files": _stamp(tmp)}))
            shutil.rmtree(build.root, ignore_errors=True)
            os.replace(tmp, build.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for stale in base.glob(f"{arch}-*"):  # builds of older sources or wheels
            if stale != build.root:
                shutil.rmtree(stale, ignore_errors=True)
    return build
