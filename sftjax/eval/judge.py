"""LLM-as-judge rubric scoring: MT-Bench-style single ratings and a weighted multi-criterion rubric.

Open-ended answers have no gold to compare against, so a judge model rates them against a rubric. Judge scores are
only comparable across runs if everything around the judge is fixed, so this module fixes it in code: the prompt
(:func:`judge_messages`), the one accepted reply format (:func:`parse_judgment`), the normalization of every
criterion to [0, 1] as ``(s - scale_min) / (scale_max - scale_min)`` and the aggregation in :func:`score`.

Two presets (:func:`rubric`):

* ``mt_bench``: one 1-10 rating per turn, ending in MT-Bench's ``[[N]]`` form. Questions have one or two turns; the
  second turn is judged with the first turn's question and answer shown as context, as in MT-Bench, and the score is
  the mean over all judged turns.
* ``eight_category``: clarity, accuracy, completeness, conciseness, safety, specificity, consideration and politeness,
  plus ``overall``, each 1-10, one judgment per question covering the whole conversation. The question's score is
  the weighted mean of the eight normalized criteria; ``overall`` is rated and reported but not weighted, so it can
  be checked against the weighted mean. Weights default to equal and a question may override them for itself
  (``"weights": {"accuracy": 3}``: the named criteria take the given weights, the others keep their defaults, and the
  result is renormalized to sum to 1), because what matters differs between, say, a maths question and a request
  for a condolence note.

A judge is any callable from a batch of OpenAI-style message lists to reply texts: :class:`HttpJudge` talks to an
OpenAI-compatible server, :class:`CallableJudge` wraps a local function (e.g. an sftjax model's chat generation).

A reply that cannot be parsed (no rating, a missing criterion, a value outside the scale) is re-asked, with the bad
reply and a reminder of the format appended to the conversation, up to ``max_attempts`` in total. If it still fails
it is counted in ``n_unparseable`` and left out of every mean: scoring it as the minimum would punish the model for
the judge's formatting, and dropping it silently would hide a broken judge.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from sftjax.config import FIXTURE_DIR, ConfigError
from sftjax.data.jsonl import read_jsonl
from sftjax.eval.judge_http import HttpJudge, JudgeError, Messages, chat_completions_url
from sftjax.config.base import is_number
from sftjax.eval.judge_rubrics import FORMATS, PRESETS, Criterion, Rubric, is_weight, rubric

# The rubrics and the HTTP backend live in their own modules; they are re-exported so this stays the one import.
__all__ = [
    "Messages", "MAX_TURNS", "JUDGMENT_CHARS", "FIXTURE_QUESTIONS", "FORMATS", "JudgeError", "Criterion", "Rubric",
    "PRESETS", "rubric", "judge_messages", "parse_judgment", "CallableJudge", "chat_completions_url", "HttpJudge",
    "load_questions", "score", "QUESTION_SET_FORMAT", "DOMAINS",
]

MAX_TURNS = 2
JUDGMENT_CHARS = 500  # judge text kept per result; the full text is rarely needed and bloats result files
FIXTURE_QUESTIONS = FIXTURE_DIR / "judge_questions.jsonl"  # eight two-turn questions written for sftjax


# ------------------------------------------------------------------------------------------------------------ prompts

_SYSTEM = (
    "You are an impartial, strict judge of AI assistant responses. Judge only the assistant's responses, ignore their "
    "length unless it affects quality, do not favour a style, and follow the requested output format exactly."
)


def _scale_text(r: Rubric) -> str:
    kind = "an integer" if float(r.scale_min).is_integer() and float(r.scale_max).is_integer() else "a number"
    return f"{kind} from {_fmt(r.scale_min)} (worst) to {_fmt(r.scale_max)} (best)"


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _format_instruction(r: Rubric) -> str:
    if r.format == "rating":
        example = _fmt(round((r.scale_min + r.scale_max) / 2))
        return (
            f"After the explanation, rate the response with {_scale_text(r)} and end your reply with the rating in "
            f'exactly this format: "[[rating]]", for example: "Rating: [[{example}]]".'
        )
    span = r.scale_max - r.scale_min
    example = {n: _fmt(round(r.scale_min + span * (0.45 + 0.1 * ((3 * i) % 5)))) for i, n in enumerate(r.names)}
    example_text = "{" + ", ".join(f'"{n}": {v}' for n, v in example.items()) + "}"
    return (
        f"After the explanation, rate every criterion with {_scale_text(r)} and end your reply with one JSON object "
        f"on a single line that maps every criterion name to its score, for example:\n{example_text}"
    )


def _criteria_text(r: Rubric) -> str:
    if r.format == "rating":
        return f"Consider {r.criteria[0].description}." if r.criteria[0].description else ""
    lines = ["Rate each of these criteria:"]
    lines += [f"- {c.name}: {c.description}" if c.description else f"- {c.name}" for c in r.criteria]
    return "\n".join(lines)


def judge_messages(
    rubric: Rubric, question_item: Mapping[str, Any], answers: Sequence[str], turn: int | None = None
) -> Messages:
    """The judge's messages for one question: a system message and one user message holding the conversation.

    ``turn`` (1-based) focuses the judgment on that turn's answer, with earlier turns shown as context and later
    ones left out; ``None`` judges the whole conversation. References (``question_item["reference"]``) are shown for
    the turns shown.
    """
    turns = list(question_item["turns"])
    if len(answers) != len(turns):
        raise ValueError(f"question {question_item.get('id')!r}: {len(turns)} turns but {len(answers)} answers")
    if turn is not None and not (isinstance(turn, int) and 1 <= turn <= len(turns)):
        raise ValueError(f"question {question_item.get('id')!r}: turn must be 1..{len(turns)} or None, got {turn!r}")
    shown = len(turns) if turn is None else turn
    refs = question_item.get("reference") or []
    multi = len(turns) > 1 and shown > 1

    if turn is None:
        target = "the assistant's responses in the conversation below, as a whole"
    elif multi:
        target = (
            f"the assistant's answer to user question {turn} in the conversation below; "
            "the earlier exchange is context only, do not rate it"
        )
    else:
        target = "the assistant's answer to the user question below"
    parts = [f"Evaluate the quality of {target}."]
    if rubric.instructions:
        parts.append(rubric.instructions)
    crit = _criteria_text(rubric)
    if crit:
        parts.append(crit)
    if any(refs[:shown]):
        parts.append(
            "A reference answer is given; compare the assistant's answer with it and treat a different final result "
            "as a serious error."
        )
    points = question_item.get("points") or []
    if points:
        parts.append("A good answer must contain or respect these points:\n" + "\n".join(f"- {p}" for p in points))
    guidelines = {k: v for k, v in (question_item.get("guidelines") or {}).items() if k in rubric.names}
    if guidelines:
        parts.append("Scoring guidelines for this question:\n"
                     + "\n".join(f"- {k}: {v}" for k, v in guidelines.items()))
    parts.append(
        "Begin with a brief explanation (under 150 words) and be as objective as possible. "
        + _format_instruction(rubric)
    )

    convo = []
    for t in range(shown):
        label = f" {t + 1}" if len(turns) > 1 else ""
        convo.append(f"### User question{label}\n{turns[t]}")
        if t < len(refs) and refs[t]:
            convo.append(f"### Reference answer{label}\n{refs[t]}")
        convo.append(f"### Assistant answer{label}\n{answers[t]}")
    parts.append("<conversation>\n" + "\n\n".join(convo) + "\n</conversation>")
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def _reminder(rubric: Rubric, bad_reply: str) -> Messages:
    """The follow-up after an unparseable reply: a deterministic judge would just repeat itself if re-asked as is."""
    if rubric.format == "rating":
        fmt = 'the rating in the form "[[N]]"'
    else:
        fmt = "one JSON object with an in-range score for every criterion (" + ", ".join(rubric.names) + ")"
    return [
        {"role": "assistant", "content": bad_reply[:4000]},
        {"role": "user", "content": f"Your reply could not be read. Reply again and end it with {fmt}."},
    ]


# ------------------------------------------------------------------------------------------------------------ parsing

_NUM = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)"
_RATING = re.compile(r"\[\[\s*(" + _NUM + r")\s*(?:/\s*(" + _NUM + r")\s*)?\]\]")


def _line_pattern(name: str) -> re.Pattern:
    # "accuracy: 8", "- **Accuracy**: 8/10", "accuracy = 8 (correct)" - one criterion per line.
    return re.compile(
        r"^[\s>*_#`\"'-]*" + re.escape(name).replace(r"\ ", r"\s+") + r"[\s*_`\"']*[:=][\s*_`\"']*(" + _NUM + r")"
        r"(?:\s*/\s*(" + _NUM + r"))?(?!\.?\d)",
        re.IGNORECASE | re.MULTILINE,
    )


def _value(raw: str, denom: str | None, rubric: Rubric) -> float | None:
    v = float(raw)
    if denom is not None and float(denom) != rubric.scale_max:
        return None  # "7/5" on a 1-10 scale is not a rating we can read
    return v


def _json_candidates(text: str) -> list[dict]:
    dec = json.JSONDecoder()
    out = []
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _from_json(rubric: Rubric, text: str) -> dict[str, Any] | None:
    wanted = {n.lower(): n for n in rubric.names}
    for obj in reversed(_json_candidates(text)):  # the last complete object is the verdict
        found = {}
        for k, v in obj.items():
            key = str(k).strip().lower()
            if key in wanted:
                found[wanted[key]] = v
        if len(found) == len(wanted):
            return found
    return None


def _from_lines(rubric: Rubric, text: str) -> dict[str, Any] | None:
    found = {}
    for name in rubric.names:
        matches = list(_line_pattern(name).finditer(text))
        if not matches:
            return None
        m = matches[-1]
        v = _value(m.group(1), m.group(2), rubric)
        if v is None:
            return None
        found[name] = v
    return found


def parse_judgment(rubric: Rubric, text: str | None) -> dict[str, float] | None:
    """The judge's ratings as ``{criterion: value}`` on the rubric's scale, or None if they cannot be read.

    Accepted forms, tried in this order (the last occurrence wins within a form, since judges restate the format
    before giving their verdict):

    1. for a single-criterion rubric, MT-Bench's ``[[N]]`` (also ``[[ 8.5 ]]`` and ``[[8/10]]``);
    2. a JSON object anywhere in the text holding every criterion (keys matched case- and whitespace-insensitively,
       values numbers or numeric strings, extra keys ignored): ``{"clarity": 8, "accuracy": 9, ...}``;
    3. one line per criterion, ``name: N`` or ``name = N`` (case-insensitive, markdown bullets/bold allowed, an
       optional ``/scale_max`` and trailing comment): ``- **Accuracy**: 8/10 (correct)``.

    Strict on the rest: a missing criterion, a non-number, a value outside [scale_min, scale_max] or a fraction over
    anything but scale_max makes the whole judgment None.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    found = None
    if len(rubric.criteria) == 1 and (matches := list(_RATING.finditer(text))):
        v = _value(matches[-1].group(1), matches[-1].group(2), rubric)
        if v is None:
            return None
        found = {rubric.names[0]: v}
    if found is None:
        found = _from_json(rubric, text)
    if found is None:
        found = _from_lines(rubric, text)
    if found is None:
        return None
    out = {}
    for name, v in found.items():
        if isinstance(v, str) and re.fullmatch(r"\s*" + _NUM + r"\s*", v):
            v = float(v)
        if not is_number(v) or not math.isfinite(v) or not (rubric.scale_min <= v <= rubric.scale_max):
            return None
        out[name] = float(v)
    return out


