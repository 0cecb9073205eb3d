"""The Relax build pipeline `mdl_tvm.compile` hands to ``relax.build``.

TVM 0.27's ``default_build_pipeline`` (same passes, same order) with two steps added:

* `concat_in_place` right before memory planning: the kernels feeding a concatenation
  write into its output, so the copy disappears;
* `add_zero_copy_main` right after it (when asked): the destination-passing ``main_zc``.
"""

from __future__ import annotations

from mdl_tvm.compiler.concat_in_place import concat_in_place
from mdl_tvm.compiler.zero_copy_pass import add_zero_copy_main


def relax_build_pipeline(report: dict, zero_copy: bool = True):
    """The module pass for ``relax.build(..., relax_pipeline=...)``.

    Parameters
    ----------
    report : dict
        Filled while the pipeline runs: ``"concats_in_place"`` (how many concatenations
        became views) and, with `zero_copy`, ``"zero_copy"`` (`add_zero_copy_main`'s report).
    zero_copy : bool
        Also emit ``main_zc`` and ``mdl_zc_plan``.
    """
    import tvm
    from tvm.relax import backend, transform

    zc_report = report.setdefault("zero_copy", {}) if zero_copy else None
    extra = [add_zero_copy_main(zc_report)] if zero_copy else []

    @tvm.transform.module_pass(opt_level=0, name="MdlBuildPipeline")
    def _pipeline(mod, _ctx):
        return tvm.transform.Sequential([
            backend.DispatchSampling(),
            backend.DispatchSortScan(),
            transform.LegalizeOps(),
            transform.RewriteDataflowReshape(),
            transform.ToNonDataflow(),
            transform.RemovePurityChecking(),
            transform.CallTIRRewrite(),
            concat_in_place(report),
            transform.StaticPlanBlockMemory(),
            *extra,
            transform.RewriteCUDAGraph(),
            transform.LowerAllocTensor(),
            transform.KillAfterLastUse(),
            transform.LowerRuntimeBuiltin(),
            transform.ComputePrimValue(),
            transform.VMShapeLower(),
            transform.AttachGlobalSymbol(),
        ])(mod)

    return _pipeline
