"""Read a CTranslate2 Whisper `model.bin` and map it onto openai-whisper's state dict.

The binary layout (little-endian): u32 version, string spec name, u32 revision,
u32 variable count, then per variable: string name, u8 rank, u32 per dim, u8 dtype
id, u32 byte count, raw bytes; then u32 alias count and (alias, target) string
pairs. A string is a u16 length (trailing NUL included), the bytes, the NUL.

The name map is data (`_LAYER_MAP`, `_GLOBAL_MAP`); fused projections are split by
`_SPLITS`. Every variable must be consumed, the key projections' bias slices must
be zero (openai-whisper's keys have no bias) and the spec flags must describe
openai-whisper's architecture (`_SPEC_FLAGS`), or conversion fails naming what did not
map.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from .errors import FidelityError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}

# CTranslate2 layer-relative name -> openai-whisper block-relative name.
_LAYER_MAP = {
    "self_attention/layer_norm/gamma": "attn_ln.weight",
    "self_attention/layer_norm/beta": "attn_ln.bias",
    "self_attention/linear_1/weight": "attn.out.weight",
    "self_attention/linear_1/bias": "attn.out.bias",
    "attention/layer_norm/gamma": "cross_attn_ln.weight",
    "attention/layer_norm/beta": "cross_attn_ln.bias",
    "attention/linear_0/weight": "cross_attn.query.weight",
    "attention/linear_0/bias": "cross_attn.query.bias",
    "attention/linear_2/weight": "cross_attn.out.weight",
    "attention/linear_2/bias": "cross_attn.out.bias",
    "ffn/layer_norm/gamma": "mlp_ln.weight",
    "ffn/layer_norm/beta": "mlp_ln.bias",
    "ffn/linear_0/weight": "mlp.0.weight",
    "ffn/linear_0/bias": "mlp.0.bias",
    "ffn/linear_1/weight": "mlp.2.weight",
    "ffn/linear_1/bias": "mlp.2.bias",
}

# Fused projections: layer-relative name -> the parts it splits into, in row order.
# A part named None must be all zeros (a bias openai-whisper does not have).
_SPLITS = {
    "self_attention/linear_0/weight": ("attn.query.weight", "attn.key.weight", "attn.value.weight"),
    "self_attention/linear_0/bias": ("attn.query.bias", None, "attn.value.bias"),
    "attention/linear_1/weight": ("cross_attn.key.weight", "cross_attn.value.weight"),
    "attention/linear_1/bias": (None, "cross_attn.value.bias"),
}

_GLOBAL_MAP = {
    "encoder/conv1/weight": "encoder.conv1.weight",
    "encoder/conv1/bias": "encoder.conv1.bias",
    "encoder/conv2/weight": "encoder.conv2.weight",
    "encoder/conv2/bias": "encoder.conv2.bias",
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    "encoder/layer_norm/gamma": "encoder.ln_post.weight",
    "encoder/layer_norm/beta": "encoder.ln_post.bias",
    "decoder/embeddings/weight": "decoder.token_embedding.weight",
    "decoder/position_encodings/encodings": "decoder.positional_embedding",
    "decoder/layer_norm/gamma": "decoder.ln.weight",
    "decoder/layer_norm/beta": "decoder.ln.bias",
}

# Scalars that describe the spec rather than hold weights; read elsewhere or irrelevant to the weights.
_SCALARS = {"num_heads", "alignment_heads", "alignment_layer"}

# Spec flags and the one value openai-whisper's architecture has (activation 3 is GELU);
# newer converters add the ALiBi ones. A flag missing from a file keeps its default.
_SPEC_FLAGS = {"activation": 3, "pre_norm": 1, "alibi": 0, "alibi_use_positive_positions": 0, "scale_alibi": 0,
               "scale_embeddings": 0, "start_from_zero_embedding": 0}

_LAYER_RE = re.compile(r"^(encoder|decoder)/layer_(\d+)/(.+)$")


def read_model_bin(path: Path) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 `model.bin`, aliases resolved."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FidelityError(f"cannot read CTranslate2 model {path}: {exc.strerror}") from exc
    return parse_model_bin(data, str(path))


def parse_model_bin(data: bytes, path: str) -> dict[str, np.ndarray]:
    """`read_model_bin` on the file's bytes (`path` names it in errors)."""
    reader = _Reader(data, path)
    version = reader.u32()
    spec = reader.string()
    reader.u32()  # spec revision
    if version < 5 or spec != "WhisperSpec":
        raise FidelityError(f"{path} is not a CTranslate2 Whisper model (spec {spec!r}, version {version})")
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.u32()):
        name = reader.string()
        shape = tuple(reader.u32() for _ in range(reader.u8()))
        dtype_id = reader.u8()
        raw = reader.take(reader.u32())
        dtype = _DTYPES.get(dtype_id)
        if dtype is None:
            raise FidelityError(f"{path}: variable {name} has unsupported dtype id {dtype_id}")
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    for _ in range(reader.u32()):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return variables


