"""Build a model for a phone target, export it, count its instructions per inference on
the emulated phone and check its output: `build_on_phone` -> `PhoneBuild`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import quiet
from mdl_tvm.core.numerics import relative_error


@dataclass
class PhoneBuild:
    """A model built for a phone target and exported; what `build_on_phone` measured.

    Attributes
    ----------
    library : str
        The exported aarch64 library.
    model : mdl_tvm.CompiledModel
        ``model.stats``: weight bytes, MACs.
    compile_s, run_s, count_s : float
        Seconds to compile and export, to run once, to count.
    runs, instructions : int or None
        N of the count and the instructions retired per inference.
    profile : deploy.kernel_profile.KernelProfile or None
    output, rel_error : numpy.ndarray, float or None
        The first output of one run on the phone, its `relative_error` to the reference.
    """

    library: str
    model: object
    compile_s: float
    runs: int | None = None
    instructions: int | None = None
    profile: object = None
    output: np.ndarray | None = None
    rel_error: float | None = None
    run_s: float = 0.0
    count_s: float = 0.0

    @property
    def library_bytes(self) -> int:
        """Size of the exported library in bytes."""
        return os.path.getsize(self.library)


def build_on_phone(module, target, inputs, workdir, name: str, *, runs: int | None = None,
                   run: bool = False, reference=None, profile: bool = False,
                   example_inputs: bool = False, timeout: float | None = None,
                   log: Path | None = None, **compile_options) -> PhoneBuild:
    """Compile `module` for `target`, export ``WORKDIR/NAME.so``, count its instructions per
    inference on the emulated phone and check its output against `reference`.

    Parameters
    ----------
    module : torch.nn.Module or any model `mdl_tvm.compile` takes
    target : str
        A phone profile (``"arm64"``, ``"arm64-fp16"``, ...).
    inputs : sequence of numpy.ndarray
        One array per model input.
    workdir, name : path, str
    runs : int, optional
        N of `deploy.emulator.count_instructions` (``(count(2N) - count(N)) / N``); no
        count without it.
    run : bool
        Run once on the phone (`deploy.emulator.run_on_emulator`) and keep the first output.
    reference : numpy.ndarray, optional
        Expected first output; implies `run`, sets ``rel_error``.
    profile : bool
        Count with `deploy.kernel_profile.profile_instructions` (same N, kept as ``profile``).
    example_inputs : bool
        Compile with ``example_inputs=`` tensors of `inputs` (integer inputs need it), not
        ``input_shapes=``.
    timeout : float, optional
        Seconds per emulator run (the `deploy.emulator` defaults otherwise).
    log : path, optional
        Where the compiler's output goes (`quiet`).
    **compile_options
        Passed to `mdl_tvm.compile` as given (``precision``, ``compress``,
        ``default_schedules``, ``tuning_db``, ...).

    Returns
    -------
    PhoneBuild
    """
    import mdl_tvm
    from deploy import emulator

    inputs = list(inputs)
    if example_inputs:
        import torch

        compile_options["example_inputs"] = tuple(torch.from_numpy(a) for a in inputs)
    else:
        compile_options["input_shapes"] = [a.shape for a in inputs]
    start = time.perf_counter()
    with quiet(log):
        model = mdl_tvm.compile(module, target, **compile_options)
    build = PhoneBuild(model.export(str(Path(workdir) / f"{name}.so")), model,
                       time.perf_counter() - start, runs)
    limit = {} if timeout is None else {"timeout": timeout}
    if run or reference is not None:
        start = time.perf_counter()
        build.output = emulator.run_on_emulator(build.library, inputs, **limit)[0]
        build.run_s = time.perf_counter() - start
        if reference is not None:
            build.rel_error = relative_error(build.output, reference)
    if runs:
        start = time.perf_counter()
        if profile:
            from deploy.kernel_profile import profile_instructions

            build.profile = profile_instructions(build.library, inputs, runs=runs, **limit)
            build.instructions = build.profile.total
        else:
            build.instructions = emulator.count_instructions(build.library, inputs, runs=runs,
                                                             **limit)
        build.count_s = time.perf_counter() - start
    return build
