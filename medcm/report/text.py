"""Report text handling: cleaning, sections, sentences, metric normalisation, negation.

One set of rules serves training (which text is paired with an image), retrieval-based
drafting (sentences from past reports, de-duplicated and re-ordered) and evaluation
(BLEU/ROUGE on normalised text), so all three see the same sentences. Stdlib only.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from dataclasses import dataclass

__all__ = ["SECTION_ALIASES", "SECTION_ORDER", "section_order", "Report", "clean_text",
           "split_sections", "split_sentences", "findings_text", "report_text_for_training",
           "normalize_for_metrics", "ngram_counts", "ngram_precision", "sentence_key", "is_negated"]

_GROUPS = {
    "FINDINGS": ("FINDING", "FINDINGS"),
    "IMPRESSION": ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "OPINION",
                   "SUMMARY", "INTERPRETATION"),
    "INDICATION": ("HISTORY", "CLINICAL HISTORY", "PATIENT HISTORY", "INDICATION",
                   "INDICATIONS", "CLINICAL INDICATION", "REASON FOR EXAM",
                   "REASON FOR EXAMINATION", "REASON FOR STUDY", "CLINICAL INFORMATION"),
    "TECHNIQUE": ("TECHNIQUE", "TECHNIQUES", "PROCEDURE", "EXAM", "EXAMINATION"),
    "COMPARISON": ("COMPARISON", "COMPARISONS"),
    "RECOMMENDATION": ("RECOMMENDATION", "RECOMMENDATIONS"),
    "DIAGNOSIS": ("DIAGNOSIS", "DIAGNOSES", "CASE DIAGNOSIS", "FINAL DIAGNOSIS"),
    "DIFFERENTIAL DIAGNOSIS": ("DIFFERENTIAL DIAGNOSIS", "DIFFERENTIAL DIAGNOSES", "DDX"),
    "DISCUSSION": ("DISCUSSION",),
}
SECTION_ALIASES: dict[str, str] = {v: canon for canon, vs in _GROUPS.items() for v in vs}
"""Upper-case header variant (single spaces) -> canonical section name."""

section_order: tuple[str, ...] = (
    "INDICATION", "COMPARISON", "TECHNIQUE", "FINDINGS", "IMPRESSION", "RECOMMENDATION")
"""Canonical sections in the order a report is written (used by the drafter)."""
SECTION_ORDER = section_order

# Sections describing the request or acquisition, not the image content.
_NON_DESCRIPTIVE = frozenset({"INDICATION", "TECHNIQUE", "COMPARISON"})


def _require_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Report:
    """A report split into sections.

    Attributes:
        sections: ``(name, text)`` pairs in document order; ``name`` is a canonical name,
            an upper-cased unknown header, or ``"BODY"`` for text before/without headers.
            Texts are cleaned and may contain line breaks.
    """

    sections: tuple[tuple[str, str], ...] = ()

    def get(self, name: str, default: str = "") -> str:
        """Returns a section's text by name or alias in any case, else ``default``."""
        key = " ".join(_require_str(name, "name").upper().split())
        key = SECTION_ALIASES.get(key, key)
        return next((text for sec, text in self.sections if sec == key), default)

    @property
    def findings(self) -> str:
        """The FINDINGS section, ``""`` when absent."""
        return self.get("FINDINGS")

    @property
    def impression(self) -> str:
        """The IMPRESSION section, ``""`` when absent."""
        return self.get("IMPRESSION")


# --- cleaning -------------------------------------------------------------------------
_BLOCK_TAG = re.compile(r"<\s*/?\s*(?:br|p|div|li|tr|h[1-6]|ul|ol|table)\b[^<>]*>", re.I)
# A tag must start with a letter right after "<", so "<5 mm" and "a < b" survive.
_OTHER_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>", re.S)
_CHAR_MAP = str.maketrans({
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
    **dict.fromkeys("\u00a0\u2002\u2003\u2007\u2009\u200a\u202f\u3000\t\v\f", " "),
    **dict.fromkeys("\u200b\u200c\u200d\ufeff\u00ad"),
    "\u2026": "...", "\r": "\n", "\u2028": "\n", "\u2029": "\n"})


