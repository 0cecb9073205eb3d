"""The mobile engines people deploy, on the same emulated phone as MobileDL.

* `install`      their aarch64 wheels for the phone, the MNN converter for this machine
* `convert`      ONNX → each engine's format (pnnx for NCNN, MNN's converter, `tflite`)
* `tflite`       an ONNX → ``.tflite`` flatbuffer writer (LiteRT + XNNPACK)
* `peer_runner`  the device-side script: one engine, one thread, N inferences
* `count`        run / count a converted model under QEMU, as MobileDL's libraries are

Engines: ``ort`` (ONNX Runtime), ``ncnn`` / ``ncnn-fp16``, ``mnn`` / ``mnn-fp16``
(precision high / low), ``litert`` (XNNPACK).
"""

ENGINES = ("ort", "ncnn", "ncnn-fp16", "mnn", "mnn-fp16", "litert")
