"""Export (installed as ``lcr_sdk.export``): checkpoint -> ONNX (fp32/fp16/int8) -> TensorRT engine. Needs the ``export`` extra."""
