"""Checkpoints: one safetensors file holding every tensor, with the rest as JSON in the file's header.

A checkpoint file (`last.safetensors`, `best.safetensors`) holds
- tensors: the trained module's state (`module.model.*` the AffectVLM, `module.loss.*` the loss's logit scale
  and margin),
  the optimizer state (`optimizer.<parameter name>.<state>`) and every rank's random number generator states
  (`rng.<rank>.<generator>`);
- the header's metadata entry `affectvlm`: a JSON object with the model config, the label set, the prompt bank,
  the render and pipeline settings, the training state (epoch, step, best metric, seed), the training config
  and the optimizer's hyperparameters.

Nothing is unpickled on load. A file is written to a temporary name, flushed to disk, read back and only then
renamed over the old one (and the folder synced), so a crash or a bad write never replaces a good checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as encode_tensors

FORMAT = "affectvlm.checkpoint"
VERSION = 1
METADATA_KEY = "affectvlm"
EXPORT_ROWS_PREFIX = "export.rows."  # + a table's name: the rows an exported model kept (affectvlm.train.export)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file and what is wrong."""


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, torch.Tensor]
    info: dict  # the JSON part

    def with_prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors whose name starts with `prefix`, with the prefix removed."""
        return {name[len(prefix):]: tensor for name, tensor in self.tensors.items() if name.startswith(prefix)}


def save_checkpoint(paths: list[str | Path], tensors: dict[str, torch.Tensor], info: dict) -> None:
    """Write the same checkpoint to each path, atomically."""
    data = encode_tensors({name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()},
                          metadata={METADATA_KEY: json.dumps({"format": FORMAT, "version": VERSION, **info})})
    for path in paths:
        _write_atomically(Path(path), data, expected_names=set(tensors))


def _write_atomically(path: Path, data: bytes, expected_names: set[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if checkpoint_names(temporary) != expected_names:
            raise CheckpointError(f"{temporary}: read back with other tensors than were written")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def checkpoint_names(path: str | Path) -> set[str]:
    """The tensor names of a checkpoint, from its header alone (which safetensors checks against the file's
    size, so a truncated file fails here)."""
    return set(_read(Path(path), lambda file: file.keys()))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint; a missing, truncated or foreign file raises CheckpointError naming the file."""
    path = Path(path)
    metadata, tensors = _read(path, lambda file: (file.metadata() or {},
                                                  {name: file.get_tensor(name) for name in file.keys()}))
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: a safetensors file but not an AffectVLM checkpoint (no '{METADATA_KEY}' "
                              "metadata)")
    try:
        info = json.loads(metadata[METADATA_KEY])
    except ValueError as error:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({error})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an AffectVLM checkpoint (metadata format is not '{FORMAT}')")
    if info.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {info.get('version')}, this affectvlm reads "
                              f"version {VERSION}")
    if "export" in info:
        try:
            tensors = _expanded(tensors, info["export"])
        except (KeyError, IndexError, RuntimeError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{path}: damaged exported model ({type(error).__name__}: {error})") from None
    return Checkpoint(path, tensors, info)


def _expanded(tensors: dict[str, torch.Tensor], export: dict) -> dict[str, torch.Tensor]:
    """An exported model's tensors as a training checkpoint holds them: whole tables (rows it left out are
    zero), in float32."""
    tensors = dict(tensors)
    for name, num_rows in export.get("table_rows", {}).items():
        rows, kept = tensors.pop(EXPORT_ROWS_PREFIX + name), tensors[name]
        table = kept.new_zeros((num_rows, *kept.shape[1:]))
        table[rows] = kept
        tensors[name] = table
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in tensors.items()}


def _read(path: Path, read):
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(path, framework="pt") as file:
            return read(file)
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or damaged ({reason})") from None


def require_match(checkpoint: Checkpoint, what: str, expected, found_in_checkpoint) -> None:
    """Raise a one-line CheckpointError, naming the first difference, when the checkpoint's `what` differs from
    this run's (compared as JSON, so tuples equal lists)."""
    difference = _first_difference(json.loads(json.dumps(found_in_checkpoint)), json.loads(json.dumps(expected)))
    if difference is not None:
        where, stored, own = difference
        raise CheckpointError(f"{checkpoint.path}: {what} differs from this run's{where} (checkpoint: "
                              f"{_short(stored)}; this run: {_short(own)})")


