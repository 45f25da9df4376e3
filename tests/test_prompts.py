import json

import pytest

from affectvlm.data.emotions import EMOTIONS
from affectvlm.model.prompts import DEFAULT_BANK_FILE, PromptBank, PromptBankError

ATTRIBUTE_WORDS = ("woman", "female", "man", "male", "young", "adult", "middle-aged", "older", "elderly", "person")


def draws(bank, emotion="happiness", attributes=None, intensity=None, seed=0, steps=range(40), sample=7):
    return [bank.draw(emotion, attributes, intensity, seed, step, sample) for step in steps]


def words_of(text):
    return set(text.split())


def test_default_bank_covers_every_emotion_and_ships_as_package_data():
    bank = PromptBank.default()
    assert set(bank.emotions) == set(EMOTIONS)
    assert DEFAULT_BANK_FILE.parent.name == "model" and DEFAULT_BANK_FILE.is_file()


def test_draw_is_a_pure_function_of_seed_step_and_sample():
    bank = PromptBank.default()
    first = draws(bank, attributes={"sex": "female", "age": 25}, intensity=3)
    assert first == draws(PromptBank.default(), attributes={"sex": "female", "age": 25}, intensity=3)
    assert len(set(first)) > 10  # steps vary the prompt
    assert draws(bank, seed=1) != draws(bank, seed=0)
    assert draws(bank, sample=8) != draws(bank, sample=7)


def test_drawn_prompts_use_the_emotion_words_and_intensity():
    bank = PromptBank.default()
    words = bank.as_dict()["emotions"]["sadness"]
    emotion_words = {w for slot in words.values() for w in slot}
    very = bank.as_dict()["intensity"]["4"]
    for prompt in draws(bank, "sadness", intensity=4, steps=range(60)):
        assert any(w in prompt for w in emotion_words), prompt
    with_intensity = [p for p in draws(bank, "sadness", intensity=4, steps=range(60)) if any(v in p for v in very)]
    assert with_intensity, "intensity 4 never produced an intensity word"
    for prompt in draws(bank, "sadness", intensity=None, steps=range(60)):
        assert not any(w in words_of(prompt) for level in bank.as_dict()["intensity"].values() for w in level)


def test_attributes_appear_only_when_the_sample_has_them():
    bank = PromptBank.default()
    for prompt in draws(bank, attributes={}, steps=range(80)) + draws(bank, attributes=None, steps=range(80)):
        assert not words_of(prompt) & set(ATTRIBUTE_WORDS), prompt
    female_young = draws(bank, attributes={"sex": "female", "age": 22}, steps=range(80))
    with_person = [p for p in female_young if words_of(p) & set(ATTRIBUTE_WORDS)]
    assert with_person, "attributes never used"
    for prompt in with_person:
        assert words_of(prompt) & {"woman", "female"} and "young" in words_of(prompt), prompt
        assert not words_of(prompt) & {"man", "male", "older", "elderly"}, prompt
    older_man = [p for p in draws(bank, attributes={"sex": "male", "age": "67"}, steps=range(80))
                 if words_of(p) & set(ATTRIBUTE_WORDS)]
    assert older_man and all(words_of(p) & {"older", "elderly"} for p in older_man)
    only_sex = [p for p in draws(bank, attributes={"sex": "male"}, steps=range(80))
                if words_of(p) & set(ATTRIBUTE_WORDS)]
    assert only_sex and not any(words_of(p) & {"young", "adult", "older", "elderly"} for p in only_sex)
    unreadable_age = draws(bank, attributes={"age": "unknown"}, steps=range(40))
    assert not any(words_of(p) & set(ATTRIBUTE_WORDS) for p in unreadable_age)


def test_articles_agree_with_the_next_word():
    bank = PromptBank.default()
    for emotion in EMOTIONS:
        for prompt in bank.class_prompts(emotion) + draws(bank, emotion, {"age": 70}, 1, steps=range(40)):
            for article, word in zip(prompt.split(), prompt.split()[1:]):
                if article in ("a", "an"):
                    assert (article == "an") == (word[0] in "aeiou"), prompt