def to_whisper_state(variables: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(dims as a dict for `ModelDimensions`, openai-whisper state dict) from CT2 variables."""
    state: dict[str, np.ndarray] = {}
    layers = {"encoder": set(), "decoder": set()}
    consumed = {"decoder/projection/weight"}  # alias of the token embedding
    for name, value in variables.items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf in _SPEC_FLAGS and value.ndim == 0:
            if int(value) != _SPEC_FLAGS[leaf]:
                raise FidelityError(f"{name} is {int(value)}; openai-whisper's architecture has {_SPEC_FLAGS[leaf]}")
            consumed.add(name)
            continue
        if leaf in _SCALARS:
            consumed.add(name)
            continue
        if name in _GLOBAL_MAP:
            state[_GLOBAL_MAP[name]] = value
            consumed.add(name)
            continue
        match = _LAYER_RE.match(name)
        if not match:
            continue
        side, index, rest = match.group(1), int(match.group(2)), match.group(3)
        prefix = f"{side}.blocks.{index}."
        layers[side].add(index)
        if rest in _LAYER_MAP:
            state[prefix + _LAYER_MAP[rest]] = value
        elif rest in _SPLITS:
            parts = _SPLITS[rest]
            for part, chunk in zip(parts, np.split(value, len(parts), axis=0)):
                if part is None:
                    if np.any(chunk != 0):
                        raise FidelityError(f"{name}: the key bias slice is not zero; openai-whisper has no key bias")
                else:
                    state[prefix + part] = chunk
        else:
            continue
        consumed.add(name)
    leftover = sorted(set(variables) - consumed)
    if leftover:
        raise FidelityError(f"{len(leftover)} CTranslate2 variables with no openai-whisper counterpart: "
                            f"{', '.join(leftover)}")
    for side in layers:
        if layers[side] != set(range(len(layers[side]))):
            raise FidelityError(f"{side} layers are not numbered 0..N-1: {sorted(layers[side])}")
    try:
        dims = {
            "n_mels": int(state["encoder.conv1.weight"].shape[1]),
            "n_audio_ctx": int(state["encoder.positional_embedding"].shape[0]),
            "n_audio_state": int(state["encoder.positional_embedding"].shape[1]),
            "n_audio_head": int(variables["encoder/num_heads"]),
            "n_audio_layer": len(layers["encoder"]),
            "n_vocab": int(state["decoder.token_embedding.weight"].shape[0]),
            "n_text_ctx": int(state["decoder.positional_embedding"].shape[0]),
            "n_text_state": int(state["decoder.positional_embedding"].shape[1]),
            "n_text_head": int(variables["decoder/num_heads"]),
            "n_text_layer": len(layers["decoder"]),
        }
    except KeyError as exc:
        raise FidelityError(f"CTranslate2 model lacks {exc.args[0]}") from exc
    return dims, state


class _Reader:
    def __init__(self, data: bytes, path: str):
        self.data, self.offset, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            raise FidelityError(f"{self.path} is truncated at byte {self.offset}")
        chunk = self.data[self.offset:self.offset + n]
        self.offset += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        length = struct.unpack("<H", self.take(2))[0]
        return self.take(length)[:-1].decode("utf-8")
