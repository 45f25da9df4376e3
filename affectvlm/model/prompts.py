"""The prompt bank: text prompts for each emotion, kept as data (`prompts.json`), not code.

A bank holds templates with slots and the words that fill them:
  {emotion}    a noun for the emotion ("joy"),        from emotions[<name>]["emotion"]
  {adjective}  an adjective ("joyful"),               from emotions[<name>]["adjective"]
  {verb}       what the face does ("smiling"),         from emotions[<name>]["verb"]
  {intensity}  an intensity word ("slightly", "very") from intensity["1".."4"]; empty when unknown
  {person}     the subject ("a young woman"), from the sample's sex and age; only in `attribute_templates`,
               which are drawn only for samples that have a sex or an age.
Articles are fixed after filling ("a angry face" -> "an angry face") and spaces collapsed, so a template
can leave an optional slot empty.

Training draws one prompt per sample per step (`draw`), a pure function of (seed, step, sample).
Inference uses every prompt of a class (`class_prompts`), without intensity or attributes, for prompt
ensembling.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import string
from functools import cached_property
from pathlib import Path

import numpy as np

DEFAULT_BANK_FILE = Path(__file__).with_name("prompts.json")
EMOTION_SLOTS = ("emotion", "adjective", "verb")
SLOTS = (*EMOTION_SLOTS, "intensity", "person")
SECTIONS = ("templates", "attribute_templates", "emotions", "intensity", "sex", "age")
_PROMPT_STREAM = 0x70726F6D  # separates the prompt draws from other users of (seed, step, sample)
_ARTICLE = re.compile(r"\b([Aa])n? (?=(\w))")


class PromptBankError(ValueError):
    """A prompt bank or prompt file that cannot be used; the message names the file and the problem."""


class PromptBank:
    """An immutable bank of emotion prompts; build with `default()`, `from_dict()`, `extended()`, `replaced()`."""

    def __init__(self, data: dict, source: str = "prompt bank"):
        self._data = _validated(copy.deepcopy(data), source)

    @classmethod
    def default(cls) -> PromptBank:
        return cls(_read_json(DEFAULT_BANK_FILE), str(DEFAULT_BANK_FILE))

    @classmethod
    def from_dict(cls, data: dict) -> PromptBank:
        return cls(data)

    def as_dict(self) -> dict:
        """The bank as JSON-able data, as stored with a checkpoint."""
        return copy.deepcopy(self._data)

    def extended(self, path: str | Path) -> PromptBank:
        """This bank plus the prompts of a user file: lists are appended, new emotions and words added."""
        return PromptBank(_merged(self._data, _read_json(path)), str(path))

    def replaced(self, path: str | Path) -> PromptBank:
        """This bank with every section the user file gives (templates, emotions, ...) replaced by the file's."""
        return PromptBank({**self._data, **_read_json(path)}, str(path))

    @property
    def emotions(self) -> tuple[str, ...]:
        return tuple(self._data["emotions"])

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the bank's content: equal banks have equal fingerprints."""
        return hashlib.sha256(json.dumps(self._data, sort_keys=True).encode()).hexdigest()

    def draw(self, emotion: str, attributes: dict | None, intensity: int | None, seed: int, step: int,
             sample_id: int) -> str:
        """One prompt for a training sample, the same for the same (seed, step, sample_id)."""
        words = self._emotion_words(emotion)
        rng = np.random.default_rng([_PROMPT_STREAM, seed, step, sample_id])
        person = self._person(attributes or {}, rng)
        templates = self._data["templates"] + (self._data["attribute_templates"] if person else [])
        template = templates[rng.integers(len(templates))]
        fill = {slot: _pick(words[slot], rng) for slot in EMOTION_SLOTS}
        intensity_words = self._data["intensity"].get(str(intensity), [""])
        return _finished(template.format(**fill, intensity=_pick(intensity_words, rng), person=person))

    def class_prompts(self, emotion: str) -> list[str]:
        """Every prompt of a class for prompt ensembling: each template with each of its slots' words, with no
        intensity and no subject attributes; duplicates removed, order kept."""
        words = self._emotion_words(emotion)
        prompts = []
        for template in self._data["templates"]:
            fills = [{}]
            for slot in dict.fromkeys(_slots_of(template)):
                choices = words[slot] if slot in EMOTION_SLOTS else [""]
                fills = [{**fill, slot: word} for fill in fills for word in choices]
            prompts.extend(_finished(template.format(**fill)) for fill in fills)
        return list(dict.fromkeys(prompts))

    def _emotion_words(self, emotion: str) -> dict:
        words = self._data["emotions"].get(emotion)
        if words is None:
            raise PromptBankError(f"the prompt bank has no prompts for emotion '{emotion}' "
                                  f"(it has {', '.join(self.emotions)})")
        return words

    def _person(self, attributes: dict, rng: np.random.Generator) -> str:
        """'a young woman', 'an older man', 'a woman', 'a young person', or '' when no attribute is known."""
        sex_words = self._data["sex"].get(str(attributes.get("sex", "")).strip().lower())
        age_words = self._age_words(attributes.get("age"))
        if not sex_words and not age_words:
            return ""
        age = _pick(age_words, rng) if age_words else ""
        sex = _pick(sex_words, rng) if sex_words else "person"
        return f"a {age} {sex}"

    def _age_words(self, age) -> list[str] | None:
        """The words of the sample's age group; `age` is years (int or numeric text) or a group name."""
        groups = self._data["age"]
        if isinstance(age, str) and age.strip().lower() in groups:
            return groups[age.strip().lower()]["words"]
        try:
            years = float(age)
        except (TypeError, ValueError):
            return None  # unknown or unreadable: the prompt simply leaves the age out
        for group in groups.values():
            if group["below"] is None or years < group["below"]:
                return group["words"]
        return None


