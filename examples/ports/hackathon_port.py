"""A MAX Graph port of Whisper's encoder in a hackathon team's style, instrumented with probes.

Not how fidelity builds its own encoder, on purpose: weights are graph inputs in a fixed
order (pre-transposed, q/k/v fused into one matrix, key bias zero), the convolutions are
`ops.conv2d` on NHWC with RSCF filters, attention is written by hand per head with one
constant scale (1/sqrt(head_dim)), and the front end is numpy (its own STFT and Slaney mel
filterbank, openai-whisper's definition, samples padded to 30 s). It runs in the
candidate's dtype (`--dtype float32|bfloat16|float16`): weights arrive in it, the float32
mel is cast inside, layer norms compute in float32 (MAX reduces in the input dtype), and
the convolutions and attention core accumulate in float32 (see `encoder_body`), as
openai-whisper's half-precision encoder does.

Builders for `python -m fidelity.compare --candidate examples/ports/hackathon_port.py:NAME`:
  * `build`: the clean port;
  * `build_conv_average`: bug (a), conv1 computed as the average of its three kernel taps
    instead of their sum; that is the convolution with its filter divided by 3, so the bug
    is reproduced in the weight mapping and runs on the clean port's compiled graph;
  * `build_mel_zero_pad`: bug (b), a short clip's log-mel padded with zeros in log-mel
    space instead of padding the samples (openai-whisper pads the samples).
"""

from __future__ import annotations

import numpy as np
from max.dtype import DType
from max.graph import TensorValue, ops

from fidelity.candidates.base import CandidateConfig
from fidelity.candidates.max_port import MaxPort
from fidelity.checkpoints import Checkpoint
from fidelity.errors import FidelityError
from fidelity.probe import probe

SAMPLE_RATE, N_FFT, HOP, CHUNK_SECONDS = 16000, 400, 160, 30
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS
BUGS = (None, "conv_average", "mel_zero_pad")


# -- weights: openai-whisper state dict -> graph inputs, in a fixed order --------------------
def weight_inputs(w: dict[str, np.ndarray], n_layers: int, conv_average: bool = False) -> list[np.ndarray]:
    """The graph's weight inputs in order (the layout `encoder_body` unpacks); `conv_average`: bug (a)."""
    def rscf(f):  # torch conv1d (F, C, K) -> conv2d RSCF (1, K, C, F)
        return np.ascontiguousarray(f.transpose(2, 1, 0)[np.newaxis])

    conv1 = w["encoder.conv1.weight"]
    if conv_average:  # mean over the kernel taps, sum_k x[t+k-1] W[k] / K: the filter over the kernel width
        conv1 = conv1 / conv1.shape[-1]
    arrays = [rscf(conv1), w["encoder.conv1.bias"],
              rscf(w["encoder.conv2.weight"]), w["encoder.conv2.bias"], w["encoder.positional_embedding"]]
    for i in range(n_layers):
        p = f"encoder.blocks.{i}."
        qkv = np.concatenate([w[p + "attn.query.weight"], w[p + "attn.key.weight"], w[p + "attn.value.weight"]])
        qkv_bias = np.concatenate([w[p + "attn.query.bias"], np.zeros_like(w[p + "attn.query.bias"]),
                                   w[p + "attn.value.bias"]])
        arrays += [w[p + "attn_ln.weight"], w[p + "attn_ln.bias"], qkv.T, qkv_bias,
                   w[p + "attn.out.weight"].T, w[p + "attn.out.bias"],
                   w[p + "mlp_ln.weight"], w[p + "mlp_ln.bias"], w[p + "mlp.0.weight"].T, w[p + "mlp.0.bias"],
                   w[p + "mlp.2.weight"].T, w[p + "mlp.2.bias"]]
    arrays += [w["encoder.ln_post.weight"], w["encoder.ln_post.bias"]]
    return [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]