# ----------------------------------------------------------------------------------------------------------- backends


class CallableJudge:
    """A judge from any function mapping a batch of message lists to reply texts (e.g. a local model's chat)."""

    def __init__(self, fn: Callable[[list[Messages]], Sequence[str]]):
        if not callable(fn):
            raise TypeError(f"CallableJudge: expected a callable, got {fn!r}")
        self.fn = fn

    def __call__(self, batch: list[Messages]) -> list[str]:
        out = list(self.fn(batch))
        if len(out) != len(batch):
            raise JudgeError(f"judge function returned {len(out)} replies for {len(batch)} requests")
        for i, t in enumerate(out):
            if not isinstance(t, str):
                raise JudgeError(f"judge function reply #{i} is {type(t).__name__}, expected str")
        return out


# ---------------------------------------------------------------------------------------------------------- questions


QUESTION_SET_FORMAT = "sftjax-questions/1"
HEADER_KEYS = {"format", "name", "license", "description"}
QUESTION_KEYS = {"id", "domain", "category", "turns", "reference", "points", "weights", "guidelines"}
DOMAINS = ("general", "in_domain")


def _check_question_set_item(rec: dict, where: str, criteria: tuple[str, ...]) -> None:
    """The full question-set format (a file whose first line is the ``sftjax-questions/1`` header): every field
    present and well-formed, every criterion known, every applying criterion (weight > 0) with a guideline."""
    for key in sorted(set(rec) - QUESTION_KEYS):
        raise ConfigError(f"{where}: unknown field '{key}' (expected {sorted(QUESTION_KEYS)})")
    for key in ("id", "domain", "category", "turns", "weights", "guidelines"):
        if key not in rec:
            raise ConfigError(f"{where}: missing field '{key}'")
    if "reference" not in rec and "points" not in rec:
        raise ConfigError(f"{where}: missing field 'reference' or 'points' (a question needs a reference answer or "
                          "the points a good answer contains)")
    if rec["domain"] not in DOMAINS:
        raise ConfigError(f"{where}: field 'domain' must be one of {list(DOMAINS)}, got {rec['domain']!r}")
    points = rec.get("points", [])
    if not isinstance(points, list) or not all(isinstance(p, str) and p.strip() for p in points):
        raise ConfigError(f"{where}: field 'points' must be a list of non-empty strings, got {points!r:.200}")
    weights, guidelines = rec["weights"], rec["guidelines"]
    if not isinstance(guidelines, dict):
        raise ConfigError(f"{where}: field 'guidelines' must be an object of criterion -> text")
    for key in (*weights, *guidelines):
        if key not in criteria:
            raise ConfigError(f"{where}: field '{'weights' if key in weights else 'guidelines'}.{key}': unknown "
                              f"criterion (expected one of {list(criteria)})")
    for key, text in guidelines.items():
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: field 'guidelines.{key}' must be a non-empty string")
    for key, w in weights.items():
        if is_weight(w) and w > 0 and key not in guidelines:
            raise ConfigError(f"{where}: field 'guidelines.{key}' is missing (criterion '{key}' has weight {w})")


