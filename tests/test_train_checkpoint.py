"""Checkpoint files: round trips of every part, atomic writes, and one-line errors for bad files."""

import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from affectvlm.train import checkpoint as ckpt
from affectvlm.train.checkpoint import CheckpointError


def small_net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


def adam_steps(net, optimizer, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        net(torch.randn(4, 5, generator=g)).square().mean().backward()
        optimizer.step()


def names_of(net):
    return {parameter: name for name, parameter in net.named_parameters()}


def write_example(path, net=None, optimizer=None, info=None):
    net = net or small_net(0)
    optimizer = optimizer or torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    tensors, optimizer_info = ckpt.optimizer_state(optimizer, names_of(net))
    tensors.update({f"module.{k}": v for k, v in net.state_dict().items()})
    ckpt.save_checkpoint([path], tensors, {"optimizer": optimizer_info, **(info or {"classes": ["a", "b"]})})
    return net, optimizer


def test_round_trip_restores_weights_optimizer_and_continues_identically(tmp_path):
    net = small_net(1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.05)
    adam_steps(net, optimizer, 3, seed=5)
    write_example(tmp_path / "last.safetensors", net, optimizer, {"classes": ["x"], "training": {"step": 3}})

    loaded = ckpt.load_checkpoint(tmp_path / "last.safetensors")
    assert loaded.info["classes"] == ["x"] and loaded.info["training"] == {"step": 3}
    restored = small_net(2)  # other initial weights
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=1.0, betas=(0.8, 0.95), weight_decay=0.05)
    ckpt.load_module_state(restored, loaded, "module.")
    ckpt.load_optimizer_state(restored_optimizer, names_of(restored), loaded)
    assert restored_optimizer.param_groups[0]["lr"] == 1e-2
    assert restored_optimizer.param_groups[0]["betas"] == (0.8, 0.95)

    adam_steps(net, optimizer, 4, seed=9)
    adam_steps(restored, restored_optimizer, 4, seed=9)
    for a, b in zip(net.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)


def test_rng_states_restore_every_generator():
    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    random.gauss(0, 1)  # leaves a cached second Gaussian in Python's generator
    state = ckpt.rng_state()
    first = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], random.gauss(0, 1))
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ckpt.set_rng_state(state)
    second = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)], random.gauss(0, 1))
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2:] == second[2:]


def test_all_rng_states_without_process_group_is_rank_zero():
    states = ckpt.all_rng_states()
    assert states and all(name.startswith("0.") for name in states)


def test_truncated_checkpoint_is_named_and_refused(tmp_path):
    path = tmp_path / "last.safetensors"
    write_example(path)
    data = path.read_bytes()
    for size in (len(data) // 2, 6, 0):
        path.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match=r"last\.safetensors: not a readable safetensors file") as error:
            ckpt.load_checkpoint(path)
        assert "\n" not in str(error.value)


def test_foreign_files_are_refused(tmp_path):
    plain = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="other.safetensors: a safetensors file but not an AffectVLM"):
        ckpt.load_checkpoint(plain)
    tagged = tmp_path / "tagged.safetensors"
    save_file({"weight": torch.zeros(3)}, tagged, metadata={"affectvlm": json.dumps({"format": "something"})})
    with pytest.raises(CheckpointError, match="tagged.safetensors: not an AffectVLM checkpoint"):
        ckpt.load_checkpoint(tagged)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, this is not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.safetensors: not a readable safetensors"):
        ckpt.load_checkpoint(text)
    with pytest.raises(CheckpointError, match="absent.safetensors: no such checkpoint file"):
        ckpt.load_checkpoint(tmp_path / "absent.safetensors")


def test_mismatched_checkpoint_names_what_differs(tmp_path):
    path = tmp_path / "last.safetensors"
    write_example(path, info={"classes": ["anger", "fear"]})
    loaded = ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"last.safetensors: the label set differs from this run's "
                                              r"\(checkpoint: \[\"anger\", \"fear\"\]; this run: \[\"fear\"\]\)"):
        ckpt.require_match(loaded, "the label set", ["fear"], loaded.info["classes"])
    wider = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with pytest.raises(CheckpointError, match=r"weight 0.weight has shape \(7, 5\), the model expects \(8, 5\)"):
        ckpt.load_module_state(wider, loaded, "module.")
    deeper = torch.nn.Sequential(*small_net(0), torch.nn.Linear(3, 3))
    with pytest.raises(CheckpointError, match="do not fit this model .missing 3.bias, 3.weight"):
        ckpt.load_module_state(deeper, loaded, "module.")


def test_a_failed_write_leaves_the_good_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    net, _ = write_example(path)
    good = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_example(path, small_net(7))
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]


def test_a_write_that_reads_back_wrong_is_not_renamed(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    write_example(path)
    good = path.read_bytes()
    real_names = ckpt.checkpoint_names

    def lossy_names(file):
        return set(sorted(real_names(file))[1:])

    monkeypatch.setattr(ckpt, "checkpoint_names", lossy_names)
    with pytest.raises(CheckpointError, match="read back with other tensors"):
        write_example(path, small_net(7))
    assert path.read_bytes() == good


def test_mismatch_names_the_first_differing_setting(tmp_path):
    path = tmp_path / "last.safetensors"
    write_example(path, info={"data": {"source": {"size": 32, "views": ["frontal"]}, "crop": [0.9, 1.1]}})
    loaded = ckpt.load_checkpoint(path)
    ckpt.require_match(loaded, "the data settings", {"source": {"size": 32, "views": ("frontal",)},
                                                     "crop": (0.9, 1.1)}, loaded.info["data"])  # tuples = lists
    with pytest.raises(CheckpointError, match=r"the data settings differs from this run's in source.size "
                                              r"\(checkpoint: 32; this run: 64\)"):
        ckpt.require_match(loaded, "the data settings", {"source": {"size": 64, "views": ["frontal"]},
                                                         "crop": [0.9, 1.1]}, loaded.info["data"])
