"""Per-kernel instruction profile of a model library on the emulated phone.

`profile_instructions` runs the library as `deploy.emulator.count_instructions` does (same
runner, same deterministic set-up, N and 2N runs so that start-up cancels) under
``libinsnprof.so``, a TCG plugin that counts the instructions retired at each guest address
(``insn_profile_plugin.c``, built on first use). Each address inside the library is charged
to the kernel whose symbol contains it (a kernel's ``__tvm_ffi_`` wrapper and ``_compute_``
body are one row); everything else -- the Relax VM, the TVM runtime, Python, libc -- is the
`RUNTIME` row. The rows add up to `count_instructions`'s figure.

It answers what the total cannot: which kernel keeps a model above its fp16 / fp32 lane
ratio, what the VM costs per call.
"""

from __future__ import annotations

import bisect
import io
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from deploy import plugins
from deploy.device import DeviceEnv, setup
from deploy.emulator import checked_inputs, count_guest, counting_workdir, library_cpu
from deploy.runners import guest_runner, runner_mode
from mdl_tvm.core.elf import read_elf
from mdl_tvm.core.errors import DeviceError

RUNTIME = "(runtime: VM, Python, libc)"
NATIVE_RUNTIME = "(runtime: VM, TVM runtime, libc)"
OTHER = "(library, outside any symbol)"
_PAGE = 4096


@dataclass(frozen=True)
class KernelProfile:
    """Instructions per inference by kernel.

    Attributes
    ----------
    kernels : dict
        ``{kernel name: instructions per inference}``, largest first; `RUNTIME` for
        everything outside the library.
    total : int
        Their sum (what `count_instructions` reports).
    """

    kernels: dict
    total: int

    def markdown(self, reference: KernelProfile | None = None, names=("this", "ref")) -> str:
        """A markdown table; with `reference`, side by side with the ratio this / ref."""
        if reference is None:
            rows = ["| kernel | instructions | share |", "|---|---:|---:|"]
            rows += [f"| `{k}` | {v:,} | {v / self.total:.1%} |" for k, v in self.kernels.items()]
            return "\n".join(rows + [f"| total | {self.total:,} | 100% |"])
        keys = sorted(set(self.kernels) | set(reference.kernels),
                      key=lambda k: -max(self.kernels.get(k, 0), reference.kernels.get(k, 0)))
        rows = [f"| kernel | {names[1]} | {names[0]} | {names[0]} / {names[1]} |",
                "|---|---:|---:|---:|"]
        for k in keys + ["total"]:
            a = self.total if k == "total" else self.kernels.get(k, 0)
            b = reference.total if k == "total" else reference.kernels.get(k, 0)
            ratio = f"{a / b:.2f}x" if a and b else "–"
            rows.append(f"| {'total' if k == 'total' else f'`{k}`'} | {b:,} | {a:,} | {ratio} |")
        return "\n".join(rows)


def kernel_name(symbol: str) -> str:
    """``__tvm_ffi_fused_conv2d_relu`` / ``fused_conv2d_relu_compute_`` -> ``fused_conv2d_relu``."""
    name = symbol.removeprefix("__tvm_ffi_")
    return name.removesuffix("_compute_")


def build_plugin(env: DeviceEnv) -> Path:
    """``libinsnprof.so`` in the phone's ``profile/`` folder (`deploy.plugins`)."""
    return plugins.build_plugin(env, plugins.PROFILE_SRC, "libinsnprof.so")


def _symbols(so_path: Path) -> list[tuple[int, int, str]]:
    """``(start, size, name)`` of the library's functions, by address."""
    nm = shutil.which("aarch64-linux-gnu-nm")
    if nm is None:
        raise DeviceError("aarch64-linux-gnu-nm is missing: run scripts/setup.sh "
                          "(apt-get install binutils-aarch64-linux-gnu)")
    text = subprocess.run([nm, "-n", "-S", "--defined-only", str(so_path)],
                          capture_output=True, text=True, check=True).stdout
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tT":
            found.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    return found


def code_end(code: bytes, symbols) -> int:
    """Offset where the library's code (`code`: the file's bytes) ends: its ``.text``
    section, not the last symbol (the last kernel's parallel-loop bodies lie past the end of
    its symbol)."""
    last = max(start + size for start, size, _ in symbols)
    text = read_elf(io.BytesIO(code), len(code)).section(".text")
    return max(last, text.offset + text.size) if text else last


def _read_counts(path: Path) -> tuple[dict[int, int], dict[int, int]]:
    """``({address: count}, {address: instruction word})`` from the plugin's file."""
    counts, words = {}, {}
    for line in path.read_text().splitlines():
        addr, n, word = line.split()
        counts[int(addr, 16)] = int(n)
        words[int(addr, 16)] = int(word, 16)
    return counts, words


