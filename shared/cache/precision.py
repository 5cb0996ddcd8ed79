"""The precise check: may an answer cached for one text be served for another, similar one?

Measured on this machine (``shared/notes/semantic-cache-precision.md``), offline embeddings score
hard near-misses — a negation, another number, a swapped direction, another entity, format or
audience — at 0.99 cosine and more, so a threshold only finds candidates.  Each candidate passes
this check, which compares what the two texts *say* and refuses when anything answer-changing
differs:

* numbers (digits, number words, ordinals, months, weekdays): the same multiset;
* negations (not, no, never, without, except, ...): the same count of each;
* direction: the word after each directional marker (to, from, into, than, vs, before, after,
  over, instead of) must be the same — "Celsius to Fahrenheit" is not "Fahrenheit to Celsius";
* content: after folding case, plurals, spelling variants and a small synonym table, both texts
  must name the same set of content words — another entity, format, audience, tone or length
  word is another request.  A one-letter typo matches its word, unless the two are antonyms
  (safe/unsafe, increase/decrease) or differ by a negating prefix.

What differs only in wording — politeness, filler, word order, the verb that asks ("write",
"give me", "could you draft") — is accepted.  Precision over recall: an unknown word on one side
only is a refusal.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

_WORD = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*%?|[$€£]")

_CONTRACTIONS = {
    "n't": " not",
    "can't": "can not",
    "cannot": "can not",
    "won't": "will not",
    "shan't": "shall not",
    "'re": " are",
    "'ve": " have",
    "'ll": " will",
    "'d": " would",
    "'m": " am",
}

NEGATIONS = frozenset(
    {"not", "no", "never", "without", "none", "nothing", "nobody", "neither", "nor", "except", "excluding",
     "exclude", "avoid", "avoiding", "omit", "omitting", "skip", "skipping", "minus", "nowhere", "lack"}
)  # fmt: skip

#: Markers whose following word fixes a direction or a role in a comparison.
DIRECTION_MARKERS = frozenset(
    {"to", "from", "into", "than", "vs", "versus", "before", "after", "over", "instead"}
)
_MARKER_FOLD = {"into": "to", "versus": "vs", "towards": "to", "toward": "to"}

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18",
    "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "hundred": "100",
    "thousand": "1000", "million": "1000000", "dozen": "12", "half": "0.5", "single": "1", "couple": "2",
    "pair": "2", "twice": "x2", "double": "x2", "triple": "x3", "first": "#1", "second": "#2",
    "third": "#3", "fourth": "#4", "fifth": "#5", "last": "#-1", "final": "#-1",
    "january": "m1", "february": "m2", "march": "m3", "april": "m4", "may": "m5", "june": "m6",
    "july": "m7", "august": "m8", "september": "m9", "october": "m10", "november": "m11",
    "december": "m12", "jan": "m1", "feb": "m2", "mar": "m3", "apr": "m4", "jun": "m6", "jul": "m7",
    "aug": "m8", "sep": "m9", "sept": "m9", "oct": "m10", "nov": "m11", "dec": "m12",
    "monday": "d1", "tuesday": "d2", "wednesday": "d3", "thursday": "d4", "friday": "d5",
    "saturday": "d6", "sunday": "d7", "today": "t0", "tomorrow": "t+1", "yesterday": "t-1",
}  # fmt: skip

#: Words that carry no answer-changing content: function words, politeness, the asking verbs.
_STOPWORDS_TEXT = """
    a an the this that these those it its of in on at by for with about as and or but so if then i
    me my mine we us our you your yours he she they them their is are was were be been being am do
    does did doing have has had having will would shall should can could may might must please
    kindly thanks thank hi hello hey just some any which what who whom whose how why when where
    there here also very really quite now up out s write writing written draft drafting compose
    create generate produce make craft give provide suggest propose come offer tell show share help
    need want like let get put go know think need want wish hoping hope looking something thing
    things way ok okay pls plz quickly quick using use via per within all each every both one's
    oneself myself yourself own whole entire
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

#: Spelling variants and synonyms folded to one concept (the domain's editorial vocabulary).
SYNONYMS: dict[str, str] = {}
for _group in (
    "article post blogpost blog story piece entry writeup",
    "headline title heading",
    "summary summarize summarise sum recap condense tldr synopsis",
    "intro introduction opening lede lead",
    "outro conclusion ending closing",
    "paragraph para",
    "bullet bullets bulleted point points",
    "list listicle",
    "explain explanation describe description",
    "translate translation translated",
    "rewrite rephrase reword paraphrase",
    "proofread proofreading correct spellcheck",
    "idea ideas suggestion suggestions brainstorm",
    "seo searchengine",
    "meta metadescription",
    "short brief concise succinct",
    "long lengthy detailed indepth",
    "tweet xpost",
    "email mail newsletter",
    "catchy engaging compelling punchy",
    "website site",
    "wordpress wp",
    "image picture photo",
    "kid kids child children",
    "beginner beginners novice novices newbie newbies",
    "expert experts professional professionals pro pros",
    "pros advantage advantages benefit benefits",
    "cons disadvantage disadvantages drawback drawbacks downside downsides",
    "fix repair",
    "tag tags keyword keywords",
    "category categories",
    "difference differ compare comparison",
    "english en",
    "french fr",
    "german de",
    "spanish es",
):
    _words = _group.split()
    for _w in _words:
        SYNONYMS[_w] = _words[0]

