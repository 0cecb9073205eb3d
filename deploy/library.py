"""Open an exported library on this machine and make a Relax VM for it.

The one place that turns a path (or a module, or a model) into a VM: `HostModel` and the
zero-copy executor both go through `host_vm`.
"""

from __future__ import annotations

from mdl_tvm.core.artifact import read_metadata
from mdl_tvm.core.errors import UnknownTargetError
from mdl_tvm.core.targets import TargetProfile, get_profile


def open_library(path: str) -> tuple[dict, TargetProfile, object]:
    """``(metadata, profile, tvm.runtime.Module)`` of an exported library.

    The profile is this machine's (``host``) when the library was built for its triple.

    Raises
    ------
    ModelFormatError
        When `path` is not a MobileDL artifact.
    UnknownTargetError
        When the library was built for a target this machine cannot execute.
    """
    meta = read_metadata(path)
    name = meta["target"]
    host = get_profile("host")
    if name != "host" and not meta["mtriple"].startswith(host.mtriple.split("-")[0]):
        raise UnknownTargetError(
            f"{path!r} is built for {name!r} ({meta['mtriple']}) and cannot be loaded on this "
            f"{host.mtriple} machine; run it on the device (mdl-tvm device start, deploy.remote)"
        )
    import tvm

    profile = host if name == "host" else get_profile(name)
    if profile.mtriple == host.mtriple:
        profile = host
    return meta, profile, tvm.runtime.load_module(path)


def host_vm(source):
    """A Relax VM on this machine's CPU.

    Parameters
    ----------
    source : model with a ``vm()`` method, str or os.PathLike, module / executable, or VM
        A host model (`HostModel`, `CompiledModel`), an exported library's path, a loaded
        module or built executable, or a VM (returned as it is).
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine

    if isinstance(source, VirtualMachine):
        return source
    if callable(getattr(source, "vm", None)):
        return source.vm()
    if isinstance(source, str) or hasattr(source, "__fspath__"):
        _, profile, module = open_library(str(source))
        if not profile.is_host:
            raise UnknownTargetError(f"{source!r} is built for {profile.name!r}, not this "
                                     "machine; run it on the device (deploy.remote)")
        return VirtualMachine(module, tvm.cpu())
    return VirtualMachine(source, tvm.cpu())
