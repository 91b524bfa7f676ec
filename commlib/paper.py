"""Published numbers that commlib's tables sit next to (transcribed, not computed).

Ramesh & Li (ICML 2025), Table 2: accuracy (%) on the coordination games,
A and B two instances of the same model.
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
