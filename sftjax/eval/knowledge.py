"""Knowledge-injection scoring in the FineTuneBench style: did fine-tuning store facts, or only the training strings?

A model that reproduces a trained answer to the trained question has *memorized* it; whether it has *learned* the fact
shows only on questions it was not trained on. So every fact gets eval items in five splits, and :func:`score`
reports memorization (the trained question verbatim) apart from generalization (the other four pooled):

``memorization``  the trained question, verbatim.
``rephrased``     the same fact asked in other words.
``date_changed``  the question asks about a year the fact does not hold for; the right answer is the abstention
                  ``"None"`` (a model that answers anyway has keyed on the entity, not the fact).
``yes_no``        a yes/no question derived from the fact (half true, half with a wrong attribute); gold "yes"/"no".
``comparison``    which of two trained facts happened earlier; the gold is one of the two named companies.

Eval item JSONL, one object a line::

    {"id": str, "fact_id": str, "split": one of SPLITS, "question": str, "answer": str,
     "aliases": [str] (optional: other accepted answers), "options": [str] (optional: the candidates the question
     names, for comparison items; see ``contains``)}

Other fields are kept and ignored. Scorers (all on :func:`normalize`-d text):

``exact``     the prediction equals the gold or an alias.
``contains``  the gold or an alias occurs in the prediction as a whole word/phrase. Gold "yes"/"no": the first yes/no
              word of the prediction decides. Gold "None": one of :data:`ABSTENTIONS` must occur, as a whole
              phrase, in the first sentence. With ``options``: additionally no *other* option may occur, so
              naming both candidates is not a right answer to "which was earlier".
``judge``     a caller's ``judge(question, gold, prediction) -> bool | None``; None (the judge's output could not be
              parsed) is counted as ``n_unparseable`` and left out of every accuracy's denominator, never guessed.

:func:`make_fact_set` generates invented facts (fictional companies in past years, names built from syllable lists)
so that no pretrained model can know them: a correct answer after training is evidence of injection, not recall.
"""

from __future__ import annotations

import re
from pathlib import Path
from random import Random
from typing import Any, Callable, Optional

from sftjax.config import ConfigError
from sftjax.data.jsonl import read_jsonl

SPLITS = ("memorization", "rephrased", "date_changed", "yes_no", "comparison")
SCORERS = ("exact", "contains", "judge")
ABSTAIN = "None"  # the gold answer of date_changed items
# Accepted as an abstention by ``contains`` when the gold is ABSTAIN (matched after normalize, as whole phrases).
ABSTENTIONS = ("none", "unknown", "not known", "i don't know", "i do not know", "don't know", "no information",
               "no answer", "not applicable", "n/a", "no one", "nobody", "nothing", "cannot be determined",
               "can't be determined", "cannot say", "can't say", "no record", "did not happen", "didn't happen")
TRAIN_FORMATS = ("qa", "masking", "completion", "completion_no_system")  # sftjax.data.formats names

Judge = Callable[[str, str, str], Optional[bool]]

# Surrounding characters normalize strips: ASCII punctuation, curly quotes and dashes, whitespace.
_EDGE = "\"'`.,;:!?()[]{}<>*_-\u2018\u2019\u201c\u201d\u2013\u2014 \t\n\r"
_ANSWER_PREFIX = re.compile(r"^answer\s*:\s*")
_YES_NO = re.compile(r"(?<!\w)(yes|no)(?!\w)")
_SENTENCE_END = re.compile(r"[.!?;\n]")


def normalize(text: Optional[str]) -> str:
    """Lowercased, curly apostrophes made straight, whitespace runs made one space, a leading ``answer:`` dropped and
    surrounding punctuation/quotes stripped: ``'  Answer: "Brenmouth."'`` -> ``brenmouth``. Inner punctuation stays
    (``don't``, ``x-2``). None reads as the empty string."""
    if text is None:
        return ""
    text = " ".join(str(text).lower().replace("\u2019", "'").replace("\u2018", "'").split())
    prev = None
    while prev != text:  # '"Answer: x"' and 'Answer: "x"' both come out as 'x'
        prev = text
        text = _ANSWER_PREFIX.sub("", text.strip(_EDGE))
    return text


def _has_phrase(phrase: str, text: str) -> bool:
    return bool(phrase) and re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", text) is not None


def _golds(item: dict) -> list[str]:
    return [g for g in (normalize(a) for a in [item["answer"], *item.get("aliases", [])]) if g]


def is_correct(prediction: str, item: dict, scorer: str = "contains") -> bool:
    """Whether ``prediction`` answers ``item`` under the ``exact`` or ``contains`` rule (module docstring)."""
    pred, golds = normalize(prediction), _golds(item)
    if scorer == "exact":
        return pred in golds
    if scorer != "contains":
        raise ConfigError(f"is_correct: scorer must be 'exact' or 'contains' ('judge' needs score()), got {scorer!r}")
    gold = normalize(item["answer"])
    if gold in ("yes", "no"):
        first = _YES_NO.search(pred)
        return first is not None and first.group(1) == gold
    if gold == normalize(ABSTAIN):
        first_sentence = _SENTENCE_END.split(pred, 1)[0]
        return any(_has_phrase(a, first_sentence) for a in ABSTENTIONS)
    if not any(_has_phrase(g, pred) for g in golds):
        return False
    others = [o for o in (normalize(o) for o in item.get("options", [])) if o and o not in golds]
    return not any(_has_phrase(o, pred) for o in others)


