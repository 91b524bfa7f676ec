"""Published numbers that commlib's tables sit next to (transcribed, not computed).

Ramesh & Li (ICML 2025): Table 2, accuracy (%) on the coordination games, A
and B two instances of the same model; Tables 3 and 4, the reasoning
benchmarks. The appendix ablations (Tables 6, 8, 9) are not transcribed here.
"""

from __future__ import annotations

TABLE2: dict[str, dict[str, dict[str, float]]] = {
    "LLaMA-3.2-3B": {
        "countries": {
            "silent": 0.0,
            "skyline": 84.0,
            "nl": 69.0,
            "ac-sum": 34.0,
            "ac-mean": 36.0,
            "ac-replace": 78.0,
        },
        "tipsheets": {
            "silent": 38.6,
            "skyline": 100.0,
            "nl": 74.3,
            "ac-sum": 50.0,
            "ac-mean": 80.0,
            "ac-replace": 90.0,
        },
    },
    "LLaMA-3.1-8B": {
        "countries": {
            "silent": 2.0,
            "skyline": 86.0,
            "nl": 77.0,
            "ac-sum": 71.0,
            "ac-mean": 70.0,
            "ac-replace": 83.0,
        },
        "tipsheets": {
            "silent": 54.3,
            "skyline": 100.0,
            "nl": 85.7,
            "ac-sum": 85.7,
            "ac-mean": 92.9,
            "ac-replace": 95.7,
        },
    },
}
"""Table 2 of the paper: model -> game -> method -> accuracy in percent."""

TABLE3_TASKS = (
    "biographies",
    "gsm8k",
    "mmlu:high_school_psychology",
    "mmlu:formal_logic",
    "mmlu:college_biology",
    "mmlu:professional_law",
    "mmlu:public_relations",
)
"""The columns of the paper's Table 3, as commlib task names."""

TABLE3: dict[str, dict[str, float]] = {
    method: dict(zip(TABLE3_TASKS, scores, strict=True))
    for method, scores in {
        "single-a": (79.4, 58.0, 30.0, 16.0, 11.0, 0.0, 26.0),
        "single-b": (83.9, 60.0, 65.0, 42.0, 50.0, 20.0, 53.0),
        "nld": (80.2, 75.0, 83.0, 37.0, 71.0, 30.0, 63.0),
        "ac-replace": (84.6, 64.0, 85.0, 47.0, 78.0, 30.0, 74.0),
        "ac-w-replace": (86.8, 66.0, 70.0, 35.0, 79.0, 45.0, 63.0),
    }.items()
}
"""Table 3 of the paper (A = LLaMA-3.2-3B, B = LLaMA-3.1-8B): method -> task -> score in percent.

Biographies is the paper's judged fact score; the other tasks are accuracy.
"""

TABLE4: dict[str, dict[str, dict[str, float]]] = {
    pair: {
        method: {"biographies": bio, "gsm8k": gsm}
        for method, (bio, gsm) in zip(("single-a", "single-b", "nld", "ac-replace"), scores, strict=True)
    }
    for pair, scores in {
        "LLaMA-3.2-3B -> LLaMA-3.1-8B": ((79.4, 58.0), (83.9, 60.0), (80.2, 75.0), (84.6, 64.0)),
        "Qwen-2.5-1.5B -> Qwen-2.5-3B": ((59.4, 20.0), (85.5, 35.0), (63.2, 65.0), (89.6, 70.0)),
        "Gemma-2-2B -> Gemma-2-9B": ((83.0, 45.0), (94.6, 80.0), (70.3, 70.0), (88.1, 90.0)),
        "Qwen-2.5-1.5B -> LLaMA-3.2-3B": ((59.4, 20.0), (79.4, 58.0), (75.4, 75.0), (79.5, 75.0)),
        "LLaMA-3.2-3B -> Gemma-2-2B": ((79.4, 58.0), (83.0, 45.0), (62.5, 55.0), (84.0, 60.0)),
        "Qwen-2.5-1.5B -> Gemma-2-2B": ((59.4, 20.0), (83.0, 45.0), (49.3, 50.0), (73.0, 55.0)),
    }.items()
}
"""Table 4 of the paper (cross-family pairs, no W): "A -> B" -> method -> task -> score in percent."""
