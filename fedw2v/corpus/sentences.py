"""The sentences of `fedw2v synth`: English sentences drawn from word lists and templates, and their transcript
as TED-LIUM writes it (no punctuation, clitics split off, numbers spelled out, with the corpus's quirks).

Everything here draws from the `random.Random` it is given, in a fixed order: the same generator state gives
the same sentences and transcripts (the corpus's byte-identity for a seed rests on it).
"""

from __future__ import annotations

import random
import re

WORDS_PER_SENTENCE = (6, 15)

_PERSONS = (
    "my grandmother", "a friend of mine", "the teacher", "our neighbour", "the doctor", "my brother", "my sister",
    "a young engineer", "the farmer", "the old captain", "my father", "a taxi driver", "the mayor", "my colleague",
    "a student of mine", "the gardener", "the pilot", "my uncle",
)
_NOUNS = (
    "city", "river", "garden", "machine", "question", "story", "village", "problem", "library", "mountain",
    "computer", "bicycle", "hospital", "market", "ocean", "forest", "school", "kitchen", "window", "camera",
    "language", "island", "bridge", "museum", "company", "planet", "song", "picture", "robot", "telescope",
    "desert", "map", "engine", "painting", "letter", "garden path", "train station", "water pump", "seed",
)
_PLURALS = (
    "people", "students", "trees", "cars", "books", "doctors", "farmers", "children", "families", "scientists",
    "animals", "cities", "ideas", "stories", "questions", "machines", "birds", "teachers", "engineers",
    "musicians", "neighbours", "fishermen", "villages", "rivers", "bees", "computers",
)
_ADJECTIVES = (
    "small", "beautiful", "strange", "simple", "important", "difficult", "quiet", "bright", "ancient", "modern",
    "curious", "enormous", "careful", "happy", "remarkable", "ordinary", "different", "warm", "cold", "fragile",
    "expensive", "cheap", "wonderful", "dangerous", "useful", "gentle", "noisy", "empty", "crowded", "green",
)
_VERBS = (
    "build", "change", "understand", "measure", "protect", "design", "share", "learn", "imagine", "explore",
    "repair", "discover", "teach", "remember", "grow", "study", "visit", "explain", "clean", "count", "follow",
)
_PAST = (
    "built", "changed", "found", "measured", "designed", "shared", "explored", "repaired", "discovered",
    "visited", "studied", "noticed", "painted", "described", "opened", "counted", "followed", "cleaned", "sold",
)
_PLACES = (
    "in africa", "in the city", "at the university", "in our village", "near the river", "in the lab", "at home",
    "in new york", "in the desert", "on the island", "in the mountains", "in a small town", "by the sea",
    "in india", "in brazil", "under the bridge", "in the north", "at the market",
)
_TIMES = (
    "last year", "every morning", "ten years ago", "in the nineteen nineties", "this week", "every summer",
    "a long time ago", "yesterday", "one day", "last winter", "every single day", "after the storm",
)

