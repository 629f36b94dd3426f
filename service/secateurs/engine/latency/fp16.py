"""An fp32 ONNX model rewritten in fp16, for runtimes that measure half precision.

TensorRT 11 builds strongly typed networks only (the FP16 builder flag is gone): the
precision of an engine is the precision of its ONNX file. So an fp16 target converts the
exported model here, with the onnx package alone (a probe has no torch): every fp32
tensor the graph holds or exchanges becomes fp16, inputs and outputs included, except
the few operands the ONNX spec keeps in fp32 (Resize's scales).
"""

from __future__ import annotations

import numpy as np

# (op type, input index) whose tensor must stay fp32 whatever the model's precision
_KEEP_FP32_INPUTS = {("Resize", 2), ("Upsample", 1)}


def onnx_to_fp16(model_bytes: bytes) -> bytes:
    """The same graph with fp32 tensors, casts, inputs and outputs in fp16."""
    import onnx
    from onnx import TensorProto

    model = onnx.load_from_string(model_bytes)
    keep = set()
    for node in _all_nodes(model.graph):
        for index, name in enumerate(node.input):
            if (node.op_type, index) in _KEEP_FP32_INPUTS:
                keep.add(name)
    _convert_graph(model.graph, keep, TensorProto)
    return model.SerializeToString()


def _all_nodes(graph):  # type: ignore[no-untyped-def]
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _convert_graph(graph, keep: set[str], TensorProto) -> None:  # type: ignore[no-untyped-def]
    from onnx import numpy_helper

    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name not in keep and value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    for init in graph.initializer:
        if init.name not in keep and init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(_half(numpy_helper.to_array(init)), init.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
            elif attr.t.data_type == TensorProto.FLOAT and not any(o in keep for o in node.output):
                attr.t.CopyFrom(numpy_helper.from_array(_half(numpy_helper.to_array(attr.t)), attr.t.name))
            if attr.g.node:
                _convert_graph(attr.g, keep, TensorProto)
            for sub in attr.graphs:
                _convert_graph(sub, keep, TensorProto)


def _half(array: np.ndarray) -> np.ndarray:
    """fp16, with values beyond its range clipped rather than turned into infinities."""
    limit = float(np.finfo(np.float16).max)
    return np.clip(array, -limit, limit).astype(np.float16)