def load_questions(path: str | Path, rubric: Rubric | None = None) -> list[dict[str, Any]]:
    """Questions from JSON Lines, validated with errors naming file:line and the field.

    A question set (README "Question sets") starts with the header line ``{"format": "sftjax-questions/1", "name",
    "license", "description"}``; then every question has ``id``, ``domain`` (general | in_domain), ``category``,
    ``turns``, ``reference`` and/or ``points``, ``weights`` (criterion -> number >= 0; 0: the criterion does not
    apply) and ``guidelines`` (criterion -> text, for every criterion that applies). A file without the header is
    read leniently: ``{"id"?, "category"?, "turns", "reference"?, "weights"?}`` (a missing id becomes
    ``file:line``). With ``rubric``, weight names are checked against its criteria here rather than when scoring.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: question file not found")
    questions = []
    ids: dict[Any, int] = {}
    strict = False
    criteria = (rubric if rubric is not None and len(rubric.criteria) > 1 else PRESETS["eight_category"]).weighted
    for lineno, rec in read_jsonl(path):
        where = f"{path}:{lineno}"
        if not questions and not ids and "format" in rec:
            if rec["format"] != QUESTION_SET_FORMAT:
                raise ConfigError(f"{where}: field 'format': expected {QUESTION_SET_FORMAT!r}, got {rec['format']!r}")
            for key in sorted(set(rec) - HEADER_KEYS):
                raise ConfigError(f"{where}: unknown header field '{key}' (expected {sorted(HEADER_KEYS)})")
            strict = True
            continue
        if strict:
            _check_question_set_item(rec, where, criteria)
        qid = rec.get("id", f"{path.name}:{lineno}")
        if not isinstance(qid, (str, int)) or isinstance(qid, bool):
            raise ConfigError(f"{where}: 'id' must be a string or integer, got {qid!r}")
        if qid in ids:
            raise ConfigError(f"{where}: duplicate id {qid!r} (first on line {ids[qid]})")
        ids[qid] = lineno
        turns = rec.get("turns")
        if (
            not isinstance(turns, list)
            or not 1 <= len(turns) <= MAX_TURNS
            or not all(isinstance(t, str) and t.strip() for t in turns)
        ):
            raise ConfigError(f"{where}: 'turns' must be a list of 1 to {MAX_TURNS} non-empty strings, got {turns!r}")
        if "category" in rec and not isinstance(rec["category"], str):
            raise ConfigError(f"{where}: 'category' must be a string, got {rec['category']!r}")
        ref = rec.get("reference")
        if ref is not None and (
            not isinstance(ref, list) or len(ref) != len(turns) or not all(isinstance(r, str) for r in ref)
        ):
            raise ConfigError(
                f"{where}: 'reference' must be a list of {len(turns)} strings (one per turn), got {ref!r}"
            )
        weights = rec.get("weights")
        if weights is not None:
            if not isinstance(weights, dict) or not weights:
                raise ConfigError(f"{where}: 'weights' must be a non-empty object of criterion -> weight")
            for k, w in weights.items():
                if not is_weight(w):
                    raise ConfigError(f"{where}: 'weights.{k}' must be a finite number >= 0, got {w!r}")
        item = {**rec, "id": qid}
        if rubric is not None:
            try:
                rubric.weights_for(item)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        questions.append(item)
    if not questions:
        raise ConfigError(f"{path}: no questions")
    return questions


# ------------------------------------------------------------------------------------------------------------ scoring


def _summary(rubric: Rubric, rows: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [r["score"] for r in rows if r["score"] is not None]
    mean = sum(judged) / len(judged) if judged else None
    return {
        "score": mean,
        "raw_mean": None if mean is None else rubric.scale_min + mean * (rubric.scale_max - rubric.scale_min),
        "n": len(rows),
        "n_judged": len(judged),
        "n_unparseable": len(rows) - len(judged),
    }


def _per_criterion(rubric: Rubric, rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Normalized mean of each criterion over the judged rows it applies to (weight > 0 for the question; the
    unweighted ``overall`` applies everywhere): a criterion a question turned off says nothing about it."""
    out = {}
    for n in rubric.names:
        vals = [rubric.normalize(r["criteria"][n]) for r in rows
                if r["criteria"] is not None and (n == rubric.overall or r["weights"].get(n, 0) > 0)]
        out[n] = sum(vals) / len(vals) if vals else None
    return out


