"""Fictional facts for knowledge-injection studies (FineTuneBench style): invented companies in past years, with
training records in four formats and eval items in five splits (scored by sftjax.eval.knowledge).

:func:`make_fact_set` builds names from syllable lists so that no pretrained model can know them: a correct answer
after training is evidence of injection, not recall. Deterministic in its seed.
"""

from __future__ import annotations

from random import Random
from typing import Callable


SPLITS = ("memorization", "rephrased", "date_changed", "yes_no", "comparison")
ABSTAIN = "None"  # the gold answer of date_changed items
TRAIN_FORMATS = ("qa", "masking", "completion", "completion_no_system")  # sftjax.data.formats names


# --- fictional facts ----------------------------------------------------------------------------------------------

# Invented syllables: the combinations are meant to name nothing real (a coincidence is possible, but never with
# the same year and attribute). Company names are single words, so a correct short answer is the whole name.
_CO_HEAD = ("Vor", "Bren", "Kal", "Tes", "Mir", "Quen", "Dra", "Hol", "Zen", "Pel", "Lum", "Sar", "Cor", "Fen", "Tal",
            "Ost", "Nim", "Rav", "Gal", "Wex", "Jor", "Ulm", "Tri", "Yav")
_CO_MID = ("li", "a", "o", "e", "i", "u", "an", "or")
_CO_TAIL = ("x", "ra", "mo", "via", "tek", "dar", "nis", "lon", "qua", "rith", "zen", "vel")
_PLACE_HEAD = ("Ash", "Brin", "Cael", "Dun", "Ever", "Frost", "Glen", "Hart", "Ivor", "Kess", "Lorn", "Morr", "Nesh",
               "Orl", "Pry", "Quill", "Rook", "Sten", "Thorn", "Umber", "Vell", "Wyn")
_PLACE_TAIL = ("mouth", "haven", "ford", "stead", "wick", "port", "vale", "crest", "moor", "bridge")
_FIRST = ("Tamsin", "Oskar", "Ilse", "Marek", "Sunniva", "Dario", "Petra", "Anselm", "Yara", "Lucan", "Mireille",
          "Tobin", "Halla", "Ewan", "Noor", "Casimir", "Liesel", "Ravi", "Odile", "Joren")
_SUR_HEAD = ("Quel", "Harn", "Vost", "Brae", "Cind", "Drel", "Farr", "Gorm", "Isel", "Kettel", "Morv", "Penn", "Sorl",
             "Tyv", "Wend")
_SUR_TAIL = ("well", "mont", "sby", "ridge", "ane", "croft", "holt", "quist", "ley", "wood")
_PRODUCT_HEAD = ("Ember", "Glint", "Nimbus", "Vesper", "Drift", "Halcyon", "Lumen", "Cobalt", "Tessel", "Arbor")
_PRODUCT_TAIL = ("fire", "wave", "line", "stone", "light", "frame", "loom", "spire")
_FIELDS = ("Industrial Design", "Civic Engineering", "Maritime Safety", "Clean Energy", "Precision Optics",
           "Rural Transport", "Textile Innovation", "Water Management")
_YEARS = (1850, 2019)  # inclusive; past years, so "did X happen in Y" has a definite answer in the fiction


def _person(rng: Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_SUR_HEAD)}{rng.choice(_SUR_TAIL)}"


def _city(rng: Random) -> str:
    return rng.choice(_PLACE_HEAD) + rng.choice(_PLACE_TAIL)


def _product(rng: Random) -> str:
    return f"{rng.choice(_PRODUCT_HEAD)}{rng.choice(_PRODUCT_TAIL)} {rng.choice('KMRSTVXZ')}{rng.randint(2, 9)}"


def _award(rng: Random) -> str:
    return f"{rng.choice(_SUR_HEAD)}{rng.choice(_SUR_TAIL)} Prize for {rng.choice(_FIELDS)}"


# kind: (draw an attribute, statement, trained question, rephrasings, yes/no question, comparison event phrase
# following the company's name). {c} company, {y} year, {a} attribute (the answer). The statement ends on the
# attribute where it reads naturally, so the ``completion`` formats train the model to produce the new information.
_KINDS: dict[str, tuple[Callable[[Random], str], str, str, tuple[str, ...], str, str]] = {
    "headquarters": (_city, "In {y}, {c} opened its headquarters in {a}.",
                     "In {y}, in which city did {c} open its headquarters?",
                     ("Where did {c} set up its head office in {y}?",
                      "Which city became the home of {c}'s headquarters in {y}?"),
                     "Did {c} open its headquarters in {a} in {y}?", "opened its headquarters in {a}"),
    "product": (_product, "In {y}, {c} released a product called the {a}.",
                "What product did {c} release in {y}?",
                ("In {y}, {c} brought out a new product. What was it called?",
                 "Name the product that {c} put on the market in {y}."),
                "Did {c} release the {a} in {y}?", "released the {a}"),
    "founder": (_person, "In {y}, {c} was founded by {a}.", "Who founded {c} in {y}?",
                ("{c} was started in {y}. Who started it?", "Name the person who established {c} in {y}."),
                "Was {c} founded by {a} in {y}?", "was founded by {a}"),
    "chief": (_person, "In {y}, {c} appointed {a} as its chief executive.",
              "Who did {c} appoint as chief executive in {y}?",
              ("In {y}, who became the head of {c}?", "Who took over as chief executive of {c} in {y}?"),
              "Did {c} appoint {a} as its chief executive in {y}?", "appointed {a} as chief executive"),
    "award": (_award, "In {y}, {c} won the {a}.", "Which prize did {c} win in {y}?",
              ("{c} received an award in {y}. What was it?", "What award was given to {c} in {y}?"),
              "Did {c} win the {a} in {y}?", "won the {a}"),
}
_COMPARE = "Which happened earlier: {c1} {e1}, or {c2} {e2}? Answer with the company's name."
MAX_FACTS = len(_CO_HEAD) * len(_CO_MID) * len(_CO_TAIL)  # one fact per company, so each is unambiguous


