"""The CPU a phone has: QEMU's CPU models, what each can execute, what a library needs.

QEMU's default ``max`` CPU advertises SVE/SVE2, SME, i8mm and bf16: no phone has them and
other engines' run-time dispatch reacts to them, so the emulated phone always runs a named
model. Each target profile names the core it means (`mdl_tvm.core.targets.TargetProfile.
qemu_cpu`): ``cortex-a76`` for the ARMv8.2-A profiles, ``cortex-a72`` for the ARMv8.0-A ones.

A library's metadata says what it was built for (``mattr``); `missing_features` compares
that with a CPU's HWCAP bits (as Linux reports them to the guest, measured under QEMU 7.2)
before anything runs, and `illegal_instruction_error` names the cause when a forced run
dies of SIGILL.
"""

from __future__ import annotations

from mdl_tvm.core.errors import DeviceError

DEFAULT_CPU = "cortex-a76"
# Linux arm64 AT_HWCAP bits (arch/arm64/include/uapi/asm/hwcap.h)
HWCAP_BITS = {
    "fp": 0, "asimd": 1, "evtstrm": 2, "aes": 3, "pmull": 4, "sha1": 5, "sha2": 6,
    "crc32": 7, "atomics": 8, "fphp": 9, "asimdhp": 10, "cpuid": 11, "asimdrdm": 12,
    "jscvt": 13, "fcma": 14, "lrcpc": 15, "dcpop": 16, "sha3": 17, "sm3": 18, "sm4": 19,
    "asimddp": 20, "sha512": 21, "sve": 22,
}
# AT_HWCAP of the guest under `qemu-aarch64-static -cpu NAME` (QEMU 7.2, measured)
QEMU_HWCAP = {
    "cortex-a53": 0x8FB, "cortex-a57": 0x8FB, "cortex-a72": 0x8FB,
    "cortex-a76": 0x119FFB, "neoverse-n1": 0x119FFB, "a64fx": 0x415FFB, "max": 0xECFFFFFB,
}
QEMU_CPUS = tuple(QEMU_HWCAP)
# what an LLVM feature in a library's ``mattr`` needs from the CPU, and what it means
MATTR_NEEDS = {
    "+fullfp16": (("fphp", "asimdhp"), "fp16 arithmetic (ARMv8.2-A)"),
    "+dotprod": (("asimddp",), "int8 dot products (ARMv8.2-A dotprod)"),
    "+sve": (("sve",), "SVE"),
}


def check_cpu(name: str) -> str:
    """Return `name` if QEMU can emulate it, else raise ValueError listing the models."""
    if name not in QEMU_HWCAP:
        raise ValueError(f"unknown CPU model {name!r}; QEMU 7.2 emulates: "
                         f"{', '.join(QEMU_CPUS)}")
    return name


def features(hwcap: int) -> set[str]:
    """The feature names set in an ``AT_HWCAP`` value."""
    return {name for name, bit in HWCAP_BITS.items() if hwcap >> bit & 1}


def cpu_features(name: str) -> set[str]:
    """The features the guest sees under QEMU's CPU model `name`."""
    return features(QEMU_HWCAP[check_cpu(name)])


def missing_features(meta: dict, have: set[str]) -> list[str]:
    """What a library (its metadata) needs that a CPU with features `have` lacks: one
    phrase per missing LLVM feature (empty when it can run)."""
    missing = []
    for attr in meta.get("mattr", ()):
        needs, what = MATTR_NEEDS.get(attr, ((), ""))
        if any(f not in have for f in needs):
            missing.append(f"{what} [{attr}]")
    return missing


def refusal(meta: dict, cpu: str, missing: list[str], where: str = "this phone") -> DeviceError:
    """The error for a library that needs what `cpu` lacks (before it runs)."""
    return DeviceError(
        f"the library is built for {meta.get('target')!r} and needs {', '.join(missing)}, "
        f"which {where} ({cpu}) does not have; compile it for an ARMv8.0 profile (arm64, "
        "sd835, rpi4: precision fp32 or fp16-storage), or run it on an ARMv8.2-A core "
        "(--cpu cortex-a76); force=True / --force runs it anyway")


def illegal_instruction_error(meta: dict | None, cpu: str, detail: str = "") -> DeviceError:
    """The error for a run that died of SIGILL."""
    built = f" (built for {meta.get('target')!r}, mattr {meta.get('mattr')})" if meta else ""
    return DeviceError(
        f"illegal instruction: the library{built} executed an instruction the {cpu} CPU does "
        f"not have; compile it for this CPU's profile{(': ' + detail) if detail else ''}")
