"""Named target profiles: the one place that knows which CPU a name means.

TVM 0.27 takes targets as dicts (`Target({"kind": "llvm", "mtriple": ...})`); the old
string form is rejected. A profile adds what TVM does not know: the cross compiler that
links the device library, whether the core has fp16 arithmetic, and how many lanes a
vector register holds.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field

from mdl_tvm.core.errors import ToolchainError, UnknownTargetError

AARCH64_CXX = "aarch64-linux-gnu-g++"


@dataclass(frozen=True)
class TargetProfile:
    """A named CPU the compiler can build for.

    Attributes
    ----------
    name : str
        Profile name, e.g. ``"arm64"``.
    description : str
        One line for ``mdl-tvm targets``.
    mtriple, mcpu : str
        LLVM triple and CPU (``mcpu`` may be empty for a generic CPU).
    mattr : tuple of str
        LLVM feature flags, e.g. ``("+neon", "+fullfp16")``.
    fp16_arith : bool
        True when the core computes in fp16 (ARMv8.2-A ``+fullfp16``).
    vector_bits : int
        Width of one SIMD register (128 for NEON, 256 for AVX2, 512 for AVX-512).
    num_cores : int
        Cores the runtime will use; schedules and tuning read it.
    toolchain : str
        ``"host"`` (the system compiler), ``"aarch64"`` (Debian's cross g++) or ``"ndk"``.
    qemu_cpu : str
        The core the emulated phone runs for this profile (QEMU ``-cpu``; empty for the
        host). ``cortex-a76`` for ARMv8.2-A profiles, ``cortex-a72`` for ARMv8.0-A ones.
    """

    name: str
    description: str
    mtriple: str
    mcpu: str = ""
    mattr: tuple[str, ...] = ()
    fp16_arith: bool = False
    vector_bits: int = 128
    num_cores: int = 4
    toolchain: str = "aarch64"
    qemu_cpu: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_host(self) -> bool:
        """True when code built for this profile runs on this machine."""
        return self.toolchain == "host"

    @property
    def is_arm64(self) -> bool:
        return self.mtriple.startswith("aarch64")

    def fp32_lanes(self) -> int:
        return self.vector_bits // 32

    def tvm_target(self):
        """The `tvm.target.Target` for this profile."""
        import tvm

        spec: dict = {"kind": "llvm", "mtriple": self.mtriple, "num-cores": self.num_cores}
        if self.mcpu:
            spec["mcpu"] = self.mcpu
        if self.mattr:
            spec["mattr"] = list(self.mattr)
        return tvm.target.Target(spec)

    def compiler(self):
        """The `fcompile` that links the device library; raises when it is not installed."""
        from tvm.support import cc

        if self.toolchain == "host":
            return None  # TVM's default: the system C++ compiler
        if self.toolchain == "aarch64":
            if shutil.which(AARCH64_CXX) is None:
                raise ToolchainError(
                    f"target {self.name!r} links with {AARCH64_CXX}, which is not installed; "
                    "install it with `apt-get install g++-aarch64-linux-gnu` "
                    "(or run scripts/setup.sh)"
                )
            return cc.cross_compiler(AARCH64_CXX)
        if self.toolchain == "ndk":
            ndk_cc = os.environ.get("TVM_NDK_CC")
            if not ndk_cc:
                home = os.environ.get("ANDROID_NDK_HOME")
                hint = f" (ANDROID_NDK_HOME={home} is set, but TVM_NDK_CC is not)" if home else ""
                raise ToolchainError(
                    f"target {self.name!r} needs the Android NDK{hint}: set TVM_NDK_CC to the "
                    "NDK's clang++, e.g. $ANDROID_NDK_HOME/toolchains/llvm/prebuilt/"
                    "linux-x86_64/bin/aarch64-linux-android28-clang++"
                )
            if shutil.which(ndk_cc) is None:
                raise ToolchainError(f"TVM_NDK_CC={ndk_cc} is not an executable compiler")
            from tvm.support import ndk

            return ndk.create_shared
        raise ValueError(f"unknown toolchain {self.toolchain!r}")


# x86 CPU names the host profile uses, with the /proc/cpuinfo flags each one needs: a
# library built for one of them executes illegal instructions on a CPU without those flags.
X86_ISAS: dict[str, tuple[str, int, frozenset]] = {
    # mcpu: (what it is called, vector bits, flags it needs)
    "skylake-avx512": ("AVX-512", 512, frozenset({"avx512f", "avx512bw", "avx512dq",
                                                  "avx512vl", "avx2", "fma"})),
    "haswell": ("AVX2+FMA", 256, frozenset({"avx2", "fma"})),
}


def missing_cpu_flags(mcpu: str, flags: set[str] | None = None) -> list[str]:
    """The CPU flags `mcpu` needs that this machine (or `flags`) lacks; empty when it runs."""
    needed = X86_ISAS.get(mcpu, ("", 0, frozenset()))[2]
    have = _cpu_flags() if flags is None else flags
    return sorted(needed - have)


def host_profile(machine: str, flags: set[str], cores: int) -> TargetProfile:
    """The ``host`` profile of a machine with this architecture, CPU flags and cores.

    On x86-64 the widest vector ISA the flags allow: AVX-512 (``skylake-avx512``, 512-bit
    registers, 32 of them), else AVX2 + FMA (``haswell``), else SSE2.
    """
    if machine == "x86_64":
        mcpu = next((name for name in X86_ISAS if not missing_cpu_flags(name, flags)), "")
        label, bits, _ = X86_ISAS.get(mcpu, ("SSE2", 128, frozenset()))
        return TargetProfile(
            name="host",
            description=f"this machine (x86-64, {label}, {cores} cores)",
            mtriple="x86_64-linux-gnu",
            mcpu=mcpu,
            vector_bits=bits,
            num_cores=cores,
            toolchain="host",
        )
    if machine == "aarch64":
        fp16 = "asimdhp" in flags
        return TargetProfile(
            name="host",
            description=f"this machine (aarch64{', fp16' if fp16 else ''}, {cores} cores)",
            mtriple="aarch64-linux-gnu",
            mattr=("+neon", "+fullfp16") if fp16 else ("+neon",),
            fp16_arith=fp16,
            num_cores=cores,
            toolchain="host",
        )
    return TargetProfile(
        name="host",
        description=f"this machine ({machine}, {cores} cores)",
        mtriple=f"{machine}-linux-gnu",
        num_cores=cores,
        toolchain="host",
    )


def _host_profile() -> TargetProfile:
    return host_profile(platform.machine(), _cpu_flags(), os.cpu_count() or 1)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _arm(name, description, mcpu="", fp16=False, cores=4, toolchain="aarch64", triple=None):
    mattr = ("+neon", "+fullfp16") if fp16 else ("+neon",)
    # QEMU 7.2 models: an ARMv8.2-A core for fp16 profiles (it has no Cortex-A55 model), an
    # ARMv8.0-A one otherwise; never `max` (SVE, SME, i8mm: no phone has them)
    return TargetProfile(
        name=name,
        description=description,
        mtriple=triple or "aarch64-linux-gnu",
        mcpu=mcpu,
        mattr=mattr,
        fp16_arith=fp16,
        num_cores=cores,
        toolchain=toolchain,
        qemu_cpu="cortex-a76" if fp16 else "cortex-a72",
    )


PROFILES: dict[str, TargetProfile] = {
    p.name: p
    for p in (
        _host_profile(),
        _arm("arm64", "generic 64-bit ARM Linux: ARMv8.0-A + NEON, no fp16 arithmetic"),
        _arm("arm64-fp16", "generic ARMv8.2-A with fp16 arithmetic (+fullfp16)", "generic", True),
        _arm("cortex-a55", "Cortex-A55 little core: ARMv8.2-A, fp16 (emulated as cortex-a76: "
             "QEMU has no A55 model)", "cortex-a55", True),
        _arm("cortex-a76", "Cortex-A76 big core: ARMv8.2-A, fp16", "cortex-a76", True),
        _arm("sd835", "Snapdragon 835 (Cortex-A73): ARMv8.0-A, fp16 storage only", "cortex-a73",
             cores=8),
        _arm("rpi4", "Raspberry Pi 4 (Cortex-A72): ARMv8.0-A", "cortex-a72"),
        _arm("android-arm64", "Android arm64 (needs the NDK: TVM_NDK_CC)", "", False,
             toolchain="ndk", triple="aarch64-linux-android"),
    )
}


def get_profile(target) -> TargetProfile:
    """Return the profile for a name (or pass a `TargetProfile` through).

    Raises
    ------
    UnknownTargetError
        When the name is not a known profile; the message lists the valid names.
    """
    if isinstance(target, TargetProfile):
        return target
    if not isinstance(target, str):
        raise TypeError(
            f"target must be a profile name (str) or TargetProfile, got {type(target).__name__}"
        )
    try:
        return PROFILES[target]
    except KeyError:
        raise UnknownTargetError(
            f"unknown target {target!r}; valid targets: {', '.join(PROFILES)}"
        ) from None
