"""Tiny random-weight llama GGUFs for structural tests (DESIGN §9): written with the ``gguf`` package in a few
milliseconds, a few hundred KB, loadable by llama.cpp. They talk nonsense; tests check shapes and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, TokenType, quants

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tiny_llama(path: Path, chat_template: str | None = CHATML, embedding: int = 32, layers: int = 2,
                     seed: int = 0, quantized: GGMLQuantizationType | None = None) -> Path:
    """A 2-layer llama with a byte-fallback SentencePiece vocabulary; ``chat_template=None`` leaves it out.
    ``quantized``: the matrices in that format (as published models hold them), the norms in F32."""
    rng = np.random.default_rng(seed)
    pieces = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL]
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    words = ["▁", *"abcdefghijklmnopqrstuvwxyz", "▁the", "▁a", "▁hi", "▁hello"]
    pieces += words
    types += [TokenType.NORMAL] * len(words)
    vocab, heads, ff = len(pieces), 4, embedding * 2
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(512)
    writer.add_embedding_length(embedding)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(embedding // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores([0.0] * 5 + [0.0] * 256 + [-float(i) for i in range(len(words))])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    def matrix(name: str, *shape: int) -> None:
        values = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if quantized is None:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, quants.quantize(values, quantized), raw_dtype=quantized)

    matrix("token_embd.weight", vocab, embedding)
    writer.add_tensor("output_norm.weight", np.ones(embedding, np.float32))
    matrix("output.weight", vocab, embedding)
    for block in range(layers):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(embedding, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            matrix(f"{prefix}.{name}.weight", embedding, embedding)
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(embedding, np.float32))
        matrix(f"{prefix}.ffn_gate.weight", ff, embedding)
        matrix(f"{prefix}.ffn_up.weight", ff, embedding)
        matrix(f"{prefix}.ffn_down.weight", embedding, ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