def test_class_prompts_are_every_template_and_word_without_intensity_or_attributes():
    bank = PromptBank.from_dict({**PromptBank.default().as_dict(),
                                 "templates": ["{intensity} {adjective} face", "a face of {emotion}, {verb}"]})
    words = bank.as_dict()["emotions"]["fear"]
    expected = [f"{a} face" for a in words["adjective"]]
    expected += [f"a face of {e}, {v}" for e in words["emotion"] for v in words["verb"]]
    assert bank.class_prompts("fear") == expected


def test_user_file_extends_the_bank(tmp_path):
    user = tmp_path / "more.json"
    user.write_text(json.dumps({"templates": ["a sculpted head, {adjective}"],
                                "emotions": {"happiness": {"adjective": ["elated"]},
                                             "contempt": {"emotion": ["contempt"], "adjective": ["scornful"],
                                                          "verb": ["smirking"]}}}))
    default = PromptBank.default()
    bank = default.extended(user)
    assert "a sculpted head, elated" in bank.class_prompts("happiness")
    assert set(default.class_prompts("happiness")) < set(bank.class_prompts("happiness"))
    assert set(default.class_prompts("anger")) < set(bank.class_prompts("anger"))
    assert bank.class_prompts("contempt")
    assert bank.as_dict()["emotions"]["happiness"]["verb"] == default.as_dict()["emotions"]["happiness"]["verb"]


def test_user_file_replaces_the_sections_it_gives(tmp_path):
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"templates": ["a face, {adjective}"]}))
    bank = PromptBank.default().replaced(user)
    assert bank.class_prompts("anger") == [f"a face, {a}" for a in bank.as_dict()["emotions"]["anger"]["adjective"]]
    assert bank.as_dict()["attribute_templates"] == PromptBank.default().as_dict()["attribute_templates"]


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"tempaltes": ["x"]}), "unknown section"),
    (json.dumps({"templates": ["a {mood} face"]}), "unknown slot(s) mood"),
    (json.dumps({"templates": ["a face of {person}"]}), "unknown slot(s) person"),
    (json.dumps({"templates": ["a {adjective face"]}), "malformed"),
    (json.dumps({"templates": "a {adjective} face"}), "templates must be a non-empty list"),
    (json.dumps({"emotions": {"anger": {"adjective": "angry"}}}), "emotions.anger.adjective must be"),
    (json.dumps({"emotions": {"joy": {"adjective": ["glad"]}}}), "emotions.joy must have exactly"),
    (json.dumps({"age": {"teen": {"words": ["teenage"]}}}), "age.teen must be"),
])
def test_malformed_user_file_gives_a_one_line_error_naming_it(tmp_path, content, problem):
    user = tmp_path / "bad prompts.json"
    user.write_text(content)
    with pytest.raises(PromptBankError) as error:
        PromptBank.default().extended(user)
    message = str(error.value)
    assert message.startswith(str(user)) and problem in message and "\n" not in message


def test_missing_user_file_and_unknown_emotion_are_reported(tmp_path):
    with pytest.raises(PromptBankError, match="nothing.json: cannot read"):
        PromptBank.default().extended(tmp_path / "nothing.json")
    with pytest.raises(PromptBankError, match="no prompts for emotion 'boredom'"):
        PromptBank.default().class_prompts("boredom")


def test_as_dict_from_dict_round_trip(tmp_path):
    user = tmp_path / "more.json"
    user.write_text(json.dumps({"templates": ["a clay face, {adjective}"]}))
    bank = PromptBank.default().extended(user)
    stored = json.loads(json.dumps(bank.as_dict()))
    restored = PromptBank.from_dict(stored)
    assert restored.fingerprint == bank.fingerprint != PromptBank.default().fingerprint
    assert all(restored.class_prompts(e) == bank.class_prompts(e) for e in EMOTIONS)
    assert draws(restored, attributes={"sex": "male", "age": 40}) == draws(bank, attributes={"sex": "male", "age": 40})
    bank.as_dict()["templates"].clear()  # as_dict hands out a copy
    assert bank.class_prompts("anger")