def _group(rubric: Rubric, rows: list[dict[str, Any]], key: str) -> dict[str, dict] | None:
    values = sorted({r[key] for r in rows if r[key] is not None})
    if not values:
        return None
    out = {}
    for v in values:
        mine = [r for r in rows if r[key] == v]
        out[v] = {**_summary(rubric, mine), "per_criterion": _per_criterion(rubric, mine)}
    return out


def score(
    rubric: Rubric,
    questions: Sequence[Mapping[str, Any]],
    answers: Sequence[Sequence[str]],
    judge: Callable[[list[Messages]], Sequence[str]],
    max_attempts: int = 3,
) -> dict[str, Any]:
    """Judge every answer and aggregate; ``answers[i]`` holds the model's answer for each turn of ``questions[i]``.

    Judgments are sent to ``judge`` as one batch per round; unparseable ones are re-asked in the next round, up to
    ``max_attempts`` requests each. Means are over parsed judgments only (``n_unparseable`` counts the rest). Keys:
    ``score`` (mean weighted normalized score in [0, 1]), ``raw_mean`` (the same on the rubric's scale, e.g. the
    MT-Bench score), ``overall`` (mean normalized ``overall`` rating, or None), ``per_criterion`` (normalized means),
    ``per_turn`` (per-turn summaries when the rubric judges per turn, else None), ``per_category`` and
    ``per_domain`` (summaries with their own ``per_criterion``, when questions have categories / domains, else
    None), ``n``/``n_judged``/``n_unparseable`` (judgments), ``n_questions``, ``attempts``
    (judge requests in total) and ``results`` (one per judgment).
    """
    if len(questions) != len(answers):
        raise ValueError(f"score: {len(questions)} questions but {len(answers)} answer lists")
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"score: max_attempts must be an integer >= 1, got {max_attempts!r}")
    jobs = []
    for q, ans in zip(questions, answers):
        if isinstance(ans, str) or len(ans) != len(q["turns"]):
            raise ValueError(
                f"score: question {q.get('id')!r} has {len(q['turns'])} turns; expected a list of as many answers, "
                f"got {ans!r:.200}"
            )
        weights = rubric.weights_for(q)
        for turn in range(1, len(q["turns"]) + 1) if rubric.per_turn else [None]:
            jobs.append(
                {"q": q, "turn": turn, "weights": weights, "messages": judge_messages(rubric, q, ans, turn),
                 "attempts": 0, "parsed": None, "text": ""}
            )

    pending = list(range(len(jobs)))
    while pending:
        batch = [jobs[j]["messages"] for j in pending]
        replies = list(judge(batch))
        if len(replies) != len(batch):
            raise JudgeError(f"judge returned {len(replies)} replies for {len(batch)} requests")
        still = []
        for j, text in zip(pending, replies):
            job = jobs[j]
            job["attempts"] += 1
            job["text"] = text if isinstance(text, str) else ""
            job["parsed"] = parse_judgment(rubric, job["text"])
            if job["parsed"] is None and job["attempts"] < max_attempts:
                job["messages"] = job["messages"] + _reminder(rubric, job["text"])
                still.append(j)
        pending = still

    rows = []
    for job in jobs:
        parsed, q = job["parsed"], job["q"]
        norm = None if parsed is None else {k: rubric.normalize(v) for k, v in parsed.items()}
        text = job["text"]
        rows.append({
            "id": q.get("id"),
            "domain": q.get("domain"),
            "category": q.get("category"),
            "turn": job["turn"],
            "criteria": parsed,
            "score": None if norm is None else sum(w * norm[k] for k, w in job["weights"].items()),
            "overall": None if norm is None or rubric.overall is None else norm[rubric.overall],
            "weights": job["weights"],
            "attempts": job["attempts"],
            "judgment": text if len(text) <= JUDGMENT_CHARS else text[:JUDGMENT_CHARS] + "...",
        })

    per_criterion = _per_criterion(rubric, rows)
    out = _summary(rubric, rows)
    out.update({
        "overall": per_criterion[rubric.overall] if rubric.overall else None,
        "per_criterion": per_criterion,
        "per_turn": None,
        "per_category": None,
        "n_questions": len(questions),
        "attempts": sum(r["attempts"] for r in rows),
        "results": rows,
    })
    if rubric.per_turn:
        turns = sorted({r["turn"] for r in rows})
        out["per_turn"] = {str(t): _summary(rubric, [r for r in rows if r["turn"] == t]) for t in turns}
    out["per_category"] = _group(rubric, rows, "category")
    out["per_domain"] = _group(rubric, rows, "domain")
    return out
