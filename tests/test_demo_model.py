"""The demo model that ships inside the package: small, made by the command it records, and it recognises
generated faces of people it never saw."""

import argparse
import shlex
from pathlib import Path

import pytest

from affectvlm.data.emotions import BASIC_EMOTIONS
from affectvlm.predict import DEMO_CHECKPOINT, inspect_meshes, load_predictor
from affectvlm.train.checkpoint import load_checkpoint
from affectvlm.train.config import TrainConfig, add_arguments

README = Path(__file__).resolve().parents[1] / "README.md"
UNSEEN_PEOPLE = range(5)  # identity seeds of the app's generator, a stream apart from the training subjects'


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMO_CHECKPOINT)


def test_the_demo_model_is_an_exported_model_of_a_few_megabytes(demo):
    assert DEMO_CHECKPOINT.stat().st_size < 10 * 2 ** 20
    assert demo.info["export"]["dtype"] == "float16"


def test_its_recorded_command_gives_its_recorded_config_and_the_readme_names_it(demo):
    words = shlex.split(demo.info["command"])
    assert words[:2] == ["affectvlm", "train"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert TrainConfig.from_args(parser.parse_args(words[2:])) == TrainConfig.from_dict(demo.info["config"])
    assert demo.info["command"] in README.read_text()


def test_it_recognises_every_expression_at_intensity_4_on_most_unseen_faces():
    from affectvlm.app_inputs import synthetic_face

    predictor = load_predictor(DEMO_CHECKPOINT)
    for emotion in BASIC_EMOTIONS:
        predicted = [inspect_meshes(predictor, f"{emotion} {person}", [synthetic_face(emotion, 4, person)])
                     .prediction.predicted for person in UNSEEN_PEOPLE]
        assert predicted.count(emotion) > len(UNSEEN_PEOPLE) / 2, (emotion, predicted)