def _clean_once(text: str) -> str:
    text = html.unescape(text.replace("\r\n", "\n"))
    text = _OTHER_TAG.sub("", _BLOCK_TAG.sub("\n", text)).translate(_CHAR_MAP)
    text = re.sub(r"_{3,}(?: *_{3,})*", "___", re.sub(r" {2,}", " ", text))
    text = "\n".join(line.strip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def clean_text(text: str) -> str:
    """Cleans raw text, keeping line breaks (section detection needs them). Idempotent.

    Unescapes HTML entities, turns block tags (``<br>``, ``<p>``, ``</p>``...) into line
    breaks and drops other tags, maps typographic quotes/dashes/spaces to ASCII, collapses
    spaces, strips every line, keeps at most one blank line in a row, trims the ends and
    collapses runs of ``___`` de-identification placeholders to one ``___``.

    Raises:
        TypeError: If ``text`` is not a str.
    """
    _require_str(text, "text")
    # Repeat to a fixed point: unescaping "&amp;lt;br&amp;gt;" can reveal new entities/tags.
    for _ in range(10):
        cleaned = _clean_once(text)
        if cleaned == text:
            break
        text = cleaned
    return text


# --- sections -------------------------------------------------------------------------
_ALIAS_ALT = "|".join(r"\s+".join(map(re.escape, k.split()))
                      for k in sorted(SECTION_ALIASES, key=len, reverse=True))
_COLON_HEADER = re.compile(r"(?P<name>[A-Za-z][A-Za-z &/()'-]{0,48}?)\s*:\s*(?P<rest>.*)", re.S)
_DASH_HEADER = re.compile(rf"(?P<name>{_ALIAS_ALT})\s*-{{1,2}}(?:\s+(?P<rest>.*))?", re.I | re.S)
_ALONE_HEADER = re.compile(rf"(?P<name>{_ALIAS_ALT})")  # case-sensitive: ALL CAPS only
_MIDLINE_HEADER = re.compile(rf"(?<![\w-])(?:{_ALIAS_ALT})\s*:")  # case-sensitive


def _parse_header(segment: str) -> tuple[str | None, str]:
    """Returns ``(section name, rest of segment)``, or ``(None, segment)`` if no header."""
    m = _COLON_HEADER.fullmatch(segment)
    if m:
        raw = " ".join(m["name"].split())
        if raw.upper() in SECTION_ALIASES:
            return SECTION_ALIASES[raw.upper()], m["rest"]
        # Unknown headers only in ALL CAPS so "Note: ..." or "http://" stay text.
        if raw == raw.upper() and sum(c.isalpha() for c in raw) >= 3 and len(raw.split()) <= 6:
            return raw, m["rest"]
    m = _DASH_HEADER.fullmatch(segment) or _ALONE_HEADER.fullmatch(segment)
    if m:
        rest = m.groupdict().get("rest") or ""
        return SECTION_ALIASES[" ".join(m["name"].upper().split())], rest
    return None, segment


def split_sections(text: str) -> Report:
    """Splits a report into sections.

    Headers are recognised at line starts as ``NAME:`` (known aliases in any case; unknown
    names in ALL CAPS, kept upper-cased), ``NAME -`` (known aliases, any case) and a known
    alias alone on a line in ALL CAPS. Mid-line, a known alias in ALL CAPS followed by
    ``:`` also starts a section (``"FINDINGS: a. IMPRESSION: b."``). Text before the
    first header goes to ``"BODY"``; a repeated header's text is appended (after a line
    break) to its first occurrence. Empty text gives no sections.

    Raises:
        TypeError: If ``text`` is not a str.
    """
    chunks: dict[str, list[str]] = {"BODY": []}
    current = "BODY"
    for line in clean_text(_require_str(text, "text")).split("\n"):
        cuts = [0, *(m.start() for m in _MIDLINE_HEADER.finditer(line) if m.start()), len(line)]
        for a, b in zip(cuts, cuts[1:]):
            name, rest = _parse_header(line[a:b].strip())
            if name is not None:
                current = name
                chunks.setdefault(current, [])
            chunks[current].append(rest)
    sections = ((name, clean_text("\n".join(lines))) for name, lines in chunks.items())
    return Report(tuple(s for s in sections if s[0] != "BODY" or s[1]))


# --- sentences ------------------------------------------------------------------------
_MARKER = re.compile(r"(?:[\u2022\u00b7\u25aa\u25e6\u25cf\u2023\u2219]|[-*+](?=\s|$)"
                     r"|\(?\d{1,2}[.)](?=\s|$)|\([a-z]\)|[a-z]\)(?=\s))\s*")
_ENUM_START = re.compile(r"\(?(\d{1,2})([.)])\s")
_BOUNDARY = re.compile(r"([.!?]+)[\"')\]]*(?=\s+(\S))")
# Never end a sentence: titles, Latin and reference abbreviations.
_STRONG_ABBR = frozenset("dr drs mr mrs ms prof st vs approx fig figs cf al jr sr pt pts "
                         "esp incl viz ref dept".split())
# Units and shorthand: no sentence end before a lower-case word even in all-lower-case text.
_SOFT_ABBR = frozenset("cm mm m ml mg kg min sec hr hrs yr yrs wk wks mo mos etc ant post "
                       "lat med sup inf".split())
# "segment 2. Stable" inside item 1 is a sentence end, not item 2.
_NUMBERED_NOUNS = frozenset("segment segments level levels grade stage type series image "
                            "images fig figure no rib ribs zone station class category".split())


def _strip_markers(s: str) -> str:
    s = s.lstrip()
    while m := _MARKER.match(s):  # "1. - foo" carries two markers
        s = s[m.end():].lstrip()
    return s


def _blocks(text: str) -> list[str]:
    """Joins wrapped lines; a blank line or a list item ends a block."""
    text = re.sub(r"[ \t]*([\u2022\u25aa\u25e6\u25cf\u2023\u2219])[ \t]*", r"\n\1 ", text)
    blocks, cur, in_item = [], [], False
    for line in text.split("\n"):
        item = bool(_MARKER.match(line))
        # Items are one line; a following capitalised line is a new sentence, not a wrap.
        if not line or item or (in_item and line[:1].isupper()):
            blocks.extend([" ".join(cur)] if cur else [])
            cur, in_item = [], item
        cur.extend([line] if line else [])
    return blocks + ([" ".join(cur)] if cur else [])


def _split_enumeration(block: str) -> list[str]:
    """Splits "1. a 2. b" (counting up from the leading marker, same style) into items."""
    m = _ENUM_START.match(block)
    if not m:
        return [block]
    n, style, items, start = int(m[1]), re.escape(m[2]), [], 0
    while True:
        n += 1
        for nxt in re.finditer(rf"(?<=\s)\(?{n}{style}\s+(?=[A-Z])", block[start + 1:]):
            cut = start + 1 + nxt.start()
            if (block[start:cut].split() or [""])[-1].lower() not in _NUMBERED_NOUNS:
                break
        else:
            return items + [block[start:]]
        items.append(block[start:cut])
        start = cut


def _is_break(punct: str, token: str, nxt: str, lower_mode: bool) -> bool:
    """Decides whether ``punct`` after ``token``, followed by ``nxt``, ends a sentence."""
    token = token.lstrip("(\"'[")
    tok = token.lower()
    if punct == ".":
        if tok in _STRONG_ABBR or re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]|[A-Z]", token):
            return False  # "Dr. Smith", "e.g. CT", "q.d.", initials "J. Smith"
        if tok in {"no", "nos"} and nxt[:1].isdigit():
            return False  # "no. 3"
    if nxt[:1].islower():
        # Lower-case continuation means an abbreviation, unless the whole text is lower-case.
        return lower_mode and tok not in _SOFT_ABBR
    return True


