"""What the app feeds to predict: uploaded files, checked and read as meshes; synthetic faces made live; the
head turned by the view controls; and the checkpoint to load.

An upload is refused with an `UploadError` whose message is one line naming the uploaded file and what is
wrong: a type that is not a mesh or a zip, more bytes than the limit, an empty or unreadable file, more faces
than the limit, or a zip whose members leave its folder, are too many or too large. Uploads are read in a
private temporary folder that is removed afterwards; the temporary path never appears in a message.
"""

from __future__ import annotations

import functools
import re
import tempfile
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path, PurePosixPath

import numpy as np

from affectvlm.data.emotions import BASIC_EMOTIONS
from affectvlm.data.procedural_face import ProceduralFaceModel
from affectvlm.data.synthetic import LEVELS, expression_weights
from affectvlm.geometry.io import READABLE_FORMATS
from affectvlm.geometry.mesh import Mesh, MeshError
from affectvlm.geometry.normalise import head_rotation
from affectvlm.predict import read_input

SEQUENCE_SUFFIX = ".zip"
UPLOAD_SUFFIXES = READABLE_FORMATS + (SEQUENCE_SUFFIX,)
MB = 2 ** 20


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 200 * MB  # the upload itself (Streamlit's own default limit is also 200 MB)
    max_faces: int = 500_000  # per mesh; the largest face scans we know of have ~100k
    max_members: int = 300  # files in a zip: frames of one 4D sequence
    max_member_bytes: int = 100 * MB  # one zip member, uncompressed
    max_total_bytes: int = 1024 * MB  # all zip members together, uncompressed


class UploadError(ValueError):
    """An upload the app refuses; the message is one line that names the file."""


# Uploads -----------------------------------------------------------------------------------------------------

def read_upload(name: str, data: bytes, limits: UploadLimits = UploadLimits()) -> tuple[list[Mesh], list[str] | None]:
    """The meshes of an uploaded mesh file, or of the frames of an uploaded zip (then also the frames' names, in
    order); UploadError otherwise."""
    name = _plain_name(name)
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise UploadError(f"{name}: not a mesh file or a zip of a 4D sequence's frames (accepted: "
                          f"{', '.join(UPLOAD_SUFFIXES)})")
    if not data:
        raise UploadError(f"{name}: empty file")
    if len(data) > limits.max_bytes:
        raise UploadError(f"{name}: {_size(len(data))}, over the upload limit of {_size(limits.max_bytes)}")
    with tempfile.TemporaryDirectory(prefix="affectvlm-upload-") as folder:
        path = Path(folder) / name
        if suffix == SEQUENCE_SUFFIX:
            _extract_frames(name, data, path, limits)
        else:
            path.write_bytes(data)
        try:
            return read_input(path, limits.max_faces)
        except (MeshError, OSError, ValueError) as error:
            raise UploadError(" ".join(str(error).replace(f"{folder}/", "").split())) from None


def _size(count: int) -> str:
    for unit, scale in (("GB", 2 ** 30), ("MB", MB), ("kB", 2 ** 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _plain_name(name: str) -> str:
    """The file name alone, with only harmless characters, so it can name a temporary file."""
    base = PurePosixPath(name.replace("\\", "/")).name
    return re.sub(r"[^\w.\-]+", "_", base).lstrip(".") or "upload"


def _extract_frames(name: str, data: bytes, folder: Path, limits: UploadLimits) -> None:
    """Write the mesh members of a zip into `folder`, flat; refuse unsafe, oversized or unreadable archives."""
    try:
        archive = zipfile.ZipFile(BytesIO(data))
        members = [member for member in archive.infolist() if not member.is_dir()]
    except (zipfile.BadZipFile, ValueError, EOFError) as error:
        raise UploadError(f"{name}: not a readable zip archive ({error})") from None
    for member in members:
        if _leaves_folder(member.filename):
            raise UploadError(f"{name}: member '{member.filename}' has a path that leaves the archive's folder")
    if len(members) > limits.max_members:
        raise UploadError(f"{name}: {len(members)} files, more than the limit of {limits.max_members}")
    for member in members:
        if member.file_size > limits.max_member_bytes:
            raise UploadError(f"{name}: member '{member.filename}' is {_size(member.file_size)} uncompressed, over "
                              f"the limit of {_size(limits.max_member_bytes)}")
    total = sum(member.file_size for member in members)
    if total > limits.max_total_bytes:
        raise UploadError(f"{name}: {_size(total)} uncompressed, over the limit of {_size(limits.max_total_bytes)}")
    frames = [member for member in members if _is_frame(member.filename)]
    if not frames:
        raise UploadError(f"{name}: no mesh files in the archive ({', '.join(READABLE_FORMATS)})")
    parents = {PurePosixPath(member.filename).parent for member in frames}
    if len(parents) > 1:
        raise UploadError(f"{name}: mesh files in {len(parents)} folders; a 4D sequence is one folder of frames")
    folder.mkdir()
    for member in frames:
        try:
            # ZipExtFile stops at the declared size and checks the CRC, so a member cannot grow past its check.
            content = archive.read(member)
        except (zipfile.BadZipFile, ValueError, EOFError, OSError) as error:
            raise UploadError(f"{name}: member '{member.filename}' is damaged ({error})") from None
        (folder / _plain_name(member.filename)).write_bytes(content)


def _leaves_folder(member_name: str) -> bool:
    path = PurePosixPath(member_name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", member_name) is not None


def _is_frame(member_name: str) -> bool:
    """A mesh file, not one of the metadata files archivers add (__MACOSX/, ._name)."""
    path = PurePosixPath(member_name)
    return (path.suffix.lower() in READABLE_FORMATS and not path.name.startswith(".")
            and "__MACOSX" not in path.parts)


# Synthetic faces and the view controls ------------------------------------------------------------------------

SYNTHETIC_EMOTIONS = ("neutral",) + tuple(BASIC_EMOTIONS)
INTENSITIES = LEVELS


@functools.lru_cache(maxsize=1)
def _face_model() -> ProceduralFaceModel:
    return ProceduralFaceModel()


@functools.lru_cache(maxsize=8)
def _rig(identity_seed: int):
    model = _face_model()
    return model.rig(model.random_identity(np.random.default_rng(identity_seed)))


def synthetic_face(emotion: str, intensity: int, identity_seed: int) -> Mesh:
    """The built-in generator's face of one person (identity seed) with an emotion at an intensity (1-4), no
    head pose and no noise: the expression exactly as the face model defines it."""
    if emotion not in SYNTHETIC_EMOTIONS:
        raise ValueError(f"unknown emotion '{emotion}' (choose from {', '.join(SYNTHETIC_EMOTIONS)})")
    weights = {} if emotion == "neutral" else expression_weights(_face_model(), emotion, intensity)
    vertices = _rig(identity_seed).pose(weights).astype(np.float32)
    return Mesh(vertices, _face_model().faces, {"format": "synthetic"})


def turned(mesh: Mesh, yaw: float, pitch: float) -> Mesh:
    """The mesh turned about its bounding box's centre: yaw about the vertical axis, pitch about the horizontal
    one, in degrees (the app's view controls)."""
    if yaw == 0 and pitch == 0:
        return mesh
    low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    centre = (low + high) / 2
    rotation = head_rotation([yaw, pitch, 0.0])
    return Mesh(((mesh.vertices - centre) @ rotation.T + centre).astype(np.float32), mesh.faces, mesh.metadata)
