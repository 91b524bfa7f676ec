"""Experiments over many items: one question per module, each run resumable.

* :mod:`~commlib.experiments.games`: does a method carry the message on a coordination game?
* :mod:`~commlib.experiments.layers`: the (k, j) grid and layer selection.
* :mod:`~commlib.experiments.distance`: how far a graft moves B off its own states.
* :mod:`~commlib.experiments.reasoning`: GSM8k, MMLU and Biographies, with compute.
* :mod:`~commlib.experiments.scoring`: a reasoning run's rows scored, with FLOPs, and summarised.
* :mod:`~commlib.experiments.judging`: the Biographies judge and its controls.
* :mod:`~commlib.experiments.held_out`: a task's items beside a run, for what is fitted next to it.
* :mod:`~commlib.experiments.depth`: AC against its control per depth, for reasoning.
* :mod:`~commlib.experiments.sweep_n`: accuracy and distance against how much state is sent.
* :mod:`~commlib.experiments.compression`: a trained Interlat message compressed to K latents.

Every name is importable from here (``from commlib.experiments import run_games``).
"""

from commlib.experiments.compression import run_compression
from commlib.experiments.depth import (
    DEPTH_METHODS,
    reasoning_reference_states,
    run_reasoning_depths,
    run_reasoning_distance,
)
from commlib.experiments.distance import CONTROLS, REFERENCES, run_distance, run_latent_distance
from commlib.experiments.games import run_games
from commlib.experiments.held_out import REASONING_REFERENCE_SEED, fit_task_map, other_items, other_items_name
from commlib.experiments.judging import (
    JUDGE_CONTROL,
    JUDGEMENTS,
    TRUTH,
    biographies_against_control,
    judge_biographies,
    judge_control,
    judge_key,
)
from commlib.experiments.layers import (
    SELECTION_N,
    SWEEP_FIELDS,
    best_layers,
    choose_layers,
    grid_summary,
    read_sweep,
    run_sweep,
    selection_step,
    sweep_dir,
)
from commlib.experiments.reasoning import (
    read_reasoning,
    reasoning_dir,
    run_pair_reasoning,
    run_reasoning,
)
from commlib.experiments.scoring import REASONING_FIELDS
from commlib.experiments.sweep_n import N_SWEEP_DISTANCES, N_SWEEP_FIELDS, n_sweep_table, run_n_sweep

__all__ = [
    "CONTROLS",
    "DEPTH_METHODS",
    "JUDGEMENTS",
    "JUDGE_CONTROL",
    "N_SWEEP_DISTANCES",
    "N_SWEEP_FIELDS",
    "REASONING_FIELDS",
    "REASONING_REFERENCE_SEED",
    "REFERENCES",
    "SELECTION_N",
    "SWEEP_FIELDS",
    "TRUTH",
    "best_layers",
    "biographies_against_control",
    "choose_layers",
    "fit_task_map",
    "grid_summary",
    "judge_biographies",
    "judge_control",
    "judge_key",
    "n_sweep_table",
    "other_items",
    "other_items_name",
    "read_reasoning",
    "read_sweep",
    "reasoning_dir",
    "reasoning_reference_states",
    "run_compression",
    "run_distance",
    "run_games",
    "run_latent_distance",
    "run_n_sweep",
    "run_pair_reasoning",
    "run_reasoning",
    "run_reasoning_depths",
    "run_reasoning_distance",
    "run_sweep",
    "selection_step",
    "sweep_dir",
]