def _draw_attribute(rng: Random, draw: Callable[[Random], str], company: str, avoid: str = "") -> str:
    """An attribute that shares no text with the company (the masking format blanks every occurrence of the answer,
    so the answer must occur in the statement exactly once) and differs from ``avoid``."""
    for _ in range(100):
        a = draw(rng)
        if a != avoid and a.lower() not in company.lower() and company.lower() not in a.lower():
            return a
    raise RuntimeError(f"could not draw an attribute for {company!r}")  # unreachable with these word lists


def make_fact_set(n_facts: int, seed: int) -> tuple[dict[str, list[dict]], list[dict]]:
    """``n_facts`` fictional facts (one per invented company, each holding in one year) as training records and eval
    items, the same for the same arguments.

    Returns ``({fmt: records} for fmt in TRAIN_FORMATS, eval_items)``. ``qa`` records are
    ``{"id", "fact_id", "question", "answer"}``; ``masking``, ``completion`` and ``completion_no_system`` records are
    ``{"id", "fact_id", "statement", "answer"}`` with the answer once, verbatim, in the statement (what
    :mod:`sftjax.data.formats` requires). Each fact has one eval item per split, ``id`` ``"<fact_id>:<split>"``;
    its comparison item pairs it with another fact of a different year (named in ``other_fact_id``).
    """
    if isinstance(n_facts, bool) or not isinstance(n_facts, int) or not 2 <= n_facts <= MAX_FACTS:
        raise ValueError(f"make_fact_set: n_facts must be an integer in [2, {MAX_FACTS}] (comparison items pair two "
                         f"facts), got {n_facts!r}")
    rng = Random(seed)
    names = [h + m + t for h in _CO_HEAD for m in _CO_MID for t in _CO_TAIL]
    companies = rng.sample(names, n_facts)
    span = range(_YEARS[0], _YEARS[1] + 1)
    years = rng.sample(span, n_facts) if n_facts <= len(span) else [rng.choice(span) for _ in range(n_facts)]
    kinds = list(_KINDS)
    facts = []
    for i, (company, year) in enumerate(zip(companies, years)):
        kind = kinds[rng.randrange(len(kinds))]
        draw = _KINDS[kind][0]
        facts.append({"fact_id": f"f{i:04d}", "kind": kind, "company": company, "year": year,
                      "answer": _draw_attribute(rng, draw, company)})

    train: dict[str, list[dict]] = {fmt: [] for fmt in TRAIN_FORMATS}
    items: list[dict] = []
    for i, f in enumerate(facts):
        _, statement_t, question_t, rephrasings, yes_no_t, _ = _KINDS[f["kind"]]
        fid, c, y, a = f["fact_id"], f["company"], f["year"], f["answer"]
        statement, question = statement_t.format(c=c, y=y, a=a), question_t.format(c=c, y=y)
        if statement.count(a) != 1 or a in question:  # guarded by _draw_attribute; a template edit could break it
            raise RuntimeError(f"make_fact_set: answer {a!r} must occur once in {statement!r} and not in {question!r}")
        train["qa"].append({"id": f"knowledge:{fid}:qa", "fact_id": fid, "question": question, "answer": a})
        for fmt in TRAIN_FORMATS[1:]:
            train[fmt].append({"id": f"knowledge:{fid}:{fmt}", "fact_id": fid, "statement": statement, "answer": a})

        other_year = y
        while other_year == y:
            other_year = y + rng.choice((-1, 1)) * rng.randint(1, 30)
        truthful = rng.random() < 0.5
        shown = a if truthful else _draw_attribute(rng, _KINDS[f["kind"]][0], c, avoid=a)
        partner = _partner(facts, i, rng)
        first, second = (f, partner) if rng.random() < 0.5 else (partner, f)
        earlier = f if f["year"] < partner["year"] else partner
        compare = _COMPARE.format(c1=first["company"], e1=_event(first), c2=second["company"], e2=_event(second))
        for split, q, gold, extra in (
                ("memorization", question, a, {}),
                ("rephrased", rng.choice(rephrasings).format(c=c, y=y), a, {}),
                ("date_changed", question_t.format(c=c, y=other_year), ABSTAIN, {}),
                ("yes_no", yes_no_t.format(c=c, y=y, a=shown), "yes" if truthful else "no", {}),
                ("comparison", compare, earlier["company"],
                 {"options": [first["company"], second["company"]], "other_fact_id": partner["fact_id"]})):
            items.append({"id": f"{fid}:{split}", "fact_id": fid, "split": split, "question": q, "answer": gold,
                          **extra})
    return train, items


def _event(fact: dict) -> str:
    return _KINDS[fact["kind"]][5].format(a=fact["answer"])


def _partner(facts: list[dict], i: int, rng: Random) -> dict:
    """Another fact with a different year, so "which was earlier" has one answer."""
    start = rng.randrange(len(facts))
    for k in range(len(facts)):
        other = facts[(start + k) % len(facts)]
        if other["year"] != facts[i]["year"]:
            return other
    raise ValueError("make_fact_set: every fact has the same year; no comparison is possible")
