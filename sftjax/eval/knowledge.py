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

The facts and items themselves come from :func:`sftjax.data.facts.make_fact_set` (invented, so that no pretrained
model can know them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Optional

from sftjax.config import ConfigError
from sftjax.data.facts import ABSTAIN, SPLITS
from sftjax.data.jsonl import read_jsonl

SCORERS = ("exact", "contains", "judge")
# Accepted as an abstention by ``contains`` when the gold is ABSTAIN (matched after normalize, as whole phrases).
ABSTENTIONS = ("none", "unknown", "not known", "i don't know", "i do not know", "don't know", "no information",
               "no answer", "not applicable", "n/a", "no one", "nobody", "nothing", "cannot be determined",
               "can't be determined", "cannot say", "can't say", "no record", "did not happen", "didn't happen")

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
