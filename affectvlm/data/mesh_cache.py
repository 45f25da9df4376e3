"""The mesh cache: a dataset's meshes in the canonical frame as memory-mapped arrays, for rendering per batch.

Reading a mesh file (VRML, PLY, ...) and normalising it takes milliseconds to tens of milliseconds; the online
views source reads every mesh once per epoch, so the meshes are converted once into plain arrays:
- `vertices-00000.npy`, ...: float32 (n, 3), the vertices of consecutive samples one after another;
- `faces-00000.npy`, ...: int32 (m, 3), the faces of each distinct topology, stored once however many
  samples share it (the frames of a synthetic sequence, or any meshes with identical faces);
- `index.json`: the source folder, layout and pose normalisation, the shard files, the topologies (shard, start,
  count) and one entry per sample (its file relative to the source folder, labels, where its vertices lie, its
  topology).
Shards are written to temporary files and renamed, and the index last, so a folder with an index is complete.
Opening the cache maps every shard and checks its shape against the index; loading a mesh is two slices and a
copy (microseconds), and the vertices of a batch of one vertex count are copied straight into the batch's
buffer (`vertices`). Damage shows as a one-line `MeshCacheError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from affectvlm.data.datasets import Sample, index_dataset, load_sample
from affectvlm.geometry.normalise import DEFAULT_POSE, POSES, UNRECORDED_POSE

INDEX_FILE = "index.json"
FORMAT = "affectvlm-mesh-cache-1"
SHARD_BYTES = 64 << 20  # a shard is closed once it holds this much


class MeshCacheError(ValueError):
    """A mesh cache that cannot be built or read; the message names the file and the problem."""


def build_mesh_cache(data: str | Path, out: str | Path, layout: str = "auto",
                     on_samples: Callable[[int], None] | None = None, pose: str = DEFAULT_POSE) -> MeshCache:
    """Convert every mesh of the dataset folder `data`, normalised with `pose`, into the mesh cache folder `out`
    and open it. A folder that already holds the cache of the same samples and pose is opened as it is; one
    holding anything else is refused. `on_samples(n)` is called as n more meshes are done."""
    data, out = Path(data), Path(out)
    if pose not in POSES:
        raise MeshCacheError(f"unknown pose normalisation '{pose}' (choose from {', '.join(POSES)})")
    samples = index_dataset(data, layout)
    if not samples:
        raise MeshCacheError(f"{data}: no samples to cache")
    entries = [_sample_entry(data, sample) for sample in samples]
    if (out / INDEX_FILE).exists():
        existing = MeshCache(out)
        if [_strip_location(e) for e in existing.index["samples"]] != entries:
            raise MeshCacheError(f"{out} holds a mesh cache of other data; choose another folder or empty it")
        if existing.pose != pose:
            raise MeshCacheError(f"{out} holds meshes normalised with pose '{existing.pose}', not '{pose}'; choose "
                                 "another folder or empty it")
        return existing
    out.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out)
    topologies: dict[bytes, int] = {}
    for sample, entry in zip(samples, entries):
        mesh = load_sample(sample, pose)
        key = hashlib.blake2b(np.ascontiguousarray(mesh.faces, dtype=np.int32).tobytes(), digest_size=16).digest()
        if key not in topologies:
            topologies[key] = len(writer.topologies)
            writer.add_faces(mesh.faces)
        entry.update(writer.add_vertices(mesh.vertices), topology=topologies[key])
        if on_samples is not None:
            on_samples(1)
    writer.close()
    index = {"format": FORMAT, "data": str(data.resolve()), "layout": layout, "pose": pose,
             "vertex_shards": writer.shards["vertices"], "face_shards": writer.shards["faces"],
             "topologies": writer.topologies, "samples": entries}
    _write_atomically(out / INDEX_FILE, lambda path: path.write_text(json.dumps(index)))
    return MeshCache(out)


def _sample_entry(data: Path, sample: Sample) -> dict:
    return {"file": sample.path.relative_to(data).as_posix(), "subject": sample.subject, "emotion": sample.emotion,
            "intensity": sample.intensity, "sequence": sample.sequence, "frame": sample.frame,
            "attributes": dict(sample.attributes)}


def _strip_location(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key not in ("shard", "start", "count", "topology")}


class _ShardWriter:
    """Appends vertex and face arrays to shards of about SHARD_BYTES, written as each fills."""

    def __init__(self, out: Path):
        self.out = out
        self.shards = {"vertices": [], "faces": []}
        self.pending = {"vertices": [], "faces": []}
        self.rows = {"vertices": 0, "faces": 0}
        self.topologies: list[dict] = []

    def add_vertices(self, vertices: np.ndarray) -> dict:
        return self._add("vertices", np.ascontiguousarray(vertices, dtype=np.float32))

    def add_faces(self, faces: np.ndarray) -> None:
        self.topologies.append(self._add("faces", np.ascontiguousarray(faces, dtype=np.int32)))

    def _add(self, kind: str, array: np.ndarray) -> dict:
        location = {"shard": len(self.shards[kind]), "start": self.rows[kind], "count": len(array)}
        self.pending[kind].append(array)
        self.rows[kind] += len(array)
        if self.rows[kind] * 12 >= SHARD_BYTES:
            self._flush(kind)
        return location

    def _flush(self, kind: str) -> None:
        if not self.pending[kind]:
            return
        name = f"{kind}-{len(self.shards[kind]):05d}.npy"
        array = np.concatenate(self.pending[kind])
        _write_atomically(self.out / name, lambda path: np.save(path, array))
        self.shards[kind].append({"file": name, "rows": len(array)})
        self.pending[kind], self.rows[kind] = [], 0

    def close(self) -> None:
        self._flush("vertices")
        self._flush("faces")


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(f".{path.name}.partial.npy" if path.suffix == ".npy" else f".{path.name}.partial")
    write(temporary)
    os.replace(temporary, path)


class MeshCache:
    """A mesh cache folder opened for reading: `samples` (list of Sample) and `load(i)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_path = self.path / INDEX_FILE
        try:
            self.index = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise MeshCacheError(f"{index_path}: missing (not a mesh cache folder)") from None
        except (OSError, ValueError) as error:
            raise MeshCacheError(f"{index_path}: unreadable ({error})") from None
        if not isinstance(self.index, dict) or self.index.get("format") != FORMAT:
            raise MeshCacheError(f"{index_path}: not a mesh cache index (format {FORMAT} expected)")
        try:
            data = Path(self.index["data"])
            self.pose = self.index.get("pose", UNRECORDED_POSE)
            self.samples = [Sample(data / e["file"], e["subject"], e["emotion"], e["intensity"], e["sequence"],
                                   e["frame"], e["attributes"]) for e in self.index["samples"]]
            self._entries = np.array([[e["shard"], e["start"], e["count"], e["topology"]]
                                      for e in self.index["samples"]], dtype=np.int64).reshape(-1, 4)
            self._topologies = np.array([[t["shard"], t["start"], t["count"]] for t in self.index["topologies"]],
                                        dtype=np.int64).reshape(-1, 3)
            self._vertex_shards = [self._open(s, np.float32) for s in self.index["vertex_shards"]]
            self._face_shards = [self._open(s, np.int32) for s in self.index["face_shards"]]
        except (KeyError, TypeError) as error:
            raise MeshCacheError(f"{index_path}: malformed index ({error!r})") from None
        self._checked_topologies: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _open(self, shard: dict, dtype) -> np.ndarray:
        path = self.path / shard["file"]
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise MeshCacheError(f"{path}: missing mesh cache shard") from None
        except (OSError, ValueError, EOFError) as error:
            raise MeshCacheError(f"{path}: truncated or unreadable mesh cache shard ({error})") from None
        if array.dtype != dtype or array.shape != (shard["rows"], 3):
            raise MeshCacheError(f"{path}: holds {array.dtype} {array.shape}, the index says "
                                 f"{np.dtype(dtype)} ({shard['rows']}, 3)")
        return array

    def topology(self, i: int) -> int:
        """The topology id of sample i: samples with the same id have the same faces."""
        return int(self._entries[i, 3])

    def vertex_count(self, i: int) -> int:
        return int(self._entries[i, 2])

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample i's mesh in the canonical frame: vertices float32 (V, 3) and faces int32 (F, 3)."""
        topology = self.topology(i)
        return self.vertices([i])[0], self.faces(topology)

    def vertices(self, sample_ids, out: np.ndarray | None = None) -> np.ndarray:
        """The vertices float32 (B, V, 3) of samples that all have V vertices (e.g. frames of one topology),
        copied into `out` when given (a batch's buffer) or into a new array."""
        sample_ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)
        entries = self._entries[sample_ids]
        counts = np.unique(entries[:, 2])
        if len(counts) != 1:
            raise ValueError(f"MeshCache.vertices: the samples have {len(counts)} different vertex counts")
        if out is None:
            out = np.empty((len(sample_ids), counts[0], 3), dtype=np.float32)
        for position, (shard, start, count, _) in enumerate(entries):
            out[position] = self._vertex_shards[shard][start:start + count]
        if not np.isfinite(out).all():
            first = int(np.flatnonzero(~np.isfinite(out).reshape(len(out), -1).all(axis=1))[0])
            shard_file = self.index["vertex_shards"][entries[first, 0]]["file"]
            raise MeshCacheError(f"{self.path / shard_file}: sample {sample_ids[first]} has NaN or infinite "
                                 "vertices (corrupt mesh cache)")
        return out

    def faces(self, topology: int) -> np.ndarray:
        """The faces int32 (F, 3) of a topology (see `topology`)."""
        shard, start, count = self._topologies[topology]
        faces = np.array(self._face_shards[shard][start:start + count])
        if topology not in self._checked_topologies:
            self._check_faces(topology, faces)
        return faces

    def _check_faces(self, topology: int, faces: np.ndarray) -> None:
        users = self._entries[self._entries[:, 3] == topology, 2]
        if faces.min(initial=0) < 0 or faces.max(initial=0) >= users.min():
            shard = self._topologies[topology, 0]
            raise MeshCacheError(f"{self.path / self.index['face_shards'][shard]['file']}: topology {topology} "
                                 f"indexes vertices outside its meshes (corrupt mesh cache)")
        self._checked_topologies.add(topology)