# -- the graph -----------------------------------------------------------------------------------
def encoder_body(n_layers: int, n_heads: int):
    """The graph body: (mel, *weights) -> encoder output (batch, frames, width), in the weights' dtype.

    In half precision the convolutions and the attention core (q k^T, softmax, att v) read the
    half-precision values in float32 and round once at the end, the arithmetic of openai-whisper's
    float32-accumulating kernels: MAX's CPU bfloat16 conv2d and batched matmul measured 6-12x the
    bfloat16 floor on their own (conv1, conv2, attn.wv), its 2-D matmuls about 0.2-0.8x."""
    f32 = DType.float32

    def conv(x, filt, bias, stride):  # x: (batch, frames, channels)
        y = ops.conv2d(ops.unsqueeze(x.cast(f32), 1), filt.cast(f32), stride=(1, stride), padding=(0, 0, 1, 1),
                       bias=bias.cast(f32))
        return ops.squeeze(y, 1).cast(x.dtype)

    def layer_norm(x, gamma, beta):  # in float32 and back, as openai-whisper's LayerNorm (MAX reduces in x's dtype)
        return ops.layer_norm(x.cast(f32), gamma.cast(f32), beta.cast(f32), 1e-5).cast(x.dtype)

    def split_heads(t, frames, head_dim):  # (b, T, W) -> (b, H, T, D)
        return ops.permute(ops.reshape(t, ["batch", frames, n_heads, head_dim]), [0, 2, 1, 3])

    def body(mel: TensorValue, *w: TensorValue) -> TensorValue:
        it = iter(w)
        c1w, c1b, c2w, c2b, pos = (next(it) for _ in range(5))
        x = ops.permute(mel.cast(c1w.dtype), [0, 2, 1])  # channels-last (b, 2*ctx, n_mels)
        x = probe("encoder.conv1", conv(x, c1w, c1b, 1), layout="btc")
        x = probe("encoder.conv1.gelu", ops.gelu(x), layout="btc")
        x = probe("encoder.conv2", conv(x, c2w, c2b, 2), layout="btc")
        x = probe("encoder.conv2.gelu", ops.gelu(x), layout="btc")
        x = probe("encoder.positional_embedding", x + pos)
        frames, width = int(x.shape[1]), int(x.shape[2])
        head_dim = width // n_heads
        scale = ops.constant(1.0 / np.sqrt(head_dim), f32, x.device)
        for i in range(n_layers):
            p = f"encoder.blocks.{i}."
            ln1_g, ln1_b, qkv_w, qkv_b, out_w, out_b, ln2_g, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b = (
                next(it) for _ in range(12))
            h = probe(p + "attn_ln", layer_norm(x, ln1_g, ln1_b))
            qkv = h @ qkv_w + qkv_b
            q = probe(p + "attn.query", split_heads(qkv[:, :, :width], frames, head_dim), layout="bhtd")
            k = probe(p + "attn.key", split_heads(qkv[:, :, width:2 * width], frames, head_dim), layout="bhtd")
            v = probe(p + "attn.value", split_heads(qkv[:, :, 2 * width:], frames, head_dim), layout="bhtd")
            att = ops.softmax((q.cast(f32) @ ops.transpose(k.cast(f32), 2, 3)) * scale)
            o = probe(p + "attn.wv", (att @ v.cast(f32)).cast(x.dtype), layout="bhtd")
            o = ops.reshape(ops.permute(o, [0, 2, 1, 3]), ["batch", frames, width])
            x = probe(p + "resid_mid", x + probe(p + "attn.out", o @ out_w + out_b))
            h = probe(p + "mlp_ln", layer_norm(x, ln2_g, ln2_b))
            h = probe(p + "mlp.1", ops.gelu(probe(p + "mlp.0", h @ fc1_w + fc1_b)))
            x = probe(p + "resid_post", x + probe(p + "mlp.2", h @ fc2_w + fc2_b))
        return probe("encoder.ln_post", layer_norm(x, next(it), next(it)))

    return body


# -- the front end: numpy STFT and Slaney mel filterbank --------------------------------------
def mel_filterbank(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-style mel filters (librosa's default, what openai-whisper ships), float64."""
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fft_f = np.linspace(0, sr / 2, 1 + n_fft // 2)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_f[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def log_mel(samples: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """openai-whisper's log-mel of `samples` (centred reflect-padded STFT, last frame dropped)."""
    x = np.pad(np.asarray(samples, dtype=np.float64), N_FFT // 2, mode="reflect")
    n_frames = 1 + (len(x) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(x, (n_frames, N_FFT), (x.strides[0] * HOP, x.strides[0]))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)[:-1]) ** 2
    spec = np.log10(np.maximum(filters @ power.T, 1e-10))
    return (np.maximum(spec, spec.max() - 8.0) + 4.0) / 4.0


def log_mel_windows(samples: np.ndarray, n_mels: int, zero_pad_mel: bool = False) -> np.ndarray:
    """(windows, n_mels, 3000) float32: one log-mel per 30 s of audio, the last one padded."""
    filters = mel_filterbank(n_mels)
    out = []
    for start in range(0, len(samples), N_SAMPLES):
        chunk = samples[start:start + N_SAMPLES]
        if zero_pad_mel:  # bug (b): log-mel of the short chunk, then zeros in log-mel space
            mel = log_mel(chunk, filters)
            mel = np.pad(mel, [(0, 0), (0, N_SAMPLES // HOP - mel.shape[1])])
        else:
            mel = log_mel(np.pad(chunk, (0, N_SAMPLES - len(chunk))), filters)
        out.append(mel)
    return np.stack(out).astype(np.float32)


# -- builders --------------------------------------------------------------------------------------
def build(checkpoint: Checkpoint, config: CandidateConfig, bug: str | None = None) -> MaxPort:
    """The port as a fidelity candidate (`bug` reproduces one of the team's earlier versions)."""
    if bug not in BUGS:
        raise FidelityError(f"unknown bug {bug!r}: choose from {', '.join(str(b) for b in BUGS)}")
    d = checkpoint.dims
    return MaxPort(checkpoint, config, encoder_body(d.n_audio_layer, d.n_audio_head),
                   inputs=weight_inputs(checkpoint.encoder_weights, d.n_audio_layer, bug == "conv_average"),
                   front_end=lambda samples: log_mel_windows(samples, d.n_mels, bug == "mel_zero_pad"),
                   name="hackathon-port" + (f"-{bug.replace('_', '-')}" if bug else ""),
                   graph_name="hackathon_encoder")


def build_conv_average(checkpoint: Checkpoint, config: CandidateConfig) -> MaxPort:
    return build(checkpoint, config, "conv_average")


def build_mel_zero_pad(checkpoint: Checkpoint, config: CandidateConfig) -> MaxPort:
    return build(checkpoint, config, "mel_zero_pad")
