"""Host-side prerequisites of the emulated phone: Debian packages, the mirror, QEMU's header.

Everything here talks to Debian's package tools only (``apt-get``, ``dpkg-query``). The
mirror is read from the machine's own APT sources, never hard-coded.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from mdl_tvm.core.errors import ToolchainError

SUITE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

#: command (or absolute file) -> Debian package that provides it
HOST_TOOLS = {
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-aarch64": "qemu-user",
    "debootstrap": "debootstrap",
    "dpkg-deb": "dpkg",
    "gcc": "gcc",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "xz": "xz-utils",
    KEYRING: "debian-archive-keyring",
}


def _present(tool: str) -> bool:
    return os.path.exists(tool) if tool.startswith("/") else shutil.which(tool) is not None


def missing_packages() -> list[str]:
    """Return the Debian packages whose commands the phone needs but this host lacks.

    Returns
    -------
    list of str
        Package names, empty when everything is installed.
    """
    return sorted({pkg for tool, pkg in HOST_TOOLS.items() if not _present(tool)})


def ensure_host_packages(log=print) -> None:
    """Install missing host packages with apt-get (as root), or fail with the command to run.

    Parameters
    ----------
    log : callable
        Progress printer.

    Raises
    ------
    ToolchainError
        When packages are missing and this process cannot install them.
    """
    pkgs = missing_packages()
    if not pkgs:
        return
    cmd = "apt-get install -y --no-install-recommends " + " ".join(pkgs)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolchainError(
            f"the emulated phone needs Debian packages {', '.join(pkgs)}; install them as root: "
            f"`sudo apt-get update && sudo {cmd}`"
        )
    log(f"installing host packages: {' '.join(pkgs)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in (["apt-get", "update"], cmd.split()):
        res = subprocess.run(args, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise ToolchainError(f"`{' '.join(args)}` failed:\n{res.stderr[-2000:]}")
    still = missing_packages()
    if still:
        raise ToolchainError(f"packages {', '.join(still)} are still missing after apt-get")


def _apt_source_files() -> list[str]:
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    return files + sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))


def apt_sources() -> list[tuple[str, str, list[str]]]:
    """Parse the host's enabled binary APT sources (one-line and deb822 formats).

    Returns
    -------
    list of (uri, suite, components)
        One entry per URI and suite, in the order APT reads them.
    """
    out = []
    for path in _apt_source_files():
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if path.endswith(".sources"):
            for para in text.split("\n\n"):
                fields = {}
                for line in para.splitlines():
                    if ":" in line and not line.startswith(("#", " ", "\t")):
                        key, _, val = line.partition(":")
                        fields[key.strip().lower()] = val.split()
                if "deb" not in fields.get("types", []) or fields.get("enabled") == ["no"]:
                    continue
                for uri in fields.get("uris", []):
                    for suite in fields.get("suites", []):
                        out.append((uri, suite, fields.get("components", ["main"])))
        else:
            for line in text.splitlines():
                line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0])
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb":
                    out.append((parts[1], parts[2], parts[3:] or ["main"]))
    return out


def debian_mirror() -> str:
    """Return the Debian mirror URI to bootstrap the sysroot from.

    ``MDL_TVM_DEBIAN_MIRROR`` wins; otherwise the host's APT source for ``bookworm`` (or the
    first main-archive source).

    Returns
    -------
    str
        Mirror URI, e.g. the ``URIs:`` value of ``/etc/apt/sources.list.d/debian.sources``.

    Raises
    ------
    ToolchainError
        When no Debian source is configured.
    """
    if os.environ.get("MDL_TVM_DEBIAN_MIRROR"):
        return os.environ["MDL_TVM_DEBIAN_MIRROR"]
    sources = apt_sources()
    for uri, suite, _ in sources:
        if suite == SUITE:
            return uri
    for uri, suite, _ in sources:
        if "-" not in suite and uri.rstrip("/").endswith("/debian"):
            return uri
    raise ToolchainError(
        "no Debian mirror found in /etc/apt/sources.list*; set MDL_TVM_DEBIAN_MIRROR to one"
    )


def qemu_source_version() -> str:
    """Return the source version of the installed ``qemu-user`` package ('' if unknown)."""
    res = subprocess.run(
        ["dpkg-query", "-W", "-f=${source:Version}", "qemu-user"], capture_output=True, text=True
    )
    return res.stdout.strip() if res.returncode == 0 else ""


def fetch_qemu_plugin_header(workdir: Path, log=print) -> Path:
    """Download Debian's QEMU source and extract ``include/qemu/qemu-plugin.h``.

    Uses a private APT configuration under ``workdir`` (deb-src entries made from the host's
    sources), so the system's APT setup is left untouched. ``MDL_TVM_QEMU_PLUGIN_H`` may
    point at a header instead.

    Parameters
    ----------
    workdir : Path
        Scratch directory (created; the source archives are downloaded there).
    log : callable
        Progress printer.

    Returns
    -------
    Path
        Directory that contains ``qemu-plugin.h``.

    Raises
    ------
    ToolchainError
        When the source package cannot be downloaded or lacks the header.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    inc = workdir / "include"
    inc.mkdir(exist_ok=True)
    given = os.environ.get("MDL_TVM_QEMU_PLUGIN_H")
    if given:
        shutil.copyfile(given, inc / "qemu-plugin.h")
        return inc
    lines = sorted({f"deb-src {u} {s} {' '.join(c)}" for u, s, c in apt_sources()})
    if not lines:
        raise ToolchainError("no APT sources to derive deb-src entries from")
    for sub in ("lists/partial", "cache/archives/partial"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    (workdir / "sources.list").write_text("\n".join(lines) + "\n")
    opts = [
        f"-oDir::Etc::SourceList={workdir / 'sources.list'}",
        "-oDir::Etc::SourceParts=/nonexistent",
        f"-oDir::State::Lists={workdir / 'lists'}",
        f"-oDir::Cache={workdir / 'cache'}",
        "-oDebug::NoLocking=1",
        "-qq",
    ]
    log("downloading Debian's qemu source package for qemu-plugin.h")
    res = subprocess.run(["apt-get", *opts, "update"], capture_output=True, text=True)
    if res.returncode != 0:
        raise ToolchainError(f"apt-get update (deb-src) failed:\n{res.stderr[-2000:]}")
    version = qemu_source_version()
    for spec in ([f"qemu={version}"] if version else []) + ["qemu"]:
        res = subprocess.run(
            ["apt-get", *opts, "source", "--download-only", spec],
            cwd=workdir,
            capture_output=True,
            text=True,
        )
        if res.returncode == 0:
            break
    else:
        raise ToolchainError(
            f"apt-get source qemu failed (or set MDL_TVM_QEMU_PLUGIN_H to a qemu-plugin.h of "
            f"QEMU {version or '7.2'}):\n{res.stderr[-2000:]}"
        )
    tarballs = sorted(workdir.glob("qemu_*.orig.tar.*"))
    if not tarballs:
        raise ToolchainError(f"no qemu orig tarball was downloaded into {workdir}")
    with tarfile.open(tarballs[0]) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith("include/qemu/qemu-plugin.h"):
                src = tar.extractfile(member)
                (inc / "qemu-plugin.h").write_bytes(src.read())
                break
        else:
            raise ToolchainError(f"{tarballs[0].name} has no include/qemu/qemu-plugin.h")
    for f in workdir.glob("qemu_*"):
        f.unlink()
    shutil.rmtree(workdir / "lists", ignore_errors=True)
    shutil.rmtree(workdir / "cache", ignore_errors=True)
    return inc