def _finish(s: str) -> str:
    s = " ".join(_strip_markers(s).split())
    s = re.sub(r"\s+([.,;:!?])(?=\s|$)", r"\1", s)  # tokenised corpora: "normal ."
    if not any(c.isalnum() for c in s):
        return ""
    if s.rstrip("\"')]")[-1:] not in (".", "!", "?"):
        s = s.rstrip(",;:- ") + "."
    return s


def split_sentences(text: str) -> list[str]:
    """Splits text (typically one section) into cleaned, single-spaced sentences.

    Wrapped lines are joined; blank lines, bullets (``-``, ``*``, ``•``) and enumeration
    markers (``1.``, ``2)``, ``(3)``) at line starts end a sentence and are stripped, as
    does a capitalised line after a list item; inline lists counting up from a leading
    ``1.`` are split. Periods after abbreviations (``Dr.``, ``vs.``, ``e.g.``, ``Fig. 2``,
    ``no. 3``, initials, ``q.d.``), inside decimals, or before a lower-case word (unless
    the whole text is lower-case) do not end a sentence. Each sentence ends with ``.``,
    ``!`` or ``?`` (maybe then a closing quote/bracket); ``.`` is added when missing.

    Raises:
        TypeError: If ``text`` is not a str.
    """
    out: list[str] = []
    for block in _blocks(clean_text(_require_str(text, "text"))):
        for item in _split_enumeration(block):
            item = _strip_markers(item)
            lower_mode = not any(c.isupper() for c in item)
            start = 0
            for m in _BOUNDARY.finditer(item):
                token = item[max(item.rfind(" ", start, m.start()) + 1, start):m.start()]
                if _is_break(m[1], token, m[2], lower_mode):
                    out.append(_finish(item[start:m.end()]))
                    start = m.end()
            out.append(_finish(item[start:]))
    return [s for s in out if s]


