"""Index a dataset folder into labelled samples, from each dataset's own file naming.

Indexing reads names only, never mesh contents; `affectvlm.geometry.load_mesh(sample.path)` reads a mesh.
Layouts: BU-3DFE (`F0001_HA03WH_F3D.wrl`), BU-4DFE (`F001/Happy/000.wrl`), Bosphorus
(`bs001_E_HAPPY_0.bnt`) and any folder with a `labels.csv`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from affectvlm.data.emotions import parse_emotion
from affectvlm.geometry.io import READABLE_FORMATS, load_mesh
from affectvlm.geometry.mesh import Mesh
from affectvlm.geometry.normalise import DEFAULT_POSE, normalise

LABELS_FILE = "labels.csv"
REQUIRED_COLUMNS = ("file", "subject", "emotion")
OPTIONAL_COLUMNS = ("intensity", "sex", "age", "sequence", "frame")
LAYOUTS = ("labels", "bu3dfe", "bu4dfe", "bosphorus")

_SEXES = {"F": "female", "M": "male"}
_BU3DFE_NAME = re.compile(r"^([FM])(\d{4})_(AN|DI|FE|HA|NE|SA|SU)(\d{2})([A-Z]{2})_(F3D|RAW)\.wrl$")
_BU4DFE_SUBJECT = re.compile(r"^[FM]\d{3}$")
_BU4DFE_EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise")
_BOSPHORUS_NAME = re.compile(r"^(bs\d{3})_([A-Z]+)_([A-Z0-9]+)_(\d+)\.bnt$")


class DatasetError(ValueError):
    """A dataset folder or labels file that cannot be indexed; the message names the file and the problem."""


@dataclass(frozen=True)
class Sample:
    """One mesh of a dataset with its labels; `emotion` is a canonical name or None when unlabelled."""

    path: Path
    subject: str
    emotion: str | None
    intensity: int | None = None
    sequence: str | None = None  # 4D data: the sequence this frame belongs to
    frame: int | None = None
    attributes: dict = field(default_factory=dict, compare=False)  # sex, age, race, scan kind, ...


def load_sample(sample: Sample, pose: str = DEFAULT_POSE) -> Mesh:
    """The sample's mesh in the canonical frame (`affectvlm.geometry.normalise` with `pose`), its labels in the
    metadata. Raises `MeshError` for a file that is not a usable mesh."""
    mesh = normalise(load_mesh(sample.path), pose)
    mesh.metadata.update(subject=sample.subject, emotion=sample.emotion, intensity=sample.intensity,
                         sequence=sample.sequence, frame=sample.frame, **sample.attributes)
    return mesh


def index_dataset(root: str | Path, layout: str = "auto") -> list[Sample]:
    """Index `root` in the given layout, or the one its files show (`labels.csv` wins when present)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    if layout == "auto":
        layout = detect_layout(root)
    indexers = {"labels": index_labelled_folder, "bu3dfe": index_bu3dfe, "bu4dfe": index_bu4dfe,
                "bosphorus": index_bosphorus}
    if layout not in indexers:
        raise DatasetError(f"{root}: unknown layout '{layout}' (known: auto, {', '.join(LAYOUTS)})")
    return indexers[layout](root)


def detect_layout(root: Path) -> str:
    if (root / LABELS_FILE).is_file():
        return "labels"
    for path in root.rglob("*"):
        if _BOSPHORUS_NAME.match(path.name):
            return "bosphorus"
        if _BU3DFE_NAME.match(path.name):
            return "bu3dfe"
        if path.suffix == ".wrl" and _is_bu4dfe_frame(path):
            return "bu4dfe"
    raise DatasetError(f"{root}: no {LABELS_FILE}, and no file named as in BU-3DFE, BU-4DFE or Bosphorus")


def index_bu3dfe(root: str | Path, scan: str = "F3D") -> list[Sample]:
    """BU-3DFE scans named `F0001_HA03WH_F3D.wrl`: sex and subject number, emotion code and intensity
    (00 for neutral, 01-04), race code, and the scan kind (F3D cropped face or RAW)."""
    samples = []
    for path in sorted(Path(root).rglob("*.wrl")):
        match = _BU3DFE_NAME.match(path.name)
        if match is None or match.group(6) != scan:
            continue
        sex, number, code, intensity, race, _ = match.groups()
        emotion, intensity = parse_emotion(code), int(intensity)
        if (emotion == "neutral") != (intensity == 0) or intensity > 4:
            raise DatasetError(f"{path}: intensity {intensity:02d} is impossible for {emotion} in BU-3DFE "
                               "(neutral is 00, expressions 01-04)")
        samples.append(Sample(path, sex + number, emotion, intensity,
                              attributes={"sex": _SEXES[sex], "race": race, "scan": scan}))
    return _found(samples, root, f"BU-3DFE scans named like F0001_HA03WH_{scan}.wrl")


