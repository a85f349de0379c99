"""Data privacy and hygiene: PII redaction, deduplication and decontamination, one optional stage per source that runs
on the examples' text before tokenization.

Order: redact, then deduplicate (on the redacted text, so two records that differ only in an e-mail address are one),
then decontaminate. Everything is deterministic and runs on the whole source in every process (text work is cheap
next to tokenization), so a multi-process run keeps exactly the records a single process keeps, without an exchange.
Every change is counted per source and per kind, and every dropped record is listed with the reason: the record it
duplicates, or the eval item it overlaps.

What maintained libraries do here: phone numbers are found by ``phonenumbers`` (libphonenumber's matcher, which knows
every country's numbering plan), near-duplicates by ``datasketch``'s MinHash LSH. The other detectors are written here
because each needs a check no regex library ships: Luhn for card numbers, ISO 13616 mod-97 for IBANs, ``ipaddress``
validation and version-number context for IPs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable

from sftjax.config import ConfigError
from sftjax.config.data import REDACT_KINDS, HygieneConfig
from sftjax.data.formats import Conversation, Example, Text, Turn

PLACEHOLDERS = {kind: f"<{kind.upper()}>" for kind in REDACT_KINDS}


# -- PII detection ---------------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                    r"[A-Za-z]{2,}(?![\w-])")
_URL = re.compile(r"(?<![\w@/])(?:https?://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
_CARD = re.compile(r"(?<![\w.,-])\d(?:[ -]?\d){12,18}(?![\w-]|[.,]\d)")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_IPV4 = re.compile(r"(?<![\w.-])(?:\d{1,3}\.){3}\d{1,3}(?![\w-]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Words after which four dotted numbers are a version or a section, not an address.
_NOT_IP_CONTEXT = re.compile(r"(?:\b(?:v|version|release|build|section|chapter|rule|clause|step|item|article|"
                             r"paragraph|firmware|oid|ver\.?)|§)\s*$", re.IGNORECASE)
# IBAN lengths per country (ISO 13616 registry) for the countries people write most; others are checked by mod-97.
_IBAN_LENGTHS = {"AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27, "GB": 22,
                 "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "SE": 24}


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if not (15 <= len(s) <= 34) or _IBAN_LENGTHS.get(s[:2], len(s)) != len(s):
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _url_spans(text: str) -> Iterable[tuple[int, int]]:
    for m in _URL.finditer(text):
        url = m.group()
        while url and (url[-1] in ".,;:!?" or (url[-1] in ")]}" and url.count("([{"[")]}".index(url[-1])]) == 0)):
            url = url[:-1]  # sentence punctuation or a closing bracket the address did not open
        yield m.start(), m.start() + len(url)


def _card_spans(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1:
            yield m.span()


def _iban_spans(text: str) -> Iterable[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        s = m.group().rstrip()
        # the greedy pattern may run into the next word; shrink until the checksum holds
        while s:
            if iban_valid(s):
                yield m.start(), m.start() + len(s)
                break
            s = s[:-1].rstrip()
            if len(s.replace(" ", "")) < 15:
                break


def _ip_spans(text: str) -> Iterable[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        if _NOT_IP_CONTEXT.search(text[max(0, m.start() - 12): m.start()]):
            continue
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        yield m.span()
    for m in _IPV6.finditer(text):
        if m.group().count(":") < 2 or not re.search(r"[0-9A-Fa-f]", m.group()):
            continue
        try:
            ipaddress.IPv6Address(m.group())
        except ValueError:
            continue
        yield m.span()


def _phone_spans(text: str, region: str) -> Iterable[tuple[int, int]]:
    import phonenumbers

    found = []
    # Numbers valid in their numbering plan; and any number written with a "+" country code that has a possible
    # length for that country (fictional and newly allocated ranges are not "valid" in libphonenumber's tables).
    for leniency, international_only in ((phonenumbers.Leniency.VALID, False), (phonenumbers.Leniency.POSSIBLE, True)):
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=leniency):
            before = text[match.start - 1] if match.start else " "
            if before.isalnum() or before in "-#/_.:":  # the tail of an id such as ORD-2024-558812, not a number
                continue
            if international_only and not match.raw_string.lstrip("(").startswith("+"):
                continue
            if all(match.end <= s or match.start >= e for s, e in found):
                found.append((match.start, match.end))
    yield from found


def find_pii(text: str, kinds: Iterable[str], phone_region: str = "US") -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) spans, in text order. Where detectors overlap, the span found by the
    earlier kind in this precedence wins: url, email, iban, credit_card, ip, phone (an e-mail inside a URL is the
    URL; a card number is never also read as a phone number)."""
    detectors = {
        "url": _url_spans,
        "email": lambda t: (m.span() for m in _EMAIL.finditer(t)),
        "iban": _iban_spans,
        "credit_card": _card_spans,
        "ip": _ip_spans,
        "phone": lambda t: _phone_spans(t, phone_region),
    }
    wanted = set(kinds)
    taken: list[tuple[int, int, str]] = []
    for kind, detect in detectors.items():
        if kind not in wanted:
            continue
        for start, end in detect(text):
            if end > start and all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, kind))
    return sorted(taken)


