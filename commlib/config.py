"""The settings vocabulary: frozen dataclasses that the library records and the command line is built from.

Torch-free, so ``commlib --help`` stays fast. Three kinds of settings:

* the library's own: :class:`GraftConfig` (where and how to graft),
  :class:`Decoding` (how B decodes) and :class:`ReferenceSpec` (exactly
  which states a distance reference is made of);
* the pieces runs share: :class:`ModelPair` (A, B, the backend and their
  :class:`Placement`: device, dtype, device map), :class:`RunSpec` (how
  many items, their seed, the run directory) and
  :class:`ReferenceChoice` (which of B's reference states for distances);
* one run config per experiment command (:class:`GamesRun`, :class:`SweepRun`,
  ... :class:`GraftRun`), composed of those.

Every field carries its help text (``field(metadata={"help": ...})``, written
with :func:`option`), and its choices where they are fixed; ``commlib.cli``
turns each dataclass into flags (``--max-new-tokens`` for ``max_new_tokens``)
and back. A nested dataclass field becomes a shared group of flags; its
``flags`` metadata adjusts a field for one command (another default or help).

Example:
    >>> GraftConfig(k=20, j=20, f="mean").position
    'last'
    >>> GamesRun(pair=ModelPair("smollm2-135m", "smollm2-135m"), run=RunSpec(out="runs/g"),
    ...          game="countries", k=20, j=20).methods[:3]
    ('silent', 'skyline', 'nl')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal

from commlib.errors import CommlibError, UnknownCombineError
from commlib.registry import ALIASES, names

# ---- choice lists ----------------------------------------------------------------

BACKEND_NAMES = ("nnsight", "transformer-lens")
"""The grafting backends (:data:`commlib.backends.BACKENDS` builds them)."""

NO_GRAFT = "none"
"""The ``f`` that means B alone (no communication)."""

COMBINE_NAMES = ("sum", "mean", "replace")
"""The built-in combining functions ``f(a, b)`` (:data:`commlib.combine.COMBINE_FNS` holds them)."""

Position = Literal["last", "content"]
POSITIONS: tuple[Position, ...] = ("last", "content")
"""Positions that carry a message: the last prompt token, or the last token of the user's text."""

REFERENCES = ("corpus", "prompt", "task")
"""What :func:`commlib.experiments.run_distance` measures B's states against: raw sentences,
sentences in B's prompt format, or the task's own prompts (see its docstring)."""

CONTROLS = ("random", "gaussian", "unrelated")
"""Control sources for the distance runs, in place of A's message:

* ``random``: an isotropic random direction at the norm of A's activation.
* ``gaussian``: a sample of a Gaussian with the mean and covariance of A's own
  activations at layer k (LAMBADA reference), at the norm of A's activation.
* ``unrelated``: A's real activation on another item's prompt (right
  statistics, wrong content).
"""

CORPORA = ("lambada", "c4")
"""General text (:mod:`commlib.corpora`) that W is fitted on and distances are measured against."""

SOURCES = ("offline", "hub")
"""Where reasoning tasks are read from (:mod:`commlib.tasks.reasoning`)."""

LATENT_METHODS = ("cipher", "rosetta", "interlat", "interlat-norm", "interlat-trained", "interlat-compressed")
"""The latent channels ``commlib latent`` runs."""

DTYPES = ("float32", "bfloat16", "float16")
"""The weights' dtypes a command can load models in (:func:`commlib.models.parse_dtype` reads them)."""

DEVICE_MAPS = ("auto",)
"""Device maps: ``auto`` spreads each model's layers over every visible GPU (accelerate)."""

DEFAULT_JUDGE = "qwen2.5-coder-1.5b"
"""The Biographies judge: the largest offline model."""