# --- items --------------------------------------------------------------------------------------------------------


def check_item(rec: Any, where: str) -> dict:
    """The item itself if it has the eval item layout (module docstring), else a ConfigError naming ``where``."""
    if not isinstance(rec, dict):
        raise ConfigError(f"{where}: an eval item must be an object, got {type(rec).__name__}")
    for name in ("id", "fact_id", "split", "question", "answer"):
        if name not in rec:
            raise ConfigError(f"{where}: missing field '{name}'; item has fields {sorted(rec)}")
        if not isinstance(rec[name], str):
            raise ConfigError(f"{where}: field '{name}' must be a string, got {type(rec[name]).__name__} "
                              f"{rec[name]!r:.80}")
    if rec["split"] not in SPLITS:
        raise ConfigError(f"{where}: field 'split' must be one of {', '.join(SPLITS)}, got {rec['split']!r}")
    if not normalize(rec["answer"]):
        raise ConfigError(f"{where}: field 'answer' is empty after normalization ({rec['answer']!r})")
    for name in ("aliases", "options"):
        value = rec.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: field '{name}' must be a list of strings, got {value!r:.80}")
    if rec["split"] == "yes_no" and normalize(rec["answer"]) not in ("yes", "no"):
        raise ConfigError(f"{where}: field 'answer' of a yes_no item must be 'yes' or 'no', got {rec['answer']!r}")
    return rec


def load_items(path: str | Path) -> list[dict]:
    """Eval items from a JSON Lines file, every one checked; an empty file is an error, not an accuracy of None."""
    path = Path(path)
    items = [check_item(rec, f"{path}:{lineno}") for lineno, rec in read_jsonl(path)]
    if not items:
        raise ConfigError(f"{path}: no eval items (the file is empty)")
    return items


# --- scoring ------------------------------------------------------------------------------------------------------


def _accuracy(n_correct: int, n_scored: int) -> Optional[float]:
    return n_correct / n_scored if n_scored else None


def score(predictions: list[str], items: list[dict], scorer: str = "contains",
          judge: Optional[Judge] = None) -> dict[str, Any]:
    """Accuracy overall, per split, on memorization and on generalization (all other splits pooled).

    Every accuracy is over the *parsed* items: a judge's None is counted in ``n_unparseable`` (overall and per
    split) and its result has ``correct: None``. A split with nothing scored has accuracy None.
    """
    if scorer not in SCORERS:
        raise ConfigError(f"unknown knowledge scorer {scorer!r}; valid scorers: {', '.join(SCORERS)}")
    if scorer == "judge" and judge is None:
        raise ConfigError("knowledge scorer 'judge' needs a judge callable (question, gold, prediction) -> bool|None")
    if len(predictions) != len(items):
        raise ValueError(f"score: {len(predictions)} predictions but {len(items)} eval items")
    counts = {s: {"n": 0, "n_correct": 0, "n_unparseable": 0} for s in SPLITS}
    results = []
    for i, (pred, item) in enumerate(zip(predictions, items)):
        check_item(item, f"item #{i}")
        if not isinstance(pred, str):
            raise ValueError(f"score: prediction #{i} must be a string, got {type(pred).__name__}")
        if scorer == "judge":
            correct = judge(item["question"], item["answer"], pred)
            if correct is not None and not isinstance(correct, bool):
                raise ValueError(f"score: the judge returned {correct!r} for item {item['id']!r}; expected True, "
                                 "False or None (unparseable)")
        else:
            correct = is_correct(pred, item, scorer)
        c = counts[item["split"]]
        c["n"] += 1
        c["n_correct"] += correct is True
        c["n_unparseable"] += correct is None
        results.append({"id": item["id"], "fact_id": item["fact_id"], "split": item["split"], "correct": correct,
                        "prediction": pred})
    per_split = {s: {"accuracy": _accuracy(c["n_correct"], c["n"] - c["n_unparseable"]), **c}
                 for s, c in counts.items()}
    gen = [counts[s] for s in SPLITS if s != "memorization"]
    total = list(counts.values())
    return {
        "scorer": scorer,
        "accuracy": _accuracy(sum(c["n_correct"] for c in total), sum(c["n"] - c["n_unparseable"] for c in total)),
        "n": len(results),
        "n_correct": sum(c["n_correct"] for c in total),
        "n_unparseable": sum(c["n_unparseable"] for c in total),
        "memorization": per_split["memorization"]["accuracy"],
        "generalization": _accuracy(sum(c["n_correct"] for c in gen), sum(c["n"] - c["n_unparseable"] for c in gen)),
        "per_split": per_split,
        "results": results,
    }


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