def findings_text(text: str) -> str:
    """The FINDINGS section plus unknown ALL-CAPS subsections right after it (``LUNGS:``, ``CT:``).

    Paragraphs keep their order and are joined by blank lines; ``""`` when there is no FINDINGS.

    Raises:
        TypeError: If ``text`` is not a str.
    """
    return "\n\n".join(_findings_parts(split_sections(text), with_headers=True))


def _findings_parts(report: Report, with_headers: bool = False) -> list[str]:
    known, parts, in_findings = set(SECTION_ALIASES.values()), [], False
    for name, body in report.sections:
        in_findings = name == "FINDINGS" or (in_findings and name not in known)
        if in_findings and body:
            parts.append(f"{name}: {body}" if with_headers and name != "FINDINGS" else body)
    return parts


def report_text_for_training(text: str) -> str:
    """Returns the single-line text paired with an image for training.

    FINDINGS (plus unknown ALL-CAPS subsections right after it, e.g. ``LUNGS:``) then
    IMPRESSION when any is non-empty; else every section but INDICATION, TECHNIQUE and
    COMPARISON (header-less text gives its BODY); else ``""``. The result is the
    sections' sentences (see :func:`split_sentences`) joined by single spaces.

    Raises:
        TypeError: If ``text`` is not a str.
    """
    report = split_sections(text)
    parts = [p for p in (*_findings_parts(report), report.impression) if p]
    if not parts:
        parts = [t for name, t in report.sections if name not in _NON_DESCRIPTIVE]
    return " ".join(s for part in parts for s in split_sentences(part))


