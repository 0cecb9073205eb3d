"""What an app ships: the model library, the native runtime and its header, in one folder.

    mdl-tvm deploy-bundle lenet-arm64.so -o lenet-bundle        # for the phone (aarch64)
    mdl-tvm deploy-bundle lenet-host.so -o lenet-x86 --arch host

`make_bundle` refuses a library that is not a MobileDL artifact, has no ``main_zc`` or is
built for another CPU than the bundle's. It copies the model as exported (its metadata and
integrity trailer intact), the native runtime of `deploy.native.build` (``mdl_run``,
``libmdl_runtime.so``, ``mdl_runtime.h``, stripped ``libtvm_ffi.so`` and
``libtvm_runtime.so``, found through ``$ORIGIN``: nothing to install, no Python) and a
``README.txt`` that says how to run and link it. The folder is filled beside the
destination and renamed into place; an existing folder is replaced only when it is an
earlier bundle.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from deploy.native.build import ARCHES, ensure_build
from deploy.native.elf import check_machine, host_machine
from mdl_tvm.core.artifact import read_metadata
from mdl_tvm.core.errors import ModelFormatError

README = "README.txt"
TITLE = "MobileDL deploy bundle"
ROLES = {"mdl_run": "runner (mdl_run MODEL.so -i x.npy -o out -n RUNS)",
         "libmdl_runtime.so": "C API (mdl_runtime.h)", "mdl_runtime.h": "C API header",
         "libtvm_ffi.so": "TVM FFI runtime (stripped)",
         "libtvm_runtime.so": "TVM runtime with the Relax VM (stripped)"}


@dataclass(frozen=True)
class Bundle:
    """A written bundle.

    Attributes
    ----------
    root : pathlib.Path
        The folder.
    arch : str
        ``"aarch64"`` or ``"host"``.
    model : str
        File name of the model library in it.
    files : dict
        ``{file name: bytes}`` of what an app ships (the README aside), the model first.
    """

    root: Path
    arch: str
    model: str
    files: dict

    @property
    def total_bytes(self) -> int:
        """Everything in the bundle."""
        return sum(self.files.values())

    @property
    def runtime_bytes(self) -> int:
        """Everything but the model."""
        return self.total_bytes - self.files[self.model]

    def table(self) -> str:
        """One line per file: name, bytes, role; then the totals."""
        width = max(map(len, self.files))
        rows = [f"  {name:<{width}}  {size:>10,}  "
                f"{ROLES.get(name, 'model' if name == self.model else '')}"
                for name, size in self.files.items()]
        rows.append(f"  {'total':<{width}}  {self.total_bytes:>10,}  (runtime without the "
                    f"model: {self.runtime_bytes:,})")
        return "\n".join(rows)


def machine_of(arch: str) -> str:
    """The ELF machine name of a bundle architecture (``host``: this machine's)."""
    if arch not in ARCHES:
        raise ValueError(f"unknown bundle architecture {arch!r}; choose one of {ARCHES}")
    return host_machine() if arch == "host" else "aarch64"


def check_library(path, arch: str = "aarch64") -> dict:
    """Refuse what cannot go into an `arch` bundle; returns the library's metadata.

    Raises
    ------
    ModelFormatError
        When `path` is not a MobileDL library, or has no ``main_zc``.
    UnknownTargetError
        When it is built for another CPU.
    """
    fix = ("compile it for a phone profile (mdl-tvm compile MODEL --target arm64 / "
           "cortex-a76)" if arch == "aarch64" else "compile it with --target host")
    check_machine(path, machine_of(arch), f"the bundle is for {arch}: {fix}, or pass --arch "
                  + ("host" if arch == "aarch64" else "aarch64"))
    meta = read_metadata(str(path))
    data = Path(path).read_bytes()
    if b"mdl_zc_plan" not in data or b"main_zc" not in data:
        raise ModelFormatError(
            f"{path} has no zero-copy entry point (main_zc), which the native runtime runs: "
            "it was built before MobileDL emitted one, with zero_copy=False, or from a graph "
            "the pass cannot plan (CompiledModel.zero_copy['reason']); recompile it")
    return meta


def _requirements(paths) -> str:
    """``glibc >= 2.x, libstdc++ GLIBCXX >= 3.4.y``: the newest symbol versions needed."""
    glibc, glibcxx = (2, 17), 0
    for path in paths:
        data = Path(path).read_bytes()
        glibc = max([glibc, *((int(a), int(b)) for a, b in re.findall(rb"GLIBC_(\d+)\.(\d+)",
                                                                      data))])
        glibcxx = max([glibcxx, *(int(c) for c in re.findall(rb"GLIBCXX_3\.4\.(\d+)", data))])
    return f"glibc >= {glibc[0]}.{glibc[1]}, libstdc++ with GLIBCXX_3.4.{glibcxx}"


def _readme(bundle: Bundle, meta: dict, needs: str) -> str:
    inputs = ", ".join(f"{s['name']} {s['dtype']}{tuple(s['shape'])}" for s in meta["inputs"])
    args = " ".join(f"-i input{i}.npy" for i in range(len(meta["inputs"])))
    return (f"{TITLE}: {bundle.model} ({meta['target']}, {meta['mtriple']}) for {bundle.arch} "
            f"Linux, {bundle.total_bytes:,} bytes.\n"
            f"Run it:   ./mdl_run {bundle.model} {args} -o out -n 10   "
            f"(inputs: {inputs}; writes out/out0.npy ...; prints ms per inference)\n"
            f"Link it:  cc app.c -I. -L. -lmdl_runtime -Wl,-rpath,'$ORIGIN'   "
            f"(C API and example: mdl_runtime.h)\n"
            f"Needs {needs}; no Python. Keep the files in one folder.\n\n"
            f"{bundle.table()}\n")


def _is_bundle(path: Path) -> bool:
    try:
        return (path / README).read_text().startswith(TITLE)
    except OSError:
        return False


def make_bundle(library, out_dir, arch: str = "aarch64", env=None) -> Bundle:
    """Write the deploy bundle of `library` for `arch` into `out_dir`.

    Parameters
    ----------
    library : str or os.PathLike
        A MobileDL library with ``main_zc`` (``mdl-tvm compile``, ``CompiledModel.export``).
    out_dir : str or os.PathLike
        The folder to write: new, empty, or an earlier bundle (replaced).
    arch : str
        ``"aarch64"`` (the phone, default) or ``"host"``.
    env : deploy.device.DeviceEnv, optional
        The phone whose device site provides the aarch64 runtime.

    Returns
    -------
    Bundle

    Raises
    ------
    ModelFormatError, UnknownTargetError
        See `check_library`.
    ValueError
        When `out_dir` holds other files.
    ToolchainError
        When the native runtime cannot be built.
    """
    meta = check_library(library, arch)
    out = Path(out_dir).absolute()
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_bundle(out))):
        raise ValueError(f"{out} exists and is not an empty folder or an earlier bundle: "
                         "give a new folder")
    build = ensure_build(arch, env)
    model = Path(library).name
    if model in ROLES:
        raise ValueError(f"the model may not be named {model}: rename the library")
    tmp, old = (out.with_name(f".{out.name}.{os.getpid()}.{s}") for s in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copy2(library, tmp / model)
        for path in build.deploy_files():
            shutil.copy2(path, tmp / path.name)
        shipped = [tmp / model, *(tmp / p.name for p in build.deploy_files())]
        bundle = Bundle(out, arch, model, {p.name: p.stat().st_size for p in shipped})
        needs = _requirements(p for p in shipped if p.suffix != ".h")
        (tmp / README).write_text(_readme(bundle, meta, needs))
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return bundle