def redact(text: str, kinds: Iterable[str], phone_region: str = "US") -> tuple[str, dict[str, int]]:
    """``text`` with each PII match replaced by its typed placeholder, and the count per kind."""
    spans = find_pii(text, kinds, phone_region)
    counts: dict[str, int] = {}
    out, pos = [], 0
    for start, end, kind in spans:
        out += [text[pos:start], PLACEHOLDERS[kind]]
        pos = end
        counts[kind] = counts.get(kind, 0) + 1
    out.append(text[pos:])
    return "".join(out), counts


def map_text(example: Example, fn) -> Example:
    """The example with ``fn`` applied to every text it holds (turn contents, the system prompt, raw text)."""
    if isinstance(example, Text):
        return Text(fn(example.text))
    return dataclasses.replace(example, turns=[Turn(t.role, fn(t.content)) for t in example.turns],
                               system=None if example.system is None else fn(example.system))


def example_text(example: Example) -> str:
    if isinstance(example, Text):
        return example.text
    assert isinstance(example, Conversation)
    return "\n".join(([example.system] if example.system else []) + [t.content for t in example.turns])


# -- normalization shared by dedup and decontamination ---------------------------------------------------------------

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Unicode-compatible, case-folded, whitespace-collapsed: two texts that differ only in those are duplicates."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def words(text: str) -> list[str]:
    return _WORD.findall(normalize(text))


# -- deduplication ----------------------------------------------------------------------------------------------------


class Deduplicator:
    """First occurrence wins, within and across sources, in source order then record order. ``exact``: the same
    normalized text. ``near``: MinHash LSH over word shingles, then the estimated Jaccard similarity is checked
    against the threshold (LSH only proposes candidates)."""

    def __init__(self, cfg: HygieneConfig):
        self.cfg = cfg
        self.exact: dict[str, str] = {}  # sha256 of normalized text -> first record id
        self.lsh = None
        self.minhashes: dict[str, object] = {}

    def _minhash(self, text: str):
        from datasketch import MinHash

        w = words(text)
        n = self.cfg.near_shingle
        shingles = {" ".join(w[i: i + n]) for i in range(max(1, len(w) - n + 1))} or {""}
        m = MinHash(num_perm=self.cfg.near_num_perm, seed=1)
        m.update_batch([s.encode() for s in sorted(shingles)])
        return m

    def first(self, record_id: str, text: str, mode: str) -> str | None:
        """The id of the earlier record this one duplicates, or None (and this one is remembered)."""
        digest = hashlib.sha256(normalize(text).encode()).hexdigest()
        if digest in self.exact:
            return self.exact[digest]
        if mode == "near":
            from datasketch import MinHashLSH

            if self.lsh is None:
                # LSH only proposes candidates (each is checked against near_threshold below); its banding cannot be
                # built for thresholds near 1, so it proposes at 0.9 at most
                self.lsh = MinHashLSH(threshold=min(self.cfg.near_threshold, 0.9), num_perm=self.cfg.near_num_perm)
            m = self._minhash(text)
            best = None
            for key in sorted(self.lsh.query(m)):
                similarity = m.jaccard(self.minhashes[key])
                if similarity >= self.cfg.near_threshold and (best is None or similarity > best[0]):
                    best = (similarity, key)
            if best is not None:
                return best[1]
            self.lsh.insert(record_id, m)
            self.minhashes[record_id] = m
        self.exact[digest] = record_id
        return None


# -- decontamination --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalText:
    """One text of an eval suite that training must not contain: a prompt or a reference."""

    suite: str
    item: str
    text: str