def index_bu4dfe(root: str | Path) -> list[Sample]:
    """BU-4DFE sequences `F001/Happy/000.wrl`: subject folder, emotion folder, one mesh per frame."""
    samples = []
    for path in Path(root).rglob("*.wrl"):
        if not _is_bu4dfe_frame(path):
            continue
        subject, emotion_folder = path.parent.parent.name, path.parent.name
        samples.append(Sample(path, subject, parse_emotion(emotion_folder), sequence=f"{subject}/{emotion_folder}",
                              frame=int(path.stem), attributes={"sex": _SEXES[subject[0]]}))
    samples.sort(key=lambda sample: (sample.sequence, sample.frame))
    return _found(samples, root, "BU-4DFE frames laid out like F001/Happy/000.wrl")


def _is_bu4dfe_frame(path: Path) -> bool:
    return (path.stem.isdigit() and path.parent.name in _BU4DFE_EMOTIONS
            and _BU4DFE_SUBJECT.match(path.parent.parent.name) is not None)


def index_bosphorus(root: str | Path) -> list[Sample]:
    """Bosphorus scans `bs001_E_HAPPY_0.bnt`. Emotion scans (kind E) and neutral scans (N) carry their
    emotion; action-unit, rotation and occlusion scans are indexed with emotion None and their kind."""
    samples = []
    for path in sorted(Path(root).rglob("*.bnt")):
        match = _BOSPHORUS_NAME.match(path.name)
        if match is None:
            continue
        subject, kind, code, take = match.groups()
        if kind == "E":
            try:
                emotion = parse_emotion(code)
            except ValueError as error:
                raise DatasetError(f"{path}: {error}") from None
        else:
            emotion = "neutral" if kind == "N" else None
        samples.append(Sample(path, subject, emotion, attributes={"kind": kind, "code": code, "take": int(take)}))
    return _found(samples, root, "Bosphorus scans named like bs001_E_HAPPY_0.bnt")


def index_labelled_folder(root: str | Path) -> list[Sample]:
    """A folder whose `labels.csv` has columns file, subject, emotion and optionally intensity, sex, age,
    sequence, frame. `file` is relative to the folder; an empty emotion means unlabelled."""
    labels = Path(root) / LABELS_FILE
    try:
        with open(labels, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
            rows = list(csv.DictReader(handle))
            columns = rows[0].keys() if rows else ()
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{labels}: cannot read ({error})") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise DatasetError(f"{labels}: no rows, or missing column(s) {', '.join(missing)}")
    return [_labelled_sample(labels, line, row) for line, row in enumerate(rows, start=2)]


def _labelled_sample(labels: Path, line: int, row: dict) -> Sample:
    where = f"{labels} line {line}"
    if None in row or None in row.values():
        raise DatasetError(f"{where}: wrong number of fields")
    path = labels.parent / row["file"]
    if not row["file"] or not path.is_file():
        raise DatasetError(f"{where}: mesh file '{row['file']}' not found")
    if path.suffix.lower() not in READABLE_FORMATS:
        raise DatasetError(f"{where}: '{row['file']}' is not a readable mesh format")
    if not row["subject"].strip():
        raise DatasetError(f"{where}: empty subject")
    try:
        emotion = parse_emotion(row["emotion"]) if row["emotion"].strip() else None
        intensity, frame = (_optional_int(row.get(name)) for name in ("intensity", "frame"))
    except ValueError as error:
        raise DatasetError(f"{where}: {error}") from None
    attributes = {name: row[name] for name in ("sex", "age") if row.get(name)}
    return Sample(path, row["subject"].strip(), emotion, intensity, row.get("sequence") or None, frame, attributes)


def _optional_int(text: str | None) -> int | None:
    return int(text) if text and text.strip() else None


def write_labels(root: str | Path, samples: list[Sample]) -> Path:
    """Write `root/labels.csv` for samples stored under `root`; optional columns appear when used."""
    root = Path(root)
    rows = [{"file": sample.path.relative_to(root).as_posix(), "subject": sample.subject,
             "emotion": sample.emotion or "", "intensity": sample.intensity, "sex": sample.attributes.get("sex"),
             "age": sample.attributes.get("age"), "sequence": sample.sequence, "frame": sample.frame}
            for sample in samples]
    used = [column for column in OPTIONAL_COLUMNS if any(row[column] is not None for row in rows)]
    labels = root / LABELS_FILE
    with open(labels, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*REQUIRED_COLUMNS, *used], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    return labels


def _found(samples: list[Sample], root, what: str) -> list[Sample]:
    if not samples:
        raise DatasetError(f"{root}: no {what}")
    return samples
