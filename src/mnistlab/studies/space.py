"""Search spaces: which config keys a search varies and over what, read from TOML and checked against
the config before any trial runs.

A space file holds one table per dotted config key (the keys of ``--set``)::

    [params."optim.lr"]
    type = "float"          # float | int | categorical
    low = 0.01
    high = 0.5
    log = true              # sample on a log scale (float and int)

    [params."train.epochs"]
    type = "int"
    low = 30
    high = 200
    step = 10

    [params."model.hidden"]
    type = "categorical"
    choices = [[1024, 1024], [2048, 2048], [1024, 1024, 1024]]

Every bound and every choice is applied to the base config once up front, so a value the config
rejects (an unknown key, a wrong type, a value out of range) is reported before the search starts.
"""

from __future__ import annotations

import json
import math
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import checks, config
from ..errors import ConfigError

KINDS = ("float", "int", "categorical")
_FIELDS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


def choice_label(value: Any) -> Any:
    """How a categorical choice is stored in the study: scalars as themselves, lists as their JSON text
    (Optuna stores only scalars), e.g. ``[1024, 1024]`` -> ``"[1024, 1024]"``."""
    if isinstance(value, list):
        return json.dumps(value)
    return value


@dataclass(frozen=True)
class Param:
    """One searched config key."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this key's value; returns the config value."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return self.decode(trial.suggest_categorical(self.key, [choice_label(c) for c in self.choices]))

    def decode(self, stored: Any) -> Any:
        """The config value of a stored parameter (a categorical label back to its choice)."""
        if self.kind != "categorical":
            return stored
        for c in self.choices:
            if choice_label(c) == stored:
                return c
        raise ConfigError(f"search parameter '{self.key}' = {stored!r} is not one of the space's choices")


def _number(value: Any, name: str, want: type) -> Any:
    ok = isinstance(value, want) if want is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ConfigError(f"{name} must be {'an integer' if want is int else 'a number'}, got {value!r}")
    if not math.isfinite(value):  # TOML has inf and nan; no sampler can draw from them
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return value


def _param(key: str, spec: Any, base: config.Config, where: str) -> Param:
    name = f"{where}: '{key}'"
    if not isinstance(spec, dict):
        raise ConfigError(f"{name} must be a table with a type (float, int or categorical)")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{name} has type {kind!r}; choose from {', '.join(KINDS)}")
    unknown = set(spec) - _FIELDS[kind]
    if unknown:
        raise ConfigError(
            f"{name}: unknown field '{sorted(unknown)[0]}' for type {kind} (known: {', '.join(sorted(_FIELDS[kind]))})"
        )
    tp = config.key_type(key)  # rejects unknown keys by name
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{name} needs a non-empty list of choices")
        for i, c in enumerate(choices):
            try:
                checks.set_values(base, {key: c})
            except ConfigError as e:
                raise ConfigError(f"{name} choice {i + 1} ({c!r}) is rejected by the config: {e}") from None
        labels = [choice_label(c) for c in choices]
        if len(set(map(repr, labels))) != len(labels):
            raise ConfigError(f"{name} repeats a choice")
        return Param(key, kind, choices=tuple(choices))
    want = int if kind == "int" else float
    if tp is not want:
        shown = getattr(typing.get_origin(tp), "__name__", None) or getattr(tp, "__name__", str(tp))
        fit = {int: 'type = "int"', float: 'type = "float"'}.get(tp, 'type = "categorical"')
        raise ConfigError(f"{name} is a {shown} key; a {kind} range does not fit it (use {fit})")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{name} needs low and high")
    low, high = _number(spec["low"], f"{name} low", want), _number(spec["high"], f"{name} high", want)
    if not low < high:
        raise ConfigError(f"{name} has an empty range (low {low} must be below high {high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{name} log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{name} is on a log scale and needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, f"{name} step", want)
        if step <= 0 or log:
            raise ConfigError(f"{name} step must be > 0 and cannot be combined with log")
        steps = math.floor((high - low) / step + 1e-9)
        if steps < 1:
            raise ConfigError(f"{name} step {step} is larger than the range {low}..{high}")
        if not math.isclose(low + steps * step, high, rel_tol=1e-9, abs_tol=1e-12):
            # Optuna would lower high to the last step below it, with a warning
            raise ConfigError(
                f"{name}: high - low ({high} - {low}) must be a whole number of steps of {step} "
                f"(e.g. high = {low + steps * step:g})"
            )
    for bound in (low, high):
        try:
            checks.set_values(base, {key: float(bound) if tp is float else bound})
        except ConfigError as e:
            raise ConfigError(f"{name} bound {bound} is rejected by the config: {e}") from None
    if tp is float:
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    return Param(key, kind, low, high, log, step)


def load_space(path: str | Path, base: config.Config) -> list[Param]:
    """Read and check a space file against ``base``; every problem is one :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read space file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"space file {path} is not valid TOML: {e}") from None
    return space_from_dict(doc, base, str(path))


def space_from_dict(doc: dict[str, Any], base: config.Config, where: str = "space") -> list[Param]:
    extra = set(doc) - {"params"}
    if extra:
        raise ConfigError(
            f"{where}: unknown top-level key '{sorted(extra)[0]}' (a space holds [params.\"KEY\"] tables)"
        )
    params = doc.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f'{where} defines no parameters (add [params."optim.lr"] tables)')
    return [_param(key, spec, base, where) for key, spec in params.items()]


def space_to_dict(params: list[Param]) -> dict[str, Any]:
    """The space as plain data (recorded in the study directory to recognise the same study)."""
    out: dict[str, Any] = {}
    for p in params:
        if p.kind == "categorical":
            out[p.key] = {"type": p.kind, "choices": list(p.choices)}
        else:
            out[p.key] = {
                "type": p.kind,
                "low": p.low,
                "high": p.high,
                "log": p.log,
                **({"step": p.step} if p.step is not None else {}),
            }
    return out