_ANTONYM_PAIRS = [
    ("safe", "unsafe"), ("increase", "decrease"), ("more", "less"), ("more", "fewer"), ("before", "after"),
    ("above", "below"), ("add", "remove"), ("enable", "disable"), ("include", "exclude"),
    ("positive", "negative"), ("pros", "cons"), ("best", "worst"), ("cheap", "expensive"), ("min", "max"),
    ("minimum", "maximum"), ("start", "end"), ("first", "last"), ("short", "long"), ("formal", "informal"),
    ("formal", "casual"), ("open", "close"), ("up", "down"), ("buy", "sell"), ("import", "export"),
    ("upload", "download"), ("allow", "block"), ("publish", "unpublish"), ("old", "new"),
    ("past", "future"), ("hot", "cold"), ("high", "low"), ("large", "small"), ("big", "small"),
    ("fast", "slow"), ("easy", "hard"), ("easy", "difficult"), ("simple", "complex"), ("true", "false"),
    ("legal", "illegal"), ("private", "public"), ("approve", "reject"), ("accept", "reject"),
    ("win", "lose"), ("gain", "loss"), ("strong", "weak"), ("light", "dark"), ("left", "right"),
    ("north", "south"), ("east", "west"), ("encrypt", "decrypt"), ("encode", "decode"),
    ("optimistic", "pessimistic"), ("support", "oppose"), ("for", "against"), ("with", "without"),
]  # fmt: skip
ANTONYMS: frozenset[frozenset[str]] = frozenset(frozenset(p) for p in _ANTONYM_PAIRS)
#: Verbs that only ask when they open the request ("List five tags" = "Five tags, please").
_IMPERATIVE_ASKING = frozenset({"list", "name", "find", "explain", "describe"})
_LONG_STOPWORDS = tuple(w for w in STOPWORDS if len(w) >= 5)
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "anti", "de", "mis")


@dataclass(frozen=True)
class Verdict:
    """``ok`` when the cached answer may be served; otherwise ``reason`` says what differs."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Profile:
    """What a text says, as the check compares it."""

    numbers: Counter[str]
    negations: Counter[str]
    directions: frozenset[tuple[str, str]]
    content: frozenset[str]
    counts: Counter[str]


def compare(cached: str, new: str) -> Verdict:
    """May the answer to ``cached`` be served for ``new``? Refuses when anything answer-changing differs."""
    if cached == new:
        return Verdict(True)
    a, b = profile(cached), profile(new)
    if a.numbers != b.numbers:
        return Verdict(False, "numbers differ")
    if a.negations != b.negations:
        return Verdict(False, "negation differs")
    only_a, only_b = a.content - b.content, b.content - a.content
    for x in only_a:
        for y in only_b:
            if _opposed(x, y):
                return Verdict(False, f"opposite words: {x!r} / {y!r}")
    unmatched_a = {x for x in only_a if not any(_typo(x, y) for y in only_b) and not _misspelt_stopword(x)}
    unmatched_b = {y for y in only_b if not any(_typo(x, y) for x in only_a) and not _misspelt_stopword(y)}
    if unmatched_a or unmatched_b:
        words = sorted(unmatched_a | unmatched_b)
        return Verdict(False, f"content differs: {', '.join(words[:6])}")
    if not _same_directions(a.directions, b.directions):
        return Verdict(False, "direction or order differs")
    if not only_a and not only_b and a.counts != b.counts:
        return Verdict(False, "the same words in other roles")
    return Verdict(True)


def compare_turns(cached: list[str], new: list[str]) -> Verdict:
    """The check over whole conversations: every turn, in order."""
    if len(cached) != len(new):
        return Verdict(False, "conversation length differs")
    for i, (a, b) in enumerate(zip(cached, new, strict=True)):
        verdict = compare(a, b)
        if not verdict.ok:
            return Verdict(False, f"turn {i + 1}: {verdict.reason}") if len(new) > 1 else verdict
    return Verdict(True)


@lru_cache(maxsize=4096)
def profile(text: str) -> Profile:
    words = tokens(text)
    numbers: Counter[str] = Counter()
    negations: Counter[str] = Counter()
    content: set[str] = set()
    counts: Counter[str] = Counter()
    seen_content = False
    previous = ""
    directions: set[tuple[str, str]] = set()
    for i, word in enumerate(words):
        if word in NEGATIONS:
            negations["not" if word in ("not", "no", "never", "none", "nothing", "nobody") else word] += 1
            continue
        number = _number(word)
        if number is not None:
            numbers[number] += 1
            if word in ("first", "last", "final", "second", "third"):
                continue
            continue
        if word in DIRECTION_MARKERS:
            following = _next_content(words, i + 1)
            if following is not None:
                directions.add((_MARKER_FOLD.get(word, word), following))
            continue
        if word in STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        if not seen_content and word in _IMPERATIVE_ASKING:
            seen_content = True
            continue  # "List five ideas" asks as "Five ideas, please" does
        seen_content = True
        folded = _fold(word)
        content.add(folded)
        if folded != previous:  # "blog post", "bullet points": one concept
            counts[folded] += 1
        previous = folded
    return Profile(numbers, negations, frozenset(directions), frozenset(content), counts)


def tokens(text: str) -> list[str]:
    """Lower-case words, contractions expanded, accents kept apart from letters."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = re.sub(r"(\w)-(\w)", r"\1\2", text)  # in-depth -> indepth, e-mail -> email
    for short, long in _CONTRACTIONS.items():
        text = text.replace(short, long)
    text = text.replace("'s", "").replace("'", " ")
    words: list[str] = []
    for word in _WORD.findall(text):
        if word[-1:] == "." or word[-1:] == ",":
            word = word[:-1]
        words.extend(_split_number_unit(word))
    return words


