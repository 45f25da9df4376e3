"""The training config: its recorded command line parses back to it, and settings that cannot work are refused."""

import argparse
import random
from dataclasses import fields

import pytest

from affectvlm.train.config import TrainConfig, add_arguments, validate


def parsed(command: str) -> TrainConfig:
    import shlex

    words = shlex.split(command)
    assert words[:2] == ["affectvlm", "train"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return TrainConfig.from_args(parser.parse_args(words[2:]))


def random_config(rng: random.Random) -> TrainConfig:
    choices = {
        "data": [None, "data/my scans"], "cache_dir": [None, "/tmp/c"], "synthetic_subjects": [60, rng.randint(1, 500)],
        "views": [("frontal", "left", "right"), ("frontal",), ("frontal", "up", "down")],
        "image_size": [None, rng.randint(16, 256)], "recipe": [None, "normal"], "pose": ["template", "none"],
        "source": ["cached", "online"],
        "jitter": [{}, {"yaw": rng.uniform(0, 20), "light": 5.0}], "augment": [None, {}, {"flip": 0.25, "crop_scale": [0.9, 1.0]}],
        "eye_holes": [0.0, rng.uniform(0, 1)],
        "folds": [5, 3], "fold": [0, 1], "model": ["affect-tiny", "cfg.json"], "pretrained": [None, "w.pt"],
        "view_fusion": ["mean", "attention"], "prompts": [None, "p.json"], "prompt_bank": [None, "b.json"],
        "batch_size": [32, rng.randint(1, 64)], "epochs": [12, rng.randint(1, 40)], "max_steps": [None, 7],
        "lr": [1e-3, rng.uniform(1e-5, 1e-2)], "warmup": [20, 0], "weight_decay": [0.1, rng.uniform(0, 1)],
        "clip_grad": [0.0, rng.uniform(0.1, 10)],
        "accumulate": [1, 3], "loss_weights": [(1.0, 1.0, 1.0), (0.0, 0.0, 1.0), (rng.random(), 0.5, 2.0)],
        "seed": [0, rng.randint(-5, 10 ** 6)], "out": ["runs/affectvlm", "runs/x y"], "resume": [None, "auto"],
        "checkpoint_every": [0, 50], "device": ["auto", "cpu"], "amp": [True, False], "compile": [False, True],
        "backend": ["auto", "torch"], "log_every": [1, 10], "trace_samples": [False, True],
        "progress": [True, False],
    }
    assert set(choices) == {item.name for item in fields(TrainConfig)}  # every option is exercised
    return TrainConfig(**{name: rng.choice(values) for name, values in choices.items()})


@pytest.mark.parametrize("seed", range(20))
def test_the_command_line_of_a_config_parses_back_to_it(seed):
    config = random_config(random.Random(seed))
    assert parsed(config.command_line()) == config


def test_defaults_give_the_bare_command():
    assert TrainConfig().command_line() == "affectvlm train"
    assert TrainConfig(out="runs/demo").command_line() == "affectvlm train --out runs/demo"


def test_augment_settings_take_numbers_ranges_and_words_and_refuse_anything_else():
    config = parsed("affectvlm train --augment flip=0,crop_scale=0.9:1,interpolation=nearest")
    assert config.augment == {"flip": 0.0, "crop_scale": [0.9, 1.0], "interpolation": "nearest"}
    assert parsed(config.command_line()).augment == config.augment
    for bad in ("flip", "flip=x", "crop_scale=0.1:0.2:0.3", "crop_scale=a:1"):
        with pytest.raises(ValueError, match="--augment: "):
            parsed(f"affectvlm train --augment {bad}")


@pytest.mark.parametrize("command, message", [
    ("--eye-holes 1.5 --source online --pose template", r"--eye-holes must be a probability in \[0, 1\]"),
    ("--eye-holes 0.5 --pose template", "--eye-holes needs --source online and --pose template"),
    ("--eye-holes 0.5 --source online --pose none", "--eye-holes needs --source online and --pose template"),
])
def test_bad_eye_hole_settings_are_one_line_errors(command, message):
    with pytest.raises(ValueError, match=message) as error:
        validate(parsed(f"affectvlm train {command}"))
    assert "\n" not in str(error.value)
    validate(parsed("affectvlm train --eye-holes 0.5 --source online --pose template"))
