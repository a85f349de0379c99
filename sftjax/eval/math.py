"""GSM8K-style answer extraction and scoring.

Model outputs are free text, so scoring needs one extraction rule applied identically to predictions and gold answers.
The rule follows the GSM8K convention: the answer is the number after the last ``####`` marker (the format the
training data teaches); a model that never emits the marker is scored on the last number it wrote, which is what it
usually concludes with ("... so the answer is 1,234.").

Supported number forms: optional leading minus, ``$`` currency sign (``$5``, ``-$5``, ``$-5``), comma thousands
separators (``1,234,567``; a comma not in groups of three splits numbers, so ``1,2,3`` is three numbers), decimals
(``3.5``, ``.5``), a trailing sentence period (``42.``) and simple integer fractions ``a/b`` (``3/4`` -> 0.75; a zero
denominator is not a number). Not supported: scientific notation, percent conversion (``50%`` -> 50), words
("three"), mixed numbers ("1 1/2" -> 1/2 as the last number). A minus directly after a letter or digit is read as
a hyphen, not a sign ("3-5" -> 3 and 5), because ranges and equations are common in reasoning text.

An output with no number at all is *unparseable*: it is scored wrong and counted separately in :func:`score`, so a
model that stops emitting numbers is visible instead of hiding inside a low accuracy. Predictions that use the
``#### N`` form are counted too (``answer_format``): it is how far the model adopted the training data's format.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sftjax.config import ConfigError
from sftjax.data.jsonl import read_jsonl

TOLERANCE = 1e-4

_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_NUMBER = re.compile(
    r"(?P<sign>-\$?|\$-|\$)?"
    r"(?:(?P<num>\d+)/(?P<den>\d+)(?![\d/])|(?P<val>" + _UNSIGNED + r"))"
)


def _numbers(text: str) -> list[float]:
    out: list[float] = []
    for m in _NUMBER.finditer(text):
        sign = m.group("sign") or ""
        start = m.start()
        # A minus glued to a word or number is a hyphen / subtraction, not a sign: "3-5", "x-2".
        negative = "-" in sign and not (start > 0 and text[start - 1].isalnum())
        if m.group("val") is not None:
            body = m.group("val")
            # Thousands groups must be exactly three digits ("1,2345" is 1 and 2345, not 1234 and 5).
            value = float(body.replace(",", ""))
        else:
            den = int(m.group("den"))
            if den == 0:
                continue
            value = int(m.group("num")) / den
        out.append(-value if negative else value)
    return out


def _marked_numbers(text: str) -> list[float]:
    """The numbers after the last ``####`` marker; empty without one."""
    return _numbers(text.rsplit("####", 1)[1]) if "####" in text else []


def uses_answer_format(text: str | None) -> bool:
    """Whether the text gives its answer the way the training data does: a number after the last ``####``.

    Counted apart from accuracy because a small model adopts the format long before it gets answers right; the share
    of formatted answers is the first sign that math SFT data took effect.
    """
    return text is not None and bool(_marked_numbers(str(text)))


def extract_answer(text: str | None) -> float | None:
    """The number after the last ``####`` if there is one there, else the last number in the text, else None."""
    if text is None:
        return None
    text = str(text)
    marked = _marked_numbers(text)
    if marked:
        # The marker introduces the answer, so take the first number after it, not the last
        # ("#### 18 dollars (9 x 2)" is 18).
        return marked[0]
    nums = _numbers(text)
    return nums[-1] if nums else None


def _gold_value(gold: str | float | int) -> float | None:
    if isinstance(gold, bool):
        return None
    if isinstance(gold, (int, float)):
        return float(gold)
    return extract_answer(gold)


def is_correct(pred_text: str | None, gold: str | float | int) -> bool:
    """Whether the extracted prediction is within TOLERANCE of the gold answer; unparseable is wrong."""
    pred = extract_answer(pred_text)
    g = _gold_value(gold)
    if g is None:
        raise ValueError(f"gold answer {gold!r} contains no number")
    return pred is not None and abs(pred - g) < TOLERANCE


def score(predictions: list[str], golds: list[str | float]) -> dict[str, Any]:
    """Accuracy over paired predictions and golds, with unparseable predictions counted rather than hidden.

    A gold answer without a number is a data bug, not a model error, so it raises instead of being scored.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"score: {len(predictions)} predictions but {len(golds)} gold answers")
    results = []
    n_correct = n_unparseable = n_formatted = 0
    for i, (pred_text, gold) in enumerate(zip(predictions, golds)):
        g = _gold_value(gold)
        if g is None:
            raise ValueError(f"score: gold answer #{i} ({gold!r}) contains no number")
        pred = extract_answer(pred_text)
        parseable = pred is not None
        correct = parseable and abs(pred - g) < TOLERANCE
        n_correct += correct
        n_unparseable += not parseable
        formatted = uses_answer_format(pred_text)
        n_formatted += formatted
        results.append({"index": i, "pred": pred, "gold": g, "correct": correct, "parseable": parseable,
                        "formatted": formatted})
    n = len(results)
    return {
        "accuracy": n_correct / n if n else None,
        "n": n,
        "n_correct": n_correct,
        "n_unparseable": n_unparseable,
        "answer_format": n_formatted / n if n else None,
        "n_formatted": n_formatted,
        "results": results,
    }


def load_gsm8k_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Problems as ``{"id", "question", "answer", "answer_text"}`` from a GSM8K-style JSON Lines file.

    The gold comes from ``answer`` when present (prepared data stores it separately), else from the ``#### N`` line
    of ``output``/``solution``: a record whose gold cannot be read is an error naming file:line, because silently
    dropping it would change the denominator of every accuracy computed on the file.
    """
    path = Path(path)
    problems = []
    for lineno, rec in read_jsonl(path):
        where = f"{path}:{lineno}"
        question = rec.get("instruction", rec.get("question"))
        if not isinstance(question, str):
            raise ConfigError(f"{where}: expected a string 'instruction' or 'question' field")
        if rec.get("answer") is not None:
            raw, key = rec["answer"], "answer"
            value = _gold_value(raw) if isinstance(raw, (str, int, float)) else None
        else:
            key = "output" if "output" in rec else "solution"
            raw = rec.get(key)
            if not isinstance(raw, str) or "####" not in raw:
                raise ConfigError(f"{where}: expected an 'answer' field or an 'output' ending in '#### N'")
            value = extract_answer(raw)
        if value is None:
            raise ConfigError(f"{where}: field '{key}' holds no number, got {raw!r}")
        problems.append(
            {"id": rec.get("id", f"{path.name}:{lineno}"), "question": question, "answer": value, "answer_text": str(raw)}
        )
    return problems
