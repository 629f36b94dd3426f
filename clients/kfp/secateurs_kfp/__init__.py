"""Kubeflow Pipelines v2 integration for secateurs: the `compress_model` component (submit a
job, wait, output the ONNX model, the report's metrics and the HTML report) and a sample
pipeline."""

from secateurs_kfp.component import BASE_IMAGE, CLIENT_PACKAGE, compress_model, make_compress_component

__all__ = ["compress_model", "make_compress_component", "BASE_IMAGE", "CLIENT_PACKAGE"]
