"""The emotion vocabulary: the seven canonical names and the synonyms and codes datasets use for them."""

from __future__ import annotations

EMOTIONS = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
BASIC_EMOTIONS = tuple(emotion for emotion in EMOTIONS if emotion != "neutral")

_SYNONYMS = {
    "anger": ("angry", "an", "ang", "mad"),
    "disgust": ("disgusted", "di", "dis"),
    "fear": ("afraid", "fearful", "scared", "fe"),
    "happiness": ("happy", "joy", "ha", "hap", "smile"),
    "neutral": ("ne", "neu", "none"),
    "sadness": ("sad", "sa"),
    "surprise": ("surprised", "su", "sur"),
}
_NAMES = {name: canonical for canonical, names in _SYNONYMS.items() for name in (canonical, *names)}


def parse_emotion(text: str) -> str:
    """The canonical name of an emotion written as a name, synonym or dataset code (any case)."""
    canonical = _NAMES.get(text.strip().lower())
    if canonical is None:
        raise ValueError(f"unknown emotion '{text}' (expected one of {', '.join(EMOTIONS)} or a usual synonym)")
    return canonical