def normalize_for_metrics(text: str) -> str:
    """Normalises text for BLEU/ROUGE: cleaned, lower-cased, punctuation removed.

    Tokens are runs of letters/digits; apostrophes are deleted (``patient's`` ->
    ``patients``); a decimal point between digits is kept so ``2.3 cm`` stays distinct
    from the range ``2-3 cm`` (-> ``2 3 cm``).

    Raises:
        TypeError: If ``text`` is not a str.
    """
    text = re.sub(r"['`]", "", clean_text(_require_str(text, "text")).lower())
    return " ".join(re.findall(r"\d+(?:\.\d+)+|[^\W_]+", text))


def ngram_counts(tokens: list[str] | tuple[str, ...], max_n: int = 4) -> tuple[Counter, ...]:
    """Counts of the 1..max_n-grams of a token list: ``result[k - 1]`` maps k-gram tuples to counts."""
    tokens = tuple(tokens)
    return tuple(Counter(zip(*(tokens[i:] for i in range(k)))) for k in range(1, max_n + 1))


def ngram_precision(candidate: tuple[Counter, ...], reference: tuple[Counter, ...]) -> float:
    """Geometric mean of the clipped 1..n-gram precisions of a candidate against a reference.

    BLEU without the brevity penalty, smoothed like pycocoevalcap (no n-gram in common gives
    a tiny value, not zero), so "how much of this sentence would that report also say".
    Both arguments come from :func:`ngram_counts` with the same ``max_n``.
    """
    logs = []
    for cand, ref in zip(candidate, reference):
        total = sum(cand.values())
        if total == 0:
            return 0.0
        matched = sum(min(count, ref.get(gram, 0)) for gram, count in cand.items())
        logs.append(math.log((matched + 1e-9) / total))
    return math.exp(sum(logs) / len(logs)) if logs else 0.0


def sentence_key(sentence: str) -> str:
    """Key for exact-duplicate detection: ``normalize_for_metrics(sentence)``."""
    return normalize_for_metrics(sentence)


# --- negation (NegEx-style trigger lists) -----------------------------------------------
# Pseudo-triggers hold a negation word but deny nothing: stability ("no change" affirms
# the finding), uncertainty ("cannot be excluded") and protocol text ("without contrast").
_PSEUDO = re.compile(
    r"\b(?:no|without)\s+(?:(?:significant|appreciable|substantial|definite|interval|"
    r"further|other)\s+)*(?:change|changes|increase|decrease|growth|progression)\b"
    r"|\bnot\s+(?:significantly\s+)?changed\b|\bnot\s+only\b|\bwhether\s+or\s+not\b"
    r"|\b(?:can\s*not|not|cannot)\s+(?:be\s+)?(?:excluded|exclude|ruled\s+out|rule\s+out)\b"
    r"|\bnot\s+(?:entirely\s+)?(?:clear|certain)\b|\bwith\s+(?:and|or)\s+without\b"
    r"|\bwithout\s+(?:iv\s+|intravenous\s+|oral\s+)?contrast\b")
_TRIGGER = re.compile(
    r"\b(?:no|not|none|without|cannot|never|neither|absent|absence\s+of|free\s+of|"
    r"negative\s+for|denies|denied|ruled\s+out|rules\s+out)\b|n't\b|^negative\b")


def is_negated(sentence: str) -> bool:
    """True when the sentence states that something is absent.

    After deleting pseudo-triggers (``no change``, ``no interval change``, ``not changed``,
    ``cannot be excluded``, ``not ruled out``, ``with and without``, ``without contrast``)
    the sentence is negated if a trigger remains: ``no``, ``not``, ``n't``, ``none``,
    ``without``, ``cannot``, ``never``, ``neither``, ``absent``, ``absence of``,
    ``free of``, ``negative for``, a leading ``negative``, ``denies``, ``ruled out``.
    Sentence level, no scope: "Small effusion, no pneumothorax." is negated.

    Raises:
        TypeError: If ``sentence`` is not a str.
    """
    text = " ".join(clean_text(_require_str(sentence, "sentence")).lower().split())
    return bool(_TRIGGER.search(_PSEUDO.sub(" ", text).strip()))