def find_base(counts: dict, words: dict, symbols, code: bytes, end: int | None = None) -> int:
    """Where the library was loaded, from what ran (asking the guest would perturb the
    runtime's count). Candidates: page-aligned bases at which a kernel's ``__tvm_ffi_X``
    wrapper and ``X_compute_`` body start equally often (once per call); the answer is the
    first, by votes, at which every executed instruction in the library's range has the
    library's own instruction word (`code`: the file, whose code is mapped at offset 0, up
    to `end`, by default the end of the last symbol)."""
    named = {name: start for start, _, name in symbols}
    pairs = [(start, named[name[len("__tvm_ffi_"):] + "_compute_"])
             for name, start in named.items()
             if name.startswith("__tvm_ffi_") and name[len("__tvm_ffi_"):] + "_compute_" in named]
    votes: Counter = Counter()
    for wrapper, body in pairs:
        for addr, n in counts.items():
            base = addr - wrapper
            if base % _PAGE == 0 and counts.get(base + body) == n:
                votes[base] += 1
    end = end or max(start + size for start, size, _ in symbols)
    for base, _ in votes.most_common():
        inside = [a - base for a in counts if 0 <= a - base < end]
        if inside and all(words[base + off] == int.from_bytes(code[off:off + 4], "little")
                          for off in inside):
            return base
    raise DeviceError("no kernel of the library ran on the phone: nothing to profile")


def attribute(per_address: dict[int, float], symbols, base: int,
              runtime: str = RUNTIME, end: int | None = None) -> Counter:
    """Sum `per_address` counts by kernel: an address in the library's code goes to the
    function symbol at or before it (TVM's parallel-loop bodies have no symbol of their own
    and follow the kernel that launches them, up to `end`: `code_end`); the rest to the row
    `runtime`."""
    starts = [s for s, _, _ in symbols]
    end = end or max(s + size for s, size, _ in symbols)
    out: Counter = Counter()
    for addr, n in per_address.items():
        offset = addr - base
        if not 0 <= offset < end:
            out[runtime] += n
            continue
        i = bisect.bisect_right(starts, offset) - 1
        out[kernel_name(symbols[i][2]) if i >= 0 else OTHER] += n
    return out


def profile_instructions(so_path, inputs, runs: int = 10, timeout: float = 900.0,
                         env: DeviceEnv | None = None, mode: str | None = None,
                         cpu: str | None = None, force: bool = False,
                         runner: str = "python") -> KernelProfile:
    """Instructions per inference by kernel on the emulated phone.

    Parameters
    ----------
    so_path : path
        Library exported for aarch64 Linux.
    inputs : numpy.ndarray or list of numpy.ndarray
    runs : int
        N, as in `deploy.emulator.count_instructions`.
    timeout : float
        Seconds allowed per emulator run.
    env : DeviceEnv, optional
    mode : str, optional
        The Python runner's call path (``"plain"``, the default, ``"copy-io"``,
        ``"zero-copy"``); the native runner runs ``main_zc``.
    cpu : str, optional
        QEMU CPU model; default: the core of the library's target profile.
    force : bool
        Profile even when the library needs features `cpu` lacks.
    runner : str
        ``"python"`` or ``"native"`` (`deploy.runners.guest_runner`); the runtime row is
        `RUNTIME` or `NATIVE_RUNTIME`.

    Returns
    -------
    KernelProfile
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    runner_mode(runner, mode)  # a wrong runner or mode fails before the phone starts
    cpu, meta = library_cpu(so_path, cpu, force)
    inputs = checked_inputs(inputs, meta)
    env = env or setup()
    guest = guest_runner(so_path, runner, mode, env)
    plugin = build_plugin(env)
    symbols = _symbols(Path(so_path))
    if not any(name.startswith("__tvm_ffi_") for _, _, name in symbols):
        raise DeviceError(f"{so_path} exports no TVM function (__tvm_ffi_*): not a model library")
    with counting_workdir(env, guest.files, inputs) as (work, names):
        (once, _), (twice, words) = (
            _read_counts(count_guest(env, work, guest.argv(names, n), timeout, cpu, plugin,
                                     meta=meta, program=guest.program))
            for n in (runs, 2 * runs))
    per_address = {a: (twice.get(a, 0) - once.get(a, 0)) / runs for a in set(once) | set(twice)}
    code = Path(so_path).read_bytes()
    end = code_end(code, symbols)
    base = find_base(twice, words, symbols, code, end)
    by_kernel = attribute({a: n for a, n in per_address.items() if n}, symbols, base,
                          RUNTIME if guest.name == "python" else NATIVE_RUNTIME, end)
    kernels = {k: round(v) for k, v in by_kernel.most_common() if round(v)}
    return KernelProfile(kernels, sum(kernels.values()))