def _first_difference(stored, own, where: str = ""):
    """(path, stored value, own value) of the first difference between two JSON values, or None."""
    if isinstance(stored, dict) and isinstance(own, dict):
        for key in sorted(set(stored) | set(own)):
            if key not in stored or key not in own or stored[key] != own[key]:
                return _first_difference(stored.get(key), own.get(key), f"{where}.{key}" if where else key)
        return None
    if stored == own:
        return None
    return (f" in {where}" if where else "", stored, own)


def _short(value, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "..."


# Module state ------------------------------------------------------------------------------------------------

def load_module_state(module: torch.nn.Module, checkpoint: Checkpoint, prefix: str) -> None:
    """Copy the checkpoint's tensors named `prefix`+name into `module`; other names or shapes raise
    CheckpointError."""
    own, stored = module.state_dict(), checkpoint.with_prefix(prefix)
    missing, unexpected = sorted(set(own) - set(stored)), sorted(set(stored) - set(own))
    if missing or unexpected:
        problems = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
                   ([f"unexpected {', '.join(unexpected[:3])}"] if unexpected else [])
        raise CheckpointError(f"{checkpoint.path}: its weights do not fit this model ({'; '.join(problems)})")
    for name, tensor in own.items():
        if stored[name].shape != tensor.shape:
            raise CheckpointError(f"{checkpoint.path}: weight {name} has shape {tuple(stored[name].shape)}, the "
                                  f"model expects {tuple(tensor.shape)}")
    module.load_state_dict(stored)


# Optimizer state ---------------------------------------------------------------------------------------------

def optimizer_state(optimizer: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str]) -> tuple[dict, dict]:
    """(tensors, JSON) of the optimizer state, each parameter's state keyed by the parameter's name."""
    tensors, groups = {}, []
    for group in optimizer.param_groups:
        groups.append({key: value for key, value in group.items() if key != "params"})
        groups[-1]["params"] = [names[parameter] for parameter in group["params"]]
        for parameter in group["params"]:
            for key, value in optimizer.state.get(parameter, {}).items():
                if not torch.is_tensor(value):
                    raise TypeError(f"optimizer state {key} of {names[parameter]} is not a tensor")
                tensors[f"optimizer.{names[parameter]}.{key}"] = value
    return tensors, {"param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str],
                         checkpoint: Checkpoint) -> None:
    stored_groups = checkpoint.info["optimizer"]["param_groups"]
    own_names = [[names[parameter] for parameter in group["params"]] for group in optimizer.param_groups]
    require_match(checkpoint, "the optimizer's parameter groups", own_names,
                  [group["params"] for group in stored_groups])
    state = checkpoint.with_prefix("optimizer.")
    index = {name: i for i, name in enumerate(name for group in own_names for name in group)}
    per_parameter: dict[int, dict] = {}
    for key, tensor in state.items():
        name, _, field = key.rpartition(".")
        if name not in index:
            raise CheckpointError(f"{checkpoint.path}: optimizer state for unknown parameter {name}")
        per_parameter.setdefault(index[name], {})[field] = tensor
    groups = []
    for own, stored in zip(optimizer.param_groups, stored_groups):
        group = {key: tuple(value) if isinstance(own.get(key), tuple) else value for key, value in stored.items()}
        group["params"] = [index[name] for name in stored["params"]]
        groups.append(group)
    optimizer.load_state_dict({"state": per_parameter, "param_groups": groups})


# Random number generators ------------------------------------------------------------------------------------

def rng_state() -> dict[str, torch.Tensor]:
    """This process's generator states as tensors: torch (CPU, and the current CUDA device when in use), numpy's
    and Python's global generators."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_position": torch.tensor([position, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached_gauss], dtype=torch.float64),
        "python_state": torch.tensor(python_state, dtype=torch.int64),
        "python_gauss": torch.tensor([math.nan if gauss_next is None else gauss_next], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def all_rng_states() -> dict[str, torch.Tensor]:
    """Every rank's generator states, `<rank>.<generator>`, gathered onto every rank (collective)."""
    own = rng_state()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return {f"0.{name}": tensor for name, tensor in own.items()}
    device = torch.device("cuda", torch.cuda.current_device()) \
        if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    states = {}
    for name, tensor in sorted(own.items()):
        parts = [torch.empty_like(tensor, device=device) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, tensor.to(device))
        states.update({f"{rank}.{name}": part.cpu() for rank, part in enumerate(parts)})
    return states


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    position, has_gauss = (int(value) for value in state["numpy_position"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), position, has_gauss,
                         float(state["numpy_gauss"][0])))
    gauss = float(state["python_gauss"][0])
    random.setstate((3, tuple(int(value) for value in state["python_state"]), None if math.isnan(gauss) else gauss))
