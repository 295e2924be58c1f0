"""One style for every figure: colour-blind-safe palette (Okabe-Ito) and fixed model colours
(GPT and NextLat always the same colours, in every figure, interactive or static)."""
from __future__ import annotations

#: Okabe & Ito (2008) colour-blind-safe palette.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
MODEL_COLORS = {"gpt": "#0072B2", "nextlat": "#D55E00", "truth": "#000000", "exact": "#000000"}


def model_color(objective: str | None, index: int = 0) -> str:
    """Colour for a model: fixed for known objectives, else from the palette."""
    if objective and objective.lower() in MODEL_COLORS:
        return MODEL_COLORS[objective.lower()]
    return PALETTE[(index + 2) % len(PALETTE)]
