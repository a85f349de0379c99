"""Judge rubrics (criteria, scale, reply format) and the two presets: the fixed definitions judge scores rest on."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from sftjax.config import ConfigError
from sftjax.config.base import is_number

FORMATS = ("rating", "json")


@dataclass(frozen=True)
class Criterion:
    """One rated aspect of a response; ``weight`` is its default share of the score (renormalized over criteria)."""

    name: str
    weight: float = 1.0
    description: str = ""


@dataclass(frozen=True)
class Rubric:
    """What the judge rates and how the ratings are combined.

    ``per_turn``: judge every turn separately (later turns see the earlier ones as context) instead of the whole
    conversation once. ``format``: ``"rating"`` asks for MT-Bench's ``[[N]]`` (one criterion only), ``"json"`` for a
    JSON object of every criterion. ``overall``: the name of a criterion that is rated and reported but not part of
    the weighted mean. ``instructions``: extra text for the judge, placed before the conversation.
    """

    name: str
    criteria: tuple[Criterion, ...]
    scale_min: float = 1
    scale_max: float = 10
    per_turn: bool = True
    format: str = "json"
    overall: str | None = None
    instructions: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "criteria", tuple(self.criteria))
        self.validate()

    def validate(self) -> None:
        """Reject a rubric whose scores could not be normalized or combined; errors name the rubric key."""
        _check(isinstance(self.name, str) and self.name.strip() != "", "name", "a non-empty string", self.name)
        _check(len(self.criteria) > 0, "criteria", "at least one criterion", list(self.criteria))
        seen: set[str] = set()
        for i, c in enumerate(self.criteria):
            _check(isinstance(c, Criterion), f"criteria[{i}]", "a Criterion", c)
            _check(
                isinstance(c.name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ -]*", c.name) is not None,
                f"criteria[{i}].name",
                "a name of letters, digits, '_', '-' or spaces, starting with a letter or '_'",
                c.name,
            )
            _check(c.name.lower() not in seen, f"criteria[{i}].name", "a name unique (case-insensitively)", c.name)
            seen.add(c.name.lower())
            _check(is_weight(c.weight), f"criteria[{i}].weight", "a finite number >= 0", c.weight)
            _check(isinstance(c.description, str), f"criteria[{i}].description", "a string", c.description)
        for key in ("scale_min", "scale_max"):
            v = getattr(self, key)
            _check(is_number(v) and math.isfinite(v), key, "a finite number", v)
        _check(self.scale_min < self.scale_max, "scale_min", f"a number < scale_max ({self.scale_max})", self.scale_min)
        _check(isinstance(self.per_turn, bool), "per_turn", "true or false", self.per_turn)
        _check(self.format in FORMATS, "format", f"one of {list(FORMATS)}", self.format)
        if self.format == "rating":
            _check(len(self.criteria) == 1, "format", "'json' for a rubric with several criteria", self.format)
        if self.overall is not None:
            _check(self.overall in self.names, "overall", f"one of the criteria {list(self.names)}", self.overall)
        _check(isinstance(self.instructions, str), "instructions", "a string", self.instructions)
        weighted = self.weighted
        _check(len(weighted) > 0, "criteria", "at least one criterion besides 'overall'", list(self.names))
        _check(
            sum(c.weight for c in self.criteria if c.name in weighted) > 0,
            "criteria[].weight",
            "at least one weight > 0 among the weighted criteria",
            {c.name: c.weight for c in self.criteria if c.name in weighted},
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.criteria)

    @property
    def weighted(self) -> tuple[str, ...]:
        """The criteria that make up the score (all but ``overall``)."""
        return tuple(n for n in self.names if n != self.overall)

    def normalize(self, value: float) -> float:
        """A rating on the rubric's scale mapped to [0, 1]."""
        return (value - self.scale_min) / (self.scale_max - self.scale_min)

    def weights_for(self, item: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Weights summing to 1 over :attr:`weighted`, with the question's ``"weights"`` overriding the defaults.

        A rubric with a single weighted criterion ignores ``"weights"`` (after renormalization it always gets 1), so
        one question file serves both presets.
        """
        weights = {c.name: float(c.weight) for c in self.criteria if c.name in self.weighted}
        overrides = (item or {}).get("weights")
        if overrides and len(weights) > 1:
            where = f"question {(item or {}).get('id')!r}"
            if not isinstance(overrides, Mapping):
                raise ConfigError(f"{where}: 'weights' must be an object of criterion -> weight, got {overrides!r}")
            for key, w in overrides.items():
                if key not in weights:
                    raise ConfigError(
                        f"{where}: 'weights.{key}' is not a weighted criterion of rubric '{self.name}' "
                        f"(expected one of {list(weights)})"
                    )
                if not is_weight(w):
                    raise ConfigError(f"{where}: 'weights.{key}' must be a finite number >= 0, got {w!r}")
                weights[key] = float(w)
        total = sum(weights.values())
        if total <= 0:
            raise ConfigError(f"question {(item or {}).get('id')!r}: 'weights' leave every criterion at weight 0")
        return {k: w / total for k, w in weights.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Rubric":
        """A custom rubric from plain data (e.g. YAML/JSON); errors name the offending key.

        ``{"name", "criteria": [{"name", "weight"?: 1.0, "description"?: ""} | "name", ...], "scale_min"?: 1,
        "scale_max"?: 10, "per_turn"?: true, "format"?: "json", "overall"?: null, "instructions"?: ""}``.
        """
        _check(isinstance(d, Mapping), "<rubric>", "a mapping", d)
        allowed = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in allowed:
                raise ConfigError(f"rubric key '{key}': unknown key, expected one of {sorted(allowed)}")
        _check("name" in d, "name", "a rubric name", None)
        raw = d.get("criteria")
        _check(isinstance(raw, (list, tuple)) and len(raw) > 0, "criteria", "a non-empty list of criteria", raw)
        criteria = []
        for i, c in enumerate(raw):
            if isinstance(c, str):
                c = {"name": c}
            _check(isinstance(c, Mapping), f"criteria[{i}]", "a criterion name or mapping", c)
            for key in c:
                if key not in ("name", "weight", "description"):
                    raise ConfigError(
                        f"rubric key 'criteria[{i}].{key}': unknown key, "
                        "expected one of ['description', 'name', 'weight']"
                    )
            _check("name" in c, f"criteria[{i}].name", "a criterion name", None)
            criteria.append(Criterion(c["name"], c.get("weight", 1.0), c.get("description", "")))
        return cls(**{**{k: v for k, v in d.items() if k != "criteria"}, "criteria": tuple(criteria)})


def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"rubric key '{key}': expected {expected}, got {got!r}")



def is_weight(v: Any) -> bool:
    return is_number(v) and math.isfinite(v) and v >= 0


_EIGHT = (
    ("clarity", "Is the response easy to follow: well organized, unambiguous, plainly worded?"),
    ("accuracy", "Are the facts, reasoning, calculations and code correct, with nothing made up?"),
    ("completeness", "Does it address every part of the request, including its constraints?"),
    ("conciseness", "Is it free of padding, repetition and digressions, without leaving out what is needed?"),
    ("safety", "Does it avoid harmful or unethical content and handle risky requests responsibly, "
               "without refusing harmless ones?"),
    ("specificity", "Is it concrete and tailored to this question (examples, numbers, steps) rather than generic?"),
    ("consideration", "Does it take the user's situation, intent, pitfalls and alternatives into account?"),
    ("politeness", "Is the tone respectful, courteous and suited to the user?"),
)

PRESETS: dict[str, Rubric] = {
    "mt_bench": Rubric(
        name="mt_bench",
        criteria=(Criterion("rating", 1.0, "helpfulness, relevance, accuracy, depth, creativity and level of detail"),),
        per_turn=True,
        format="rating",
    ),
    "eight_category": Rubric(
        name="eight_category",
        criteria=tuple(Criterion(n, 1.0, d) for n, d in _EIGHT)
        + (Criterion("overall", 0.0, "Your overall judgment of the response's quality."),),
        per_turn=False,
        format="json",
        overall="overall",
    ),
}


def rubric(name: str) -> Rubric:
    """A preset rubric by name (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown judge rubric {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name]
