"""The compiler: import a model, run the named stages, build a library.

* `importers`      PyTorch / ONNX / Relax → Relax ``IRModule``
* `pipeline`       the stages (prepare, graph passes, precision, lower, build) over a `BuildState`
* `precision`      fp32 / fp16 / fp16-storage rewrite (`precision_ops`: its op classes)
* `zero_copy_pass` ``main_zc``: destination-passing outputs into a planned workspace
* `compiled`       `compile`, `CompiledModel`
* `finetune`       masked fine-tuning in PyTorch, named by the channel graph
"""