GAME_HELP = (
    "countries (countries:train, countries:heldout: disjoint landmarks), tipsheets, or PATH.jsonl "
    "(one object per line: sender, receiver, answer)"
)


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: the items of a comma-separated flag, blanks dropped.

    Example:
        >>> comma_list("silent, nl,"), comma_list("")
        (('silent', 'nl'), ())
    """
    return tuple(part.strip() for part in text.split(",") if part.strip())


def float_list(text: str) -> tuple[float, ...]:
    """``"0,0.5,1"`` -> ``(0.0, 0.5, 1.0)``."""
    return tuple(float(part) for part in comma_list(text))


def int_list(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``."""
    return tuple(int(part) for part in comma_list(text))


def option(
    default: Any = MISSING,
    *,
    help: str,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    flags: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """A dataclass field with its command-line description in its metadata.

    Args:
        default: The field's default; none makes the field (and its flag) required.
        help: What the setting does, in a phrase.
        choices: The values allowed, when they are fixed.
        flag: The flag's name when it is not ``--`` + the field's name with dashes
            (``--sample`` for ``do_sample``; ``--no-reply`` for ``reply``, which it clears).
        parse: Turns the flag's text into the field's value (e.g. :func:`comma_list`).
        metavar: The value's name in the help.
        flags: For a nested dataclass field: per inner field, the argparse settings
            that differ in this command (``{"n": {"default": 100}}``), or
            ``{"skip": True}`` for no flag (the field keeps its default).
    """
    metadata: dict[str, Any] = {"help": help, "choices": choices, "flag": flag, "parse": parse}
    metadata |= {"metavar": metavar, "flags": dict(flags or {})}
    return field(default=default, metadata={k: v for k, v in metadata.items() if v is not None})


# ---- the library's settings ------------------------------------------------------


@dataclass(frozen=True)
class GraftConfig:
    """Where and how to graft; recorded with every result.

    Attributes:
        k: Sender block whose output is read (0-based; HF ``hidden_states[k+1]``).
        j: Receiver block whose output is edited.
        f: ``sum``, ``mean``, ``replace`` (or any registered f), or ``none``.
        alpha: Interpolation ``b + alpha * (f(a, b) - b)``.
        match_norm: Rescale the grafted state to ``b``'s norm.
        position: ``"last"`` prompt token or last token of the user ``"content"``,
            for both capture and injection.
        n_positions: How many positions, ending at ``position``, are grafted
            (A's last n onto B's last n, aligned from the end; 1 is the paper's
            default, all of the shorter prompt its all-token ablation).
        raw: Feed prompts as given, without chat template or plain format.

    Raises:
        CommlibError: ``n_positions`` below 1, or an ``f`` that is not registered.
    """

    k: int = option(help="A's block whose output is sent (0-based)")
    j: int = option(help="B's block whose output is replaced (0-based)")
    f: str = option(
        "replace",
        help=f"how A's state a meets B's b: one of {', '.join((NO_GRAFT, *COMBINE_NAMES))} (none = B alone)",
    )
    alpha: float = option(1.0, help="interpolation b + alpha * (f(a, b) - b)")
    match_norm: bool = option(False, help="rescale the grafted state to B's norm")
    position: Position = option(
        "last",
        help="where A's state is read and B's written: the last prompt token, or the last "
        "token of the user's text",
        choices=POSITIONS,
    )
    raw: bool = option(False, help="do not wrap prompts in the prompt format")
    n_positions: int = option(1, help="graft the last n positions, aligned from the end")

    def __post_init__(self) -> None:
        if self.n_positions < 1:
            raise CommlibError(f"n_positions must be at least 1, got {self.n_positions}")
        if self.f in (NO_GRAFT, *COMBINE_NAMES):
            return
        from commlib.combine import COMBINE_FNS  # an f registered at run time

        if self.f not in COMBINE_FNS:
            raise UnknownCombineError(
                f"unknown f {self.f!r}; use one of {', '.join([NO_GRAFT, *COMBINE_FNS])}"
            )


@dataclass(frozen=True)
class Decoding:
    """Decoding settings, recorded with results.

    Attributes:
        max_new_tokens: Upper bound on generated tokens.
        do_sample: Sample (with ``temperature``, ``top_p``) instead of greedy.
        temperature: Softmax temperature when sampling.
        top_p: Nucleus threshold when sampling (1.0 = off).
        seed: Seed of the sampling generator.
        stop_at_eos: Stop each row at its first EOS token.
    """

    max_new_tokens: int = option(32, help="most tokens B generates")
    do_sample: bool = option(False, help="sample instead of greedy", flag="--sample")
    temperature: float = option(1.0, help="softmax temperature when sampling")
    top_p: float = option(1.0, help="nucleus threshold when sampling (1 = off)")
    seed: int = option(0, help="seed of the sampling generator")
    stop_at_eos: bool = option(True, help="stop each row at its first end-of-sequence token")


@dataclass(frozen=True, kw_only=True)
class ReferenceSpec:
    """Exactly which of a model's states a distance reference is made of; names its cache entry.

    Attributes:
        corpus: General text (:data:`CORPORA`), or ``"task:<game>"`` for a
            game's own prompts, each with its reply (needs ``formatted``).
        n: Sentences (or task prompts) read.
        seed: Seed of the sentences drawn, and of the fit/held-out split.
        formatted: Read each sentence as the user's text in the model's prompt
            format, followed by ``reply``, at ``position``; otherwise raw, at its
            final token.
        position: Where a formatted sentence is read (see :data:`POSITIONS`).
        reply: The start of the answer after each formatted sentence.

    Example:
        >>> from dataclasses import replace
        >>> game = ReferenceSpec(corpus="task:countries", n=300, formatted=True)
        >>> replace(game, seed=1).corpus, ReferenceSpec().n
        ('task:countries', 3072)
    """

    corpus: str = "lambada"
    n: int = 3072
    seed: int = 0
    formatted: bool = False
    position: Position = "last"
    reply: str = ""


# ---- what runs share -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where models run and in which precision: a device, or a device map over every visible GPU.

    Checked here for spelling only; :func:`commlib.models.load_model` checks
    that the machine has the GPU before it loads anything. Results record the
    placement a run had (:func:`commlib.results.placement`).

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: One of :data:`DTYPES`.
        device_map: ``auto`` to spread each model's layers over every visible
            GPU (accelerate; ``CUDA_VISIBLE_DEVICES`` picks them), for models
            larger than one GPU; then ``device`` is ``cpu`` (the default) or ``cuda``.

    Raises:
        CommlibError: a device, dtype or device map spelt otherwise, or
            ``cuda:N`` together with the device map.

    Example:
        >>> Placement(device="cuda:1", dtype="bfloat16").load_kwargs()
        {'device': 'cuda:1', 'dtype': 'bfloat16'}
        >>> Placement(device_map="auto").load_kwargs()["device"]
        'auto'
    """

    device: str = option("cpu", help="cpu, cuda or cuda:N", metavar="DEVICE")
    dtype: str = option("float32", choices=DTYPES, help="the weights' dtype")
    device_map: str | None = option(
        None,
        choices=DEVICE_MAPS,
        help="auto: spread each model over every visible GPU (accelerate), for models larger than one",
    )

    def __post_init__(self) -> None:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise CommlibError(f"device {self.device!r}: use cpu, cuda or cuda:N (e.g. cuda:0)")
        if self.dtype not in DTYPES:
            raise CommlibError(f"dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.device_map not in (None, *DEVICE_MAPS):
            raise CommlibError(f"device map {self.device_map!r}: use auto, or none for one device")
        if self.device_map and self.device not in ("cpu", "cuda"):
            raise CommlibError(
                f"the device map places the layers on every visible GPU itself: drop device {self.device} "
                "(CUDA_VISIBLE_DEVICES picks the GPUs)"
            )

    def load_kwargs(self) -> dict[str, str]:
        """The ``device`` and ``dtype`` of :func:`commlib.models.load_model` (device ``auto``: the map)."""
        return {"device": "auto" if self.device_map else self.device, "dtype": self.dtype}


@dataclass(frozen=True)
class ModelPair:
    """Sender A and receiver B, the backend that reads and edits their residual streams, where they run."""

    sender: str = option(
        help="model A, which reads the sender's prompt: a name from `commlib models`, a model directory "
        "or a hub id"
    )
    receiver: str = option(help="model B, which answers (the sender's name again for one model)")
    backend: str = option("nnsight", help="the library that grafts", choices=BACKEND_NAMES)
    placement: Placement = option(Placement(), help="where the models run")


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Which items a run draws and the directory it writes; the same directory again resumes the run."""

    n: int | None = option(None, help="items (default: 100 Countries, 70 Tip Sheets, or the whole file)")
    seed: int = option(0, help="seed of the items drawn")
    out: str = option(
        help="run directory (results.json, items.csv); the same directory resumes", metavar="DIR"
    )


@dataclass(frozen=True, kw_only=True)
class ReferenceChoice:
    """B's own states that a grafted state's distance is a percentile of, as a run chooses them."""

    reference: str = option(
        "corpus",
        choices=REFERENCES,
        help="B's states on raw sentences (corpus), on sentences in B's prompt format at the graft's "
        "position (prompt), or on the game's own prompts, both sides, of items no evaluation draws (task)",
    )
    n_reference: int = option(3072, help="sentences (or task prompts) in B's reference set")


_PAIR = "models"
_RUN = "items and output"
_AC_POSITION = "where AC reads A's state and writes B's: the last prompt token, or the end of the user's text"
_NO_REPLY = "B answers from scratch (no 'Alice is located in' opening)"


# ---- one run config per experiment command ------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DemoRun:
    """``commlib demo``: one toy Countries item, one model as both A and B."""

    model: str = option("smollm2-135m", help="the model that is both A and B")
    placement: Placement = option(Placement(), help="where the model runs")


@dataclass(frozen=True, kw_only=True)
class GraftRun:
    """``commlib graft``: one exchange, A's prompt grafted into B's."""

    pair: ModelPair = option(help=_PAIR)
    sender_prompt: str = option(help="what A reads")
    receiver_prompt: str = option(help="what B is asked")
    graft: GraftConfig = option(help="the graft", flags={"f": {"required": True}})
    decoding: Decoding = option(help="decoding", flags={"stop_at_eos": {"skip": True}})
    map: str | None = option(None, help="directory of a learned W (from `commlib fit-map`)", metavar="DIR")
    json: bool = option(False, help="print the text, token ids and full configuration as JSON")


@dataclass(frozen=True, kw_only=True)
class FitMapRun:
    """``commlib fit-map``: the linear map W from A's block k to B's block j."""

    pair: ModelPair = option(help=_PAIR)
    run: RunSpec = option(
        help="data and output",
        flags={
            "n": {"default": 3072, "help": "sentences (with --task: items) W is fitted on"},
            "seed": {"help": "seed of the sentences drawn and of W's training"},
            "out": {"help": "directory W is saved to"},
        },
    )
    k: int = option(help="A's block W reads")
    j: int = option(help="B's block W writes")
    epochs: int = option(10, help="passes over the pairs of states")
    fit: str = option(
        "adam", choices=("adam", "ridge"), help="adam (the paper's) or closed-form ridge with a bias"
    )
    corpus: str | None = option(None, choices=CORPORA, help="general text for W (default: lambada)")
    task: str | None = option(
        None,
        help="in-distribution W instead: fit on --n items of this reasoning task (e.g. gsm8k) that "
        "`commlib reasoning --n EVAL_N --seed SEED` does not score",
    )
    eval_n: int = option(100, help="with --task: the n of the run W is for")


@dataclass(frozen=True, kw_only=True)
class GamesRun:
    """``commlib games``: every method on one coordination game, resumable."""

    pair: ModelPair = option(help=_PAIR)
    run: RunSpec = option(help=_RUN)
    game: str = option(help=GAME_HELP)
    methods: tuple[str, ...] = option(
        ("silent", "skyline", "nl", "ac-sum", "ac-mean", "ac-replace"),
        parse=comma_list,
        help=f"comma-separated: {', '.join(names('games'))} (ac-w-*: with --map; interlat-trained, "
        "-compressed: through `commlib latent`)",
    )
    k: int | None = option(help="A's block for the ac-* methods")
    j: int | None = option(help="B's block for the ac-* methods")
    position: Position = option("last", choices=POSITIONS, help=_AC_POSITION)
    map: str | None = option(None, help="learned W for the ac-w-* methods (from fit-map)", metavar="DIR")
    batch_size: int = option(8, help="items decoded together")
    max_new_tokens: int = option(24, help="most tokens B answers with (greedy)")
    reply: bool = option(True, flag="--no-reply", help=_NO_REPLY)


@dataclass(frozen=True, kw_only=True)
class LatentRun:
    """``commlib latent``: a latent channel (CIPHER, Interlat) on a game next to baselines."""

    pair: ModelPair = option(
        help=_PAIR,
        flags={
            "receiver": {"help": "model B, which answers (Interlat: the sender's tokenizer; CIPHER projects)"}
        },
    )
    run: RunSpec = option(help=_RUN)
    game: str = option(help=GAME_HELP)
    method: str = option("cipher", choices=LATENT_METHODS, help="the latent channel")
    adapter: str | None = option(
        None, metavar="DIR", help="interlat-trained / -compressed: the directory train-adapter wrote"
    )
    temperatures: tuple[float, ...] = option(
        (1.0,), flag="--temperature", parse=float_list, help="cipher: comma-separated, one cipher-t<T> each"
    )
    baselines: tuple[str, ...] = option(
        ("silent", "nl"), parse=comma_list, help="games methods run alongside, comma-separated ('' for none)"
    )
    batch_size: int = option(8, help="items decoded together")
    max_new_tokens: int = option(24, help="most tokens B answers with (greedy)")
    reply: bool = option(True, flag="--no-reply", help=_NO_REPLY)


@dataclass(frozen=True, kw_only=True)
class TrainAdapterRun:
    """``commlib train-adapter``: an Interlat adapter, or K latents compressing one; B frozen; resumes."""

    pair: ModelPair = option(help=_PAIR, flags={"backend": {"skip": True}})
    run: RunSpec = option(
        help="items and output",
        flags={
            "n": {"skip": True},
            "seed": {"default": 1000, "help": "training items' seed (keep off the evaluation seeds 0 and 1)"},
            "out": {"help": "directory of the adapter (or compressor); the same directory resumes"},
        },
    )
    game: str | None = option(None, help=f"{GAME_HELP}; not with --compress")
    n_train: int = option(100, help="training items (Countries has 112 landmarks)")
    steps: int = option(300, help="optimiser steps")
    lr: float = option(1e-3, help="learning rate")
    message_tokens: int = option(48, help="longest message A writes")
    kl_weight: float = option(0.0, help="weight of the KL alignment to B reading A's text message")
    compress: int | None = option(None, metavar="K", help="train K latents on top of --adapter instead")
    adapter: str | None = option(None, metavar="DIR", help="with --compress: the base adapter's directory")
    ce_weight: float = option(0.0, help="with --compress: weight of the answer's cross-entropy")


@dataclass(frozen=True, kw_only=True)
class ReasoningRun:
    """``commlib reasoning``: GSM8k, MMLU or Biographies with single models, debate and AC; resumable."""

    pair: ModelPair = option(help=_PAIR)
    run: RunSpec = option(help=_RUN, flags={"n": {"default": 100, "help": "items scored"}})
    task: str = option(help="gsm8k, mmlu:SUBJECT (e.g. mmlu:formal_logic) or biographies")
    methods: tuple[str, ...] = option(
        ("single-a", "single-b", "nld", "ac-replace"),
        parse=comma_list,
        help=f"comma-separated: {', '.join(names('reasoning'))} (the older {', '.join(ALIASES)} also work)",
    )
    k: int | None = option(None, help="A's block for the ac-* methods")
    j: int | None = option(None, help="B's block for the ac-* methods")
    layers_from: str | None = option(
        None, help="model --k/--j were chosen on (e.g. its games sweep): map them by relative depth"
    )
    rounds: int = option(2, help="debate rounds of nld")
    a_temperature: float = option(0.0, help="A samples its text at this temperature (0: greedy)")
    a_top_p: float = option(0.9, help="A's nucleus threshold when sampling")
    a_seed: int = option(0, help="seed of A's sampling")
    answers: str | None = option(
        None,
        metavar="DIR",
        help="directory of single-model answers shared between runs (single-a/single-b generated once)",
    )
    judge: str = option(DEFAULT_JUDGE, help="biographies: the judge model ('' to generate only)")
    max_new_tokens: int = option(256, help="most tokens each answer has")
    batch_size: int = option(
        1,
        help="items decoded together by single-* and ac-* (not nld, ac-cot; same greedy answers)",
    )
    map: str | None = option(None, metavar="DIR", help="learned W for ac-w-replace (from fit-map)")
    source: str = option("offline", choices=SOURCES, help="read the task from the offline cache or the hub")


@dataclass(frozen=True, kw_only=True)
class SweepRun:
    """``commlib sweep``: the full (k, j) grid on a game (fast engine), resumable."""

    pair: ModelPair = option(help=_PAIR)
    run: RunSpec = option(help=_RUN)
    game: str = option(help=GAME_HELP)
    f: str = option("replace", choices=COMBINE_NAMES, help="how A's state a meets B's b")
    k_range: str | None = option(
        None, help="A's blocks: a:b (inclusive), a:b:step or a,b,c, e.g. 0:29:2 (default: all)"
    )
    j_range: str | None = option(None, help="B's blocks, as --k-range")
    position: Position = option("last", choices=POSITIONS, help=_AC_POSITION)
    max_new_tokens: int = option(8, help="greedy tokens per cell (0: log-prob only)")
    reply: bool = option(True, flag="--no-reply", help=_NO_REPLY)


@dataclass(frozen=True, kw_only=True)
class DistanceRun:
    """``commlib distance``: how far grafted states sit from B's own states."""

    pair: ModelPair = option(help=_PAIR)
    run: RunSpec = option(help=_RUN, flags={"out": {"help": "run directory (distances.csv); resumes"}})
    reference: ReferenceChoice = option(help="reference")
    game: str = option(help=GAME_HELP)
    k: int = option(help="A's block")
    j: int = option(help="B's block")
    methods: tuple[str, ...] = option(
        ("ac-sum", "ac-mean", "ac-replace"),
        parse=comma_list,
        help="the grafts, comma-separated: ac-sum, ac-mean, ac-replace (ac-w-*: with --map)",
    )
    alphas: tuple[float, ...] = option((1.0,), parse=float_list, help="comma-separated, e.g. 0,0.5,1,1.5,2")
    match_norm: str = option(
        "off", choices=("off", "on", "both"), help="rescale grafted states to B's norm: off, on, or both"
    )
    controls: tuple[str, ...] = option(
        CONTROLS, parse=comma_list, help="stand-ins for A's state, comma-separated ('' for none)"
    )
    n_positions: tuple[int, ...] = option(
        (1,), parse=int_list, help="grafted positions ending at --position, comma-separated: 1,2,4,8"
    )
    position: Position = option("last", choices=POSITIONS, help=_AC_POSITION)
    map: str | None = option(None, metavar="DIR", help="learned W for the ac-w-* methods (from fit-map)")


@dataclass(frozen=True, kw_only=True)
class SweepNRun:
    """``commlib sweep-n``: accuracy, distance and compute against how much state is sent."""

    pair: ModelPair = option(help=_PAIR)
    run: RunSpec = option(help=_RUN)
    reference: ReferenceChoice = option(
        help="reference",
        flags={
            "reference": {
                "default": "task",
                "help": "AC's reference for B's block-j states (see distance --help)",
            }
        },
    )
    game: str = option(help=GAME_HELP)
    methods: tuple[str, ...] = option(
        ("ac-replace", "cipher", "interlat-norm"),
        parse=comma_list,
        help=f"comma-separated: {', '.join(names('sweep-n'))}",
    )
    adapter: str | None = option(
        None, metavar="DIR", help="interlat-trained: the directory train-adapter wrote"
    )
    ns: tuple[str, ...] = option(
        ("0", "1", "2", "4", "8", "all"),
        parse=comma_list,
        help="n to sweep, comma-separated; all sends everything",
    )
    k: int | None = option(None, help="A's block (ac-*)")
    j: int | None = option(None, help="B's block (ac-*)")
    position: Position = option("last", choices=POSITIONS, help=_AC_POSITION)
    message_tokens: int = option(48, help="longest message A writes (latent)")
    max_new_tokens: int = option(24, help="most tokens B answers with (greedy)")


THESIS_DEFAULT_CHANNELS = (
    "silent",
    "skyline",
    "nl",
    "ac-sum",
    "ac-mean",
    "ac-replace",
    "ac-w-replace",
    "cipher-t0",
    "cipher-t1",
    "interlat",
)
"""What ``commlib thesis`` runs unless told otherwise."""


@dataclass(frozen=True, kw_only=True)
class ThesisRun:
    """``commlib thesis``: every channel against its content control on disjoint pools, one distance axis."""

    pair: ModelPair = option(help=_PAIR)
    run: RunSpec = option(
        help=_RUN,
        flags={
            "n": {"default": 200, "help": "test items (each with its content control)"},
            "seed": {"help": "fixes the pools, the names and the control derangement"},
            "out": {
                "help": "run directory (items.csv, summary.csv, results.json); the same directory resumes"
            },
        },
    )
    game: str = option(help="countries, tipsheets, or a JSONL task (fields sender, receiver, answer)")
    channels: tuple[str, ...] = option(
        THESIS_DEFAULT_CHANNELS,
        parse=comma_list,
        help="comma-separated channels; ac-* run at the selected and paper depth, ac-w-* at the paper's, kv "
        "at every layer (and --kv-layers); latent-steps-m<M>: A's M latent steps, then its cache; kv-fuser: "
        "A's cache through a fuser trained on the selection pool (any two RoPE models)",
    )
    n_selection: int | None = option(None, help="selection items (default: the rest of the task)")
    selection_fraction: float | None = option(None, help="JSONL task: the fraction held out for selection")
    selection_file: str | None = option(None, metavar="PATH", help="JSONL task: a second file for selection")
    depth_items: int = option(32, help="selection items AC's depth is chosen on")
    grid: int = option(7, help="blocks per axis searched for AC's depth")
    map: str | None = option(None, metavar="DIR", help="W at the paper's depth (default: fitted in the run)")
    map_sentences: int = option(1024, help="LAMBADA sentences W is fitted on when --map is not given")
    adapter: str | None = option(
        None,
        metavar="DIR",
        help="interlat-trained's adapter (default: trained in the run on selection items)",
    )
    adapter_items: int = option(100, help="selection items the adapter trains on when --adapter is not given")
    adapter_steps: int = option(300, help="the adapter's training steps when --adapter is not given")
    fuser: str | None = option(
        None, metavar="DIR", help="kv-fuser's fuser (default: trained in the run on selection items)"
    )
    fuser_items: int = option(
        100, help="selection items kv-fuser's fuser trains on when --fuser is not given"
    )
    fuser_steps: int = option(300, help="the fuser's training steps when --fuser is not given")
    kv_layers: str = option(
        "all",
        metavar="SPEC",
        help="kv also runs with only these of B's layers reading A's cache: all (no second run), "
        "kvcomm[:SHARE] (KVComm's selection on --depth-items selection items; share 0.3) or 3,5,7",
    )
    message_tokens: int = option(32, help="longest message A writes (NL, CIPHER, Interlat)")
    max_new_tokens: int = option(6, help="tokens B answers with after the reply (greedy)")
    chunk: int = option(16, help="test items per batch of work; every channel advances together")
