"""A GGUF model's weights rewritten in another quantization, on the host, from the file the catalog names as its source.

Why: llama.cpp decodes several chats in one batch with its tiled matrix kernels only for some weight formats
(F32, F16, BF16, Q8_0, Q4_0 and a few more on x86); SmolLM2's published Q4_1 is not one of them, so a step of 8
chats costs nearly 8 steps of one (DESIGN §9). Q8_0 holds every Q4_1 weight almost exactly (a Q4_1 block has 16
levels, a Q8_0 block 255), so the model answers as the published file does, and a batch of 8 tokens costs about a
third of 8 single steps.

Pure numpy through the ``gguf`` package (its Q8_0 is bit-exact with llama.cpp's reference code), so a host needs
no llama.cpp build to do it, and the result is the same bytes on every machine: the catalog pins its SHA-256 like
any other model's, and ``ModelStore`` checks it after writing. Only the source's Q4_1 tensors change; the rest,
and every metadata key but ``general.file_type``, are copied as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from archipelag.catalog import MODEL_QUANTIZATIONS

_FROM = "Q4_1"  # the tensors rewritten; others are copied


def requantize(source: Path, target: Path, quantization: str) -> None:
    """Write ``source`` with its Q4_1 tensors in ``quantization`` to ``target``, atomically (a temporary file in
    the same folder, then a rename: two processes doing it at once both end with the same whole file)."""
    import gguf

    if quantization not in MODEL_QUANTIZATIONS:
        raise ValueError(f"cannot requantize to {quantization!r}; known: {sorted(MODEL_QUANTIZATIONS)}")
    to = gguf.GGMLQuantizationType.Q8_0
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(partial, arch=arch)
    try:
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name in {"general.architecture", "general.file_type"}:
                continue  # the writer writes these itself; the file type is new
            sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
        for tensor in reader.tensors:
            if tensor.tensor_type.name == _FROM:
                weights = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
                writer.add_tensor(tensor.name, gguf.quants.quantize(weights, to), raw_dtype=to)
            else:
                writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