def _pick(words: list[str], rng: np.random.Generator) -> str:
    return words[rng.integers(len(words))]


def _finished(text: str) -> str:
    text = " ".join(text.split())
    return _ARTICLE.sub(lambda m: (m.group(1) + ("n" if m.group(2).lower() in "aeiou" else "")) + " ", text)


def _slots_of(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _read_json(path: str | Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise PromptBankError(f"{path}: cannot read ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PromptBankError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise PromptBankError(f"{path}: expected a JSON object with sections {', '.join(SECTIONS)}")
    return data


def _merged(base, extra):
    """`extra` added to `base`: dicts merged key by key, lists appended without duplicates."""
    if isinstance(base, dict) and isinstance(extra, dict):
        return {**base, **{key: _merged(base[key], value) if key in base else value for key, value in extra.items()}}
    if isinstance(base, list) and isinstance(extra, list):
        return list(dict.fromkeys(base + extra))
    return extra


def _validated(data: dict, source: str) -> dict:
    """The bank's data after checking every section; raises PromptBankError naming `source` and the problem."""
    def fail(problem: str):
        raise PromptBankError(f"{source}: {problem}")

    def check_words(words, where: str):
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            fail(f"{where} must be a non-empty list of non-empty strings")

    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        fail(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    missing = [section for section in SECTIONS if section not in data]
    if missing:
        fail(f"missing section(s) {', '.join(missing)}")
    for section, may_use_person in (("templates", False), ("attribute_templates", True)):
        check_words(data[section], section)
        for template in data[section]:
            try:
                slots = _slots_of(template)
            except ValueError as error:
                fail(f"template '{template}' is malformed ({error})")
            allowed = SLOTS if may_use_person else tuple(slot for slot in SLOTS if slot != "person")
            bad = [slot for slot in slots if slot not in allowed]
            if bad:
                fail(f"template '{template}' in {section} uses unknown slot(s) {', '.join(bad)} "
                     f"(allowed: {', '.join(allowed)})")
    if not isinstance(data["emotions"], dict) or not data["emotions"]:
        fail("emotions must be an object of emotion name -> {emotion, adjective, verb} word lists")
    for emotion, words in data["emotions"].items():
        if not isinstance(words, dict) or set(words) != set(EMOTION_SLOTS):
            fail(f"emotions.{emotion} must have exactly the word lists {', '.join(EMOTION_SLOTS)}")
        for slot in EMOTION_SLOTS:
            check_words(words[slot], f"emotions.{emotion}.{slot}")
    for section in ("intensity", "sex"):
        if not isinstance(data[section], dict):
            fail(f"{section} must be an object of value -> word list")
        for key, words in data[section].items():
            check_words(words, f"{section}.{key}")
    if not isinstance(data["age"], dict):
        fail("age must be an object of group -> {below: years or null, words: [...]}")
    for group, entry in data["age"].items():
        if not isinstance(entry, dict) or set(entry) != {"below", "words"} or not (
                entry["below"] is None or isinstance(entry["below"], (int, float))):
            fail(f"age.{group} must be {{\"below\": years or null, \"words\": [...]}}")
        check_words(entry["words"], f"age.{group}.words")
    return data
