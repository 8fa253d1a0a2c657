"""How the order parser reads text: normalisation, reply language, quantities and amounts.

Pure functions and compiled patterns that know nothing of a campaign; `orders.parser` builds a
campaign's grammar on top of them. Every pattern works on text that went through
`normalize_text` (NFKC, case-folded, format and control characters removed).
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable

EN_NUMBERS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
CJK_NUMBERS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "兩": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
    "十": 10,
}
COUNTERS = "台個个部"
HUGE = 10**18  # stands for any number too large to matter (beyond every limit)

_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u31f0-\u31ff"  # katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uac00-\ud7af"  # hangul syllables
)
_CJK_RE = re.compile(f"[{_CJK}]")
_KANA_RE = re.compile("[\u3040-\u30ff\u31f0-\u31ff]")
_HAN_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# A Latin "word character" for whole-word matching. CJK letters are deliberately not in it, so
# `32g黑色` still has the whole word `32g` in it.
LATIN = r"0-9a-z_\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"  # Latin letters, not × or ÷


# Characters the normaliser touches: Unicode format characters (Cf: zero-width spaces and
# joiners, bidi controls, the BOM) and controls (Cc) are removed, except whitespace controls,
# which become a space. Planes 2-13 and 15-16 hold none of them; not scanning them keeps
# imports fast. The class is written as ranges: a long list of single characters is slow.
def _control_class() -> str:
    points = [
        c
        for c in itertools.chain(range(0x20000), range(0xE0000, 0xE1000))
        if unicodedata.category(chr(c)) in ("Cf", "Cc")
    ]
    ranges: list[list[int]] = []
    for point in points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


_CONTROLS_RE = re.compile(f"[{_control_class()}]")


def _drop_control(match: re.Match[str]) -> str:
    return " " if match.group().isspace() else ""


HASHTAG_RE = re.compile(r"#([\w·]+)")
TAGS_AND_MENTIONS_RE = re.compile(r"#[\w·]+#?|@[0-9a-z_.\-]+(?:@[0-9a-z_\-]+(?:\.[0-9a-z_\-]+)+)?")

# Measures written after a number that make it not a quantity: "16gb", "32 G", "6inch", "500元".
MEASURES = "gb|g|tb|mb|gig|inch|mah|mm|cm"
_MEASURE_MARKS = "寸元円块%"
_MANY = "many|some|several|few|lots?|all|half"

_QUANTITY_RE = re.compile(
    rf"""
    (?:
        (?:(?<![{LATIN}])[x×]|×)\s*                       # x2, × 2
        (?P<pre>[-−+]?\d+(?:[.,/⁄]\d+)?)
        (?![{LATIN}]|[.,/⁄:]\d|\s*(?:{MEASURES})(?![a-z])|\s*[{_MEASURE_MARKS}])
    |
        (?<![{LATIN}\-−+])(?<!\d[.,/⁄:])
        (?P<num>[-−+]?\d+(?:[.,/⁄]\d+)?)
        (?:
            (?P<unit>\s*(?:pcs|pc|units?)|x|×)(?![{LATIN}])   # 2 pcs, 2x
            | \s*[{COUNTERS}]                          # 2台
            | (?![{LATIN}]|[.,/⁄:]\d|\s*(?:{MEASURES})(?![a-z])|\s*[{_MEASURE_MARKS}])
        )
    |
        (?<![a-z])(?P<word>zero|one|two|three|four|five|six|seven|eight|nine|ten)(?![a-z])
    |
        (?P<cjk>[零〇一二两兩三四五六七八九十])[{COUNTERS}つ]
    |
        (?P<bad>(?:几|幾|何|多少|半)[{COUNTERS}]
            |(?<![a-z])(?:{_MANY})\s*(?:pcs|units?)(?![a-z])
            |(?<!\d)×\s*(?![-−+]?\d)[a-z\u3040-\u9fff])
    )
    """,
    re.VERBOSE,
)

_AMOUNT_RE = re.compile(
    rf"""
    [\s:=]*
    (?:[¥$€£]|cny|rmb|usd|jpy|eur|gbp)?\s*
    (?P<num>[-−+]?(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?)
    (?![{LATIN}]|[.,]\d|\s*(?:gb|g)(?![a-z]))
    """,
    re.VERBOSE,
)
_MEANINGLESS_RE = re.compile(r"[\W_]*")


def normalize_text(text: str) -> str:
    """NFKC, case-folded, format and control characters removed (whitespace ones -> space)."""
    if text.isascii():
        if not text.isprintable():
            text = _CONTROLS_RE.sub(_drop_control, text)
        return text.lower()
    text = unicodedata.normalize("NFKC", text).casefold()
    # isprintable() is False for any Cf or Cc character: a fast scan that spares the regex.
    return text if text.isprintable() else _CONTROLS_RE.sub(_drop_control, text)


def normalize_word(word: str) -> str:
    """A brand-file word as the parser compares it: normalised, inner spaces collapsed."""
    return " ".join(normalize_text(word).split())


def is_cjk(word: str) -> bool:
    """Has kana, Han or Hangul in it: such words match as substrings, not whole words."""
    return _CJK_RE.search(word) is not None


def alternation(words: Iterable[str], *, spaced_units: bool = False) -> str:
    """A regex alternation: Latin words whole-word, CJK words as substrings; longest first."""
    latin: list[str] = []
    cjk: list[str] = []
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        if is_cjk(word):
            cjk.append(re.escape(word))
            continue
        pattern = r"\s+".join(re.escape(part) for part in word.split())
        if spaced_units:
            # "32gb" also matches "32 gb"
            pattern = re.sub(rf"^(\d+)({MEASURES})$", r"\1\\s*\2", pattern)
        latin.append(pattern)
    parts = []
    if latin:
        parts.append(rf"(?<![{LATIN}])(?:{'|'.join(latin)})(?![{LATIN}])")
    if cjk:
        parts.append("|".join(cjk))
    return "|".join(parts) if parts else r"(?!x)x"


def squash(word: str) -> str:
    """Without whitespace ("32 gb" -> "32gb"), to look a matched synonym up."""
    return "".join(word.split())


def detect_lang(text: str) -> str:
    """Script-based guess: any kana -> ja, else any Han -> zh, else en."""
    if text.isascii():
        return "en"
    if _KANA_RE.search(text):
        return "ja"
    if _HAN_RE.search(text):
        return "zh"
    return "en"


_LANG_OF = {"en": "en", "ja": "ja", "zh": "zh"}


def reply_lang(declared: str | None, text: str) -> str:
    """The declared language when it is en/ja/zh (also `zh-TW`, `ja_JP`), else the script's."""
    if declared:
        found = _LANG_OF.get(declared)
        if found is not None:
            return found
        prefix = declared[:2].lower()
        if prefix in _LANG_OF and (len(declared) == 2 or declared[2] in "-_"):
            return prefix
    return detect_lang(text)


def read_quantities(text: str) -> tuple[frozenset[int], bool]:
    """Every quantity written in `text`, and whether a malformed one was."""
    found: set[int] = set()
    for pre, num, _unit, word, cjk, bad in _QUANTITY_RE.findall(text):
        if bad:
            return frozenset(found), True
        if word:
            found.add(EN_NUMBERS[word])
        elif cjk:
            found.add(CJK_NUMBERS[cjk])
        else:
            value = pre or num
            if value[0] in "-−" or not value.lstrip("+").isdigit():
                return frozenset(found), True
            digits = value.lstrip("+").lstrip("0") or "0"
            # Beyond any limit; int() of thousands of digits is slow and refused past 4300.
            found.add(int(digits) if len(digits) <= 18 else HUGE)
    return frozenset(found), False


def read_amount(rest: str, minor_digits: int) -> int | None:
    """The amount at the start of `rest` in minor units; None when `rest` says nothing.

    Raises ValueError when it is not a positive amount with at most `minor_digits` decimals.
    Amounts too large to matter come back as `HUGE`.
    """
    if _MEANINGLESS_RE.fullmatch(rest):
        return None
    match = _AMOUNT_RE.match(rest)
    if match is None:
        raise ValueError("not an amount")
    number = match.group("num").replace(",", "")
    if number[0] in "-−+":
        if number[0] != "+":
            raise ValueError("negative amount")
        number = number[1:]
    whole, _, fraction = number.partition(".")
    whole = whole.lstrip("0") or "0"
    if len(whole) > 18:
        return HUGE
    if len(fraction) > minor_digits and fraction[minor_digits:].strip("0"):
        raise ValueError("more decimals than the currency has")
    fraction = fraction[:minor_digits].ljust(minor_digits, "0")
    amount = int(whole) * int(10**minor_digits) + (int(fraction) if fraction else 0)
    if amount <= 0:
        raise ValueError("not a positive amount")
    return amount


# Readings that look across whitespace, so the per-token reader joins a token to the next one:
# a number before a measure ("16 gb" is storage, not 16 units), "many pcs", "×" before a word.
MEASURE_START_RE = re.compile(rf"(?:{MEASURES})(?![a-z])|[{_MEASURE_MARKS}]")
PIECES_START_RE = re.compile(r"(?:pcs|units?)(?![a-z])")
MANY_END_RE = re.compile(rf"(?<![a-z])(?:{_MANY})$")
# Indexed by the join kind a token records: 1 ends in a number, 2 in "many", 3 in "×".
JOINS = (MEASURE_START_RE, MEASURE_START_RE, PIECES_START_RE, re.compile(""))
