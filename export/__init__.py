"""Export (installed as ``lcr_sdk.export``): checkpoint -> ONNX (fp32/fp16/int8) -> TensorRT engine.

Needs the ``export`` extra (and ``trt`` for engines):

    from lcr_sdk.export import export_model, verify_model
    path = export_model("runs/lcr/checkpoint.pt", "lcr.onnx", precision="int8", calib_dir="data/train")
    report = verify_model(path, "runs/lcr/checkpoint.pt", "data/test")   # report["passed"]

torch, onnx and tensorrt are imported inside the functions that need them.
"""

from lcr_sdk.export.pipeline import export_model
from lcr_sdk.export.verify import THRESHOLDS, format_report, verify_model

__all__ = ["export_model", "verify_model", "format_report", "THRESHOLDS"]