# Templates: {slot} is filled from the lists above; contractions are spoken whole and written split in the STM.
_OPENINGS = (
    "i'd like to tell you about {a_noun} {place}.",
    "today i'm going to talk about {plurals} and {plurals}.",
    "i'm going to show you {a_adj_noun} {time}.",
    "it's a story about {a_noun} and {number} {plurals}.",
    "let's start with {a_adj_noun} {place}.",
    "i've been thinking about {plurals} for {number} years.",
    "so here's the thing about {plurals} {place}.",
)
_TEMPLATES = _OPENINGS + (
    "it's {a_adj_noun} and it's very {adj}.",
    "we don't really know how to {verb} the {noun}.",
    "they've {past} {number} {plurals} {time}.",
    "that's why {person} couldn't {verb} the {noun}.",
    "you'll see that the {noun} isn't as {adj} as it looks.",
    "i didn't expect {person} to {verb} the {noun}.",
    "here's the {adj} part of the {noun}.",
    "she's been working on this {noun} for {number} years.",
    "he'd never seen {a_adj_noun} like that before.",
    "we're trying to {verb} the {plurals} {place}.",
    "what's interesting is that {plurals} can't {verb} it.",
    "it wasn't {adj}, but it was {adj}.",
    "i'm sure you've all {past} {a_noun} {place}.",
    "they're {adj} and they don't need {a_noun}.",
    "{person} {past} {a_noun} {place} {time}.",
    "the {noun} was {adj} and very {adj}.",
    "{number} {plurals} {past} the {adj} {noun}.",
    "so we decided to {verb} the {noun} {time}.",
    "imagine {a_noun} with {number} {plurals} in it.",
    "{time} {person} {past} {a_adj_noun}.",
    "this is the story of {a_noun} and {number} {plurals}.",
    "and the answer turned out to be surprisingly {adj}.",
    "we measured the {noun} {number} times {time}.",
    "the {plurals} {place} need {a_adj_noun}.",
    "how do you {verb} {a_noun} when nobody is watching?",
    "in {year} {person} {past} the first {noun}.",
    "about {pct} percent of the {plurals} live {place}.",
    "there were {number} {plurals} waiting {place}.",
    "nobody could {verb} the {noun}, not even {person}.",
    "you can {verb} {a_adj_noun} with very little money.",
)
# Words that may be written with a pronunciation variant marker, `the(2)`.
_VARIANT_WORDS = ("the", "a", "to", "and", "of", "for", "that", "with", "was", "read", "live", "either", "were")

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """0..999999 spelled out the way TED-LIUM writes them: `one hundred and twenty three`."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    rest = n % 1000
    head = number_words(n // 1000) + " thousand"
    if rest == 0:
        return head
    return head + (" and " if rest < 100 else " ") + number_words(rest)


def year_words(year: int) -> str:
    """1995 -> `nineteen ninety five`, 2008 -> `two thousand and eight`, 2015 -> `twenty fifteen`."""
    if 2000 <= year < 2010:
        return number_words(year)
    hi, lo = divmod(year, 100)
    tail = "hundred" if lo == 0 else number_words(lo) if lo >= 10 else "oh " + number_words(lo)
    return number_words(hi) + " " + tail


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeio" else "a ") + phrase


def make_sentence(rng: random.Random, opening: bool = False) -> str:
    """One spoken English sentence (lowercase, contractions whole, numbers spelled out), 6-15 words."""
    templates = _OPENINGS if opening else _TEMPLATES
    while True:
        template = rng.choice(templates)
        fills = {
            "person": lambda: rng.choice(_PERSONS),
            "noun": lambda: rng.choice(_NOUNS),
            "a_noun": lambda: _article(rng.choice(_NOUNS)),
            "a_adj_noun": lambda: _article(f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"),
            "plurals": lambda: rng.choice(_PLURALS),
            "adj": lambda: rng.choice(_ADJECTIVES),
            "verb": lambda: rng.choice(_VERBS),
            "past": lambda: rng.choice(_PAST),
            "place": lambda: rng.choice(_PLACES),
            "time": lambda: rng.choice(_TIMES),
            "number": lambda: number_words(rng.choice((rng.randint(2, 20), rng.randint(21, 99), rng.randint(100, 999),
                                                       rng.randrange(1000, 20000, 500)))),
            "pct": lambda: number_words(rng.randint(2, 99)),
            "year": lambda: year_words(rng.randint(1950, 2019)),
        }
        sentence = re.sub(r"\{(\w+)\}", lambda m: fills[m.group(1)](), template)
        n_words = len(sentence.split())
        if WORDS_PER_SENTENCE[0] <= n_words <= WORDS_PER_SENTENCE[1]:
            return sentence


def stm_words(sentence: str) -> list[str]:
    """The sentence as TED-LIUM writes it: no punctuation, clitics split off (`it's` -> `it 's`)."""
    words = []
    for token in re.sub(r"[^a-z' ]", " ", sentence.lower()).split():
        i = token.find("'")
        if 0 < i < len(token) - 1:
            words.extend((token[:i], token[i:]))
        else:
            words.append(token.strip("'"))
    return [w for w in words if w]


def quirky_words(words: list[str], rng: random.Random, force: str | None) -> tuple[list[str], bool]:
    """Add `<unk>`, a pronunciation variant and/or a `{NOISE}` to a transcript. Returns (words, noise)."""
    words = list(words)
    plain = [i for i, w in enumerate(words) if not w.startswith("'") and len(w) > 3]
    if plain and (force == "unk" or rng.random() < 0.08):
        words[rng.choice(plain)] = "<unk>"
    variants = [i for i, w in enumerate(words) if w in _VARIANT_WORDS]
    if variants and (force == "variant" or rng.random() < 0.1):
        i = rng.choice(variants)
        words[i] = f"{words[i]}(2)"
    noise = force == "noise" or rng.random() < 0.06
    return words, noise
