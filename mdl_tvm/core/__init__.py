"""The bottom layer: what every other part of MobileDL may import, and nothing above it.

* `errors`       the project's exceptions (each names the problem and the fix)
* `targets`      named target profiles (CPU, vector width, toolchain, fp16)
* `io`           the cache root and atomic writes
* `numerics`     relative error, median timing
* `threads`      TVM's thread count: one per physical core unless the user sets one
* `specs`        input / output tensor specs
* `relax_utils`  small helpers over Relax expressions (shapes, op names, bindings, constants)
* `graph_stats`  weight bytes, MACs and op counts of a Relax graph
* `artifact`     the exported library format: metadata note, export, reading

Dependency order (each layer imports only the layers below it; `tests/test_layers.py` and
``lint-imports`` check it)::

    core -> deploy | zoo, data, train -> relay_passes | schedules -> compiler
         -> schedules.tuning -> front ends (mdl_tvm.cli, mdl_tvm.demo, apps)
"""
