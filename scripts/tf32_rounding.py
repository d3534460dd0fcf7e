"""Which TF32 conversion matches a GPU port: block 0's projections with float32 operands cut two ways.

Prints, for tiny.en's first query, key and first MLP projection on the shipped clip, the relative L2
error and std ratio against float64 of openai-whisper's linear layer with IEEE float32 operands, with
operands rounded to TF32 (to nearest, torch's cuBLAS TF32) and truncated to TF32 (low 13 bits dropped).
Compare with a port's isolated rows of those taps (report.json: rel_l2, std_ratio): on an H200, MAX's
matched truncation to three digits (README, "On a GPU: which float32 arithmetic?").
    python scripts/tf32_rounding.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fidelity import audio
from fidelity.checkpoints import load_checkpoint
from fidelity.reference.arithmetic import round_to_tf32, truncate_to_tf32


def main() -> None:
    encoder = load_checkpoint("tiny.en").whisper_model().double().encoder
    mel = torch.from_numpy(audio.mel_windows(audio.load_audio(audio.DEFAULT_CLIP), encoder.conv1.in_channels))
    x = F.gelu(encoder.conv1(mel.double()))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1) + encoder.positional_embedding
    norm = encoder.blocks[0].attn_ln
    h = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    block = encoder.blocks[0]
    for name, layer in (("attn.query", block.attn.query), ("attn.key", block.attn.key), ("mlp.0", block.mlp[0])):
        truth = F.linear(h, layer.weight, layer.bias)
        bias = None if layer.bias is None else layer.bias.float()
        row = [f"blocks.0.{name}:"]
        for label, cut in (("ieee", lambda t: t.float()), ("nearest", lambda t: round_to_tf32(t.float())),
                           ("truncated", lambda t: truncate_to_tf32(t.float()))):
            out = F.linear(cut(h), cut(layer.weight), bias).double()
            rel = ((out - truth).norm() / truth.norm()).item()
            row.append(f"{label} rel_l2 {rel:.3g} std {(out.std() / truth.std()).item():.6f}")
        print("  ".join(row))


if __name__ == "__main__":
    main()