def _split_number_unit(word: str) -> list[str]:
    """``500words`` -> 500, words; ``3rd`` -> #3; ``2024`` stays."""
    match = re.fullmatch(r"(\d+)(st|nd|rd|th)", word)
    if match:
        return [f"#{match[1]}"]
    match = re.fullmatch(r"(\d+(?:[.,]\d+)*%?)([a-z]+)", word)
    if match:
        return [match[1], match[2]]
    return [word]


def _number(word: str) -> str | None:
    if word in _NUMBER_WORDS:
        return _NUMBER_WORDS[word]
    if word.startswith("#"):
        return word
    if word[0].isdigit():
        return word.replace(",", "")
    if word in ("$", "€", "£"):
        return word
    return None


def _next_content(words: list[str], start: int) -> str | None:
    """The first content word from ``start`` (skipping articles and fillers), folded."""
    for word in words[start : start + 4]:
        if word in STOPWORDS or word in DIRECTION_MARKERS:
            continue
        number = _number(word)
        return number if number is not None else _fold(word)
    return None


def _same_directions(a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]) -> bool:
    """Directional pairs agree: any (marker, word) on one side whose word the other side also
    pairs with a *different* marker is a swap; a marker present on one side only is rephrasing."""
    if a == b:
        return True
    a_words = {w: {m for m, x in a if x == w} for _, w in a}
    b_words = {w: {m for m, x in b if x == w} for _, w in b}
    for word, markers in a_words.items():
        other = b_words.get(word)
        if other is not None and other != markers:
            return False
    # the same marker pointing at different words present on both sides: a swap (A to B / B to A)
    a_by_marker = {m: {w for mm, w in a if mm == m} for m, _ in a}
    b_by_marker = {m: {w for mm, w in b if mm == m} for m, _ in b}
    return all(not (m in b_by_marker and words != b_by_marker[m]) for m, words in a_by_marker.items())


def _fold(word: str) -> str:
    """Fold plurals and spelling variants, then synonyms, to one concept."""
    if word in SYNONYMS:
        return SYNONYMS[word]
    stem = word
    if len(word) > 4 and word.endswith("ies"):
        stem = word[:-3] + "y"
    elif len(word) > 4 and word.endswith(("ses", "xes", "ches", "shes")):
        stem = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        stem = word[:-1]
    elif len(word) > 6 and word.endswith("ing"):
        stem = word[:-3]
    elif len(word) > 5 and word.endswith("ed") and not word.endswith("eed"):
        stem = word[:-2]
    stem = stem.replace("ise", "ize") if stem.endswith(("ise", "ised", "ising")) else stem
    return SYNONYMS.get(stem, stem)


def _opposed(x: str, y: str) -> bool:
    if frozenset((x, y)) in ANTONYMS:
        return True
    return any(x == prefix + y or y == prefix + x for prefix in _NEGATING_PREFIXES)


def _typo(x: str, y: str) -> bool:
    """One edit (or a swap of two neighbours) apart, for words long enough that this is a typo."""
    if min(len(x), len(y)) < 5 or abs(len(x) - len(y)) > 1 or _opposed(x, y):
        return False
    if x[0] != y[0] and x[1:] != y[1:]:
        return False
    return _within_one_edit(x, y)


def _misspelt_stopword(word: str) -> bool:
    """A typo of an asking verb or filler ("wrtie", "plese") carries no content either."""
    return len(word) >= 5 and any(
        w[0] == word[0] and abs(len(w) - len(word)) <= 1 and _within_one_edit(w, word)
        for w in _LONG_STOPWORDS
    )


def _within_one_edit(x: str, y: str) -> bool:
    if len(x) == len(y):
        diffs = [i for i in range(len(x)) if x[i] != y[i]]
        if len(diffs) <= 1:
            return True
        return (
            len(diffs) == 2
            and diffs[1] == diffs[0] + 1
            and x[diffs[0]] == y[diffs[1]]
            and x[diffs[1]] == y[diffs[0]]
        )
    if len(x) > len(y):
        x, y = y, x
    i = 0
    while i < len(x) and x[i] == y[i]:
        i += 1
    return x[i:] == y[i + 1 :]