class ContaminationIndex:
    """The word n-grams of every eval text. n is ``ngram`` (13 by default, as in GPT-3's and Llama's contamination
    studies); an eval text shorter than that uses its own length, down to ``min_ngram``, and shorter ones are
    counted as too short to check. A training example is contaminated by an eval text when they share an n-gram and
    the shared n-grams cover at least ``overlap`` of the eval text's n-grams (0: any shared n-gram)."""

    def __init__(self, texts: list[EvalText], cfg: HygieneConfig):
        self.cfg, self.texts = cfg, texts
        self.grams: dict[int, dict[tuple, list[int]]] = {}  # n -> n-gram -> eval texts holding it
        self.sizes: list[int] = []
        self.too_short: dict[str, int] = {}
        for i, t in enumerate(texts):
            w = words(t.text)
            n = min(cfg.ngram, len(w))
            if n < cfg.min_ngram:
                self.sizes.append(0)
                self.too_short[t.suite] = self.too_short.get(t.suite, 0) + 1
                continue
            grams = {tuple(w[j: j + n]) for j in range(len(w) - n + 1)}
            self.sizes.append(len(grams))
            table = self.grams.setdefault(n, {})
            for g in grams:
                table.setdefault(g, []).append(i)

    def match(self, text: str) -> tuple[EvalText, float] | None:
        """The eval text this training text overlaps most, with the share of its n-grams found, or None."""
        w = words(text)
        hits: dict[int, int] = {}
        for n, table in self.grams.items():
            for g in {tuple(w[j: j + n]) for j in range(len(w) - n + 1)}:
                for i in table.get(g, ()):
                    hits[i] = hits.get(i, 0) + 1
        best = None
        for i, count in hits.items():
            share = count / self.sizes[i]
            if share >= self.cfg.overlap and (best is None or (share, -i) > (best[1], -best[0])):
                best = (i, share)
        return None if best is None else (self.texts[best[0]], best[1])


# -- the stage --------------------------------------------------------------------------------------------------------


@dataclass
class HygieneStats:
    """What the stage did to one source (all of it lands in data_stats.json and in sftjax-data inspect)."""

    redacted: dict[str, int] = field(default_factory=dict)  # placeholders inserted, per kind
    redacted_records: int = 0
    duplicates: int = 0
    contaminated: int = 0
    dropped_duplicates: list[dict] = field(default_factory=list)  # {"record", "duplicate_of"}
    dropped_contaminated: list[dict] = field(default_factory=list)  # {"record", "suite", "item", "overlap"}


class Hygiene:
    """The stage for one run: its state (the records seen so far, for dedup across sources) spans every source, in
    source order."""

    def __init__(self, cfg: HygieneConfig, eval_texts: list[EvalText] | None = None):
        self.cfg = cfg
        self.dedup = Deduplicator(cfg)
        self.eval_texts = eval_texts
        self._index: ContaminationIndex | None = None

    @property
    def index(self) -> ContaminationIndex:
        if self._index is None:
            if not self.eval_texts:
                raise ConfigError("config key 'data.sources.*.decontaminate': no eval suite texts to check against "
                                  "(configure eval.suites with files, or set decontaminate: false)")
            self._index = ContaminationIndex(self.eval_texts, self.cfg)
        return self._index

    def apply(self, ids: list[str], examples: list[Example], redact_kinds: list[str], dedup: str,
              decontaminate: bool) -> tuple[list[int], list[Example], HygieneStats]:
        """(kept positions, their examples after redaction, stats) for one source's examples in record order."""
        stats = HygieneStats()
        kept, out = [], []
        for k, (rid, ex) in enumerate(zip(ids, examples, strict=True)):
            if redact_kinds:
                counts: dict[str, int] = {}

                def fn(text: str) -> str:
                    new, c = redact(text, redact_kinds, self.cfg.phone_region)
                    for kind, v in c.items():
                        counts[kind] = counts.get(kind, 0) + v
                    return new

                ex = map_text(ex, fn)
                for kind, v in counts.items():
                    stats.redacted[kind] = stats.redacted.get(kind, 0) + v
                stats.redacted_records += bool(counts)
            text = example_text(ex)
            if dedup != "none":
                earlier = self.dedup.first(rid, text, dedup)
                if earlier is not None:
                    stats.duplicates += 1
                    stats.dropped_duplicates.append({"record": rid, "duplicate_of": earlier})
                    continue
            if decontaminate:
                hit = self.index.match(text)
                if hit is not None:
                    stats.contaminated += 1
                    stats.dropped_contaminated.append({"record": rid, "suite": hit[0].suite, "item": hit[0].item,
                                                       "overlap": round(hit[1], 4)})
                    continue
            kept.append(k)
            out.append(ex)
        return kept, out, stats
