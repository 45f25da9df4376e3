"""Subject-independent cross-validation: no subject's meshes are ever on both sides of a fold.

Folds are built from whole subjects, balanced so each fold holds about the same number of subjects and the
same mix of emotions. 4D frames count once per sequence when balancing, so a long sequence weighs no more
than a short one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from affectvlm.data.datasets import DatasetError, Sample
from affectvlm.data.emotions import BASIC_EMOTIONS, EMOTIONS

# The protocol of most BU-3DFE papers: 60 subjects, six expressions at the two highest intensities, 10 folds.
BU3DFE_PROTOCOL = {"subjects": 60, "emotions": BASIC_EMOTIONS, "intensities": (3, 4), "folds": 10}


@dataclass(frozen=True)
class Fold:
    """Indices into the sample list: `test` is this fold, `train` every other one."""

    train: tuple[int, ...]
    test: tuple[int, ...]
    test_subjects: tuple[str, ...]


def subject_kfold(samples: list[Sample], folds: int, seed: int = 0) -> list[Fold]:
    """Split `samples` into `folds` subject-independent folds, stratified by emotion, reproducible by seed."""
    units = _labelled_units(samples)
    subjects = sorted(units)
    if not 2 <= folds <= len(subjects):
        raise ValueError(f"{folds} folds need between 2 and {len(subjects)} (the number of subjects)")
    profiles = {subject: _emotion_profile(units[subject]) for subject in subjects}
    order = np.random.default_rng(seed).permutation(len(subjects))
    # Place the subjects with the most data first, each into the fold it unbalances least.
    order = sorted(order, key=lambda position: -profiles[subjects[position]].sum())
    fold_profiles = np.zeros((folds, len(EMOTIONS)))
    fold_subjects: list[list[str]] = [[] for _ in range(folds)]
    for position in order:
        subject = subjects[position]
        costs = [_imbalance(fold_profiles, fold, profiles[subject]) for fold in range(folds)]
        best = min(range(folds), key=lambda fold: (costs[fold], len(fold_subjects[fold])))
        fold_profiles[best] += profiles[subject]
        fold_subjects[best].append(subject)

    fold_of_subject = {subject: fold for fold, members in enumerate(fold_subjects) for subject in members}
    result = []
    for fold in range(folds):
        test = tuple(i for i, sample in enumerate(samples) if fold_of_subject[sample.subject] == fold)
        train = tuple(i for i, sample in enumerate(samples) if fold_of_subject[sample.subject] != fold)
        result.append(Fold(train, test, tuple(sorted(fold_subjects[fold]))))
    return result


def _labelled_units(samples: list[Sample]) -> dict[str, list[str | None]]:
    """Each subject's emotions, one entry per static scan or per 4D sequence."""
    units: dict[str, dict] = defaultdict(dict)
    for index, sample in enumerate(samples):
        key = (sample.sequence,) if sample.sequence is not None else ("scan", index)
        units[sample.subject][key] = sample.emotion
    if not units:
        raise ValueError("no samples to split")
    return {subject: list(keyed.values()) for subject, keyed in units.items()}


def _emotion_profile(emotions: list[str | None]) -> np.ndarray:
    counts = Counter(emotions)
    return np.array([counts[emotion] for emotion in EMOTIONS], dtype=float)


def _imbalance(fold_profiles: np.ndarray, fold: int, profile: np.ndarray) -> float:
    """Sum of squared per-emotion counts after adding `profile` to `fold`: smallest when folds are even."""
    return float(((fold_profiles[fold] + profile) ** 2).sum())


def sequences(samples: list[Sample]) -> dict[str, list[Sample]]:
    """4D samples grouped by sequence, each sequence's frames in order."""
    grouped: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.sequence is None:
            raise ValueError(f"{sample.path}: not part of a sequence")
        grouped[sample.sequence].append(sample)
    return {name: sorted(frames, key=lambda sample: sample.frame) for name, frames in sorted(grouped.items())}


def bu3dfe_protocol(samples: list[Sample], subjects: list[str] | None = None, seed: int | None = None,
                    fold_seed: int = 0) -> tuple[list[Sample], list[Fold]]:
    """The BU-3DFE protocol: 60 subjects x 6 expressions x intensities 3 and 4 = 720 samples, 10 folds of
    6 subjects (72 samples each).

    The 60 subjects are `subjects` when given; otherwise the first 60 in sorted order, or with `seed` a
    seeded random choice of 60 among the subjects present. Returns the protocol's samples and its folds.
    """
    protocol = BU3DFE_PROTOCOL
    selected = [sample for sample in samples
                if sample.emotion in protocol["emotions"] and sample.intensity in protocol["intensities"]]
    available = sorted({sample.subject for sample in selected})
    if subjects is None:
        if len(available) < protocol["subjects"]:
            raise DatasetError(f"the BU-3DFE protocol needs {protocol['subjects']} subjects with level 3-4 "
                               f"expressions; found {len(available)}")
        chosen = available[:protocol["subjects"]] if seed is None else \
            sorted(np.random.default_rng(seed).choice(available, protocol["subjects"], replace=False).tolist())
    else:
        chosen = sorted(set(subjects))
        absent = [subject for subject in chosen if subject not in available]
        if len(chosen) != protocol["subjects"] or absent:
            raise DatasetError(f"the BU-3DFE protocol needs {protocol['subjects']} distinct subjects present "
                               f"in the data; got {len(chosen)}" + (f", absent: {', '.join(absent)}" if absent else ""))
    chosen_set = set(chosen)
    selected = [sample for sample in selected if sample.subject in chosen_set]
    expected = protocol["subjects"] * len(protocol["emotions"]) * len(protocol["intensities"])
    if len(selected) != expected:
        raise DatasetError(f"the BU-3DFE protocol expects {expected} scans for its subjects; found {len(selected)} "
                           "(are some expression scans missing or duplicated?)")
    return selected, subject_kfold(selected, protocol["folds"], seed=fold_seed)
