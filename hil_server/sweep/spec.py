"""Sweep files (``scenarios/sweeps/README.md``): read and checked with the scenario format's YAML reader, so
every problem comes back as ``file:line: key.path: message`` before any work starts.

A sweep names scenarios and the axes crossed over them: profiles, seeds and overrides of scenario keys. Each
override value (and each profile) is applied to each scenario and the result loaded as a scenario, so a value
the scenario format refuses is reported at the sweep file's line that gives it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..model.profiles import NAME_RE
from ..scenario import Issue, Scenario, ScenarioError, load_edited
from ..scenario._loader import MAX_SEED
from ..scenario._reader import Range, Reader, join, line_of, shown
from ..scenario._yaml import RefusedError, compose, read_limited

_TOP_KEYS = ("name", "description", "seed", "max_s", "scenarios", "profiles", "seeds", "overrides")
_OVERRIDE_KEYS = ("key", "values", "name")
_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")
_COLUMN_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_VALUE_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
MAX_TASKS = 1_000_000
MAX_SEEDS = 100_000
RESERVED_COLUMNS = frozenset(
    {"scenario", "profile", "seed", "time_s", "step", "cell", "spectrum_id", "freq_hz", "dropped", "flags"}
    | {"z_re_ohm", "z_im_ohm", "true_z_re_ohm", "true_z_im_ohm", "fault_id", "kind", "phase", "cells"}
    | {f"{p}{n}" for p in ("", "true_") for n in ("voltage_v", "current_a", "temp_c", "soc", "soh")}
    | {"severity"}
)
"""Columns of the dataset's files and its partition keys: an override's partition column must differ."""

KeyPath = tuple[str | int, ...]


class SweepError(ScenarioError):
    def __str__(self) -> str:
        return super().__str__().replace("in scenario", "in sweep", 1)


@dataclass(frozen=True)
class Value:
    """One value of an axis as written in the sweep file: YAML tag and text, and the line giving it."""

    tag: str
    text: str
    line: int
    python: str | int | float | bool

    def node(self, file: str) -> yaml.ScalarNode:
        mark = yaml.Mark(file, 0, self.line - 1, 0, "", 0)
        return yaml.ScalarNode(self.tag, self.text, start_mark=mark, end_mark=mark)

    @property
    def label(self) -> str:
        """The value as it appears in a partition path (``name=label``)."""
        return repr(self.python) if isinstance(self.python, float) else str(self.python)


@dataclass(frozen=True)
class Override:
    key: str
    path: KeyPath
    column: str
    """Partition column of the dataset."""
    values: tuple[Value, ...]
    line: int


@dataclass(frozen=True)
class Sweep:
    file: Path
    sha256: str
    name: str
    description: str
    seed: int
    max_s: float | None
    scenarios: tuple[Path, ...]
    profiles: tuple[Value, ...]
    """Empty: each scenario's own profile."""
    seeds: tuple[int, ...]
    overrides: tuple[Override, ...]

    @property
    def n_tasks(self) -> int:
        n = len(self.scenarios) * max(1, len(self.profiles)) * len(self.seeds)
        for o in self.overrides:
            n *= len(o.values)
        return n


def derived_seeds(sweep_seed: int, count: int) -> tuple[int, ...]:
    """The engine seeds of ``seeds: N``: independent streams fixed by the sweep seed and the seed's index."""
    return tuple(
        int(np.random.SeedSequence([sweep_seed, i]).generate_state(1, np.uint32)[0]) for i in range(count)
    )


def parse_key(text: str) -> KeyPath | None:
    """``timeline[2].drive_cycle.scale`` -> ("timeline", 2, "drive_cycle", "scale"); None if malformed."""
    out: list[str | int] = []
    for part in text.split("."):
        m = _KEY_PART.match(part)
        if m is None:
            return None
        out.append(m.group(1))
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return tuple(out)


def set_value(root: yaml.Node, path: KeyPath, value: yaml.Node) -> str | None:
    """Put ``value`` at ``path`` in a scenario's node tree, creating missing mappings on the way (an
    ambient or spread the scenario leaves at its default); the reason when the path does not fit."""
    node = root
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        where = ".".join(str(p) for p in path[:depth]) or "the top level"
        if isinstance(part, int):
            if not isinstance(node, yaml.SequenceNode) or not 0 <= part < len(node.value):
                size = len(node.value) if isinstance(node, yaml.SequenceNode) else 0
                return f"no item [{part}] at {where} (the scenario has {size})"
            if last:
                node.value[part] = value
                return None
            node = node.value[part]
            continue
        if not isinstance(node, yaml.MappingNode):
            return f"{where} is not a mapping, so it has no key {part!r}"
        for i, (k, v) in enumerate(node.value):
            if isinstance(k, yaml.ScalarNode) and k.value == part:
                if last:
                    node.value[i] = (k, value)
                    return None
                node = v
                break
        else:
            key = yaml.ScalarNode("tag:yaml.org,2002:str", part, value.start_mark, value.end_mark)
            if last:
                node.value.append((key, value))
                return None
            if isinstance(path[depth + 1], int):
                return f"the scenario has no list {part!r} at {where}"
            child = yaml.MappingNode("tag:yaml.org,2002:map", [], value.start_mark, value.end_mark)
            node.value.append((key, child))
            node = child
    return None


def load_with(
    scenario: Path, edits: list[tuple[KeyPath, yaml.Node]]
) -> tuple[Scenario | None, list[Issue], str | None]:
    """The scenario with the edits applied: (scenario, its issues, the first edit that did not fit)."""
    misfit: list[str] = []

    def edit(root: yaml.Node) -> None:
        for path, node in edits:
            reason = set_value(root, path, node)
            if reason is not None:
                misfit.append(reason)

    loaded, issues = load_edited(scenario, edit)
    return loaded, issues, misfit[0] if misfit else None


def load_sweep(path: Path) -> Sweep:
    """Read and check a sweep file, its scenarios and every axis value against every scenario."""
    file = str(path)
    try:
        data = read_limited(path)
        root, loader = compose(data)
    except RefusedError as exc:
        raise SweepError([Issue(file, exc.line, "", exc.message)]) from None
    except OSError as exc:
        raise SweepError([Issue(file, None, "", f"cannot read sweep: {exc.strerror or exc}")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        raise SweepError(
            [Issue(file, line, "", f"YAML syntax error: {exc.problem or exc.context}")]
        ) from None
    except yaml.YAMLError as exc:
        raise SweepError([Issue(file, None, "", f"YAML error: {exc}")]) from None
    if root is None:
        raise SweepError([Issue(file, None, "", "empty file: expected a mapping with name and scenarios")])
    r = Reader(file, loader)
    sweep = _read(r, root, path, data)
    if r.errors or sweep is None:
        raise SweepError(r.errors)
    _check_against_scenarios(r, root, sweep)
    if r.errors:
        raise SweepError(r.errors)
    return sweep


def _read(r: Reader, root: yaml.Node, path: Path, data: bytes) -> Sweep | None:
    import hashlib

    m = r.mapping(root, "", _TOP_KEYS, required=("name", "scenarios"))
    if m is None:
        return None
    name = r.string(m["name"], "name", what="a name") if "name" in m else None
    if name is not None and not NAME_RE.match(name):
        r.error(m["name"], "name", f"expected letters, digits, '_', '.', '-' (at most 64), got {name!r}")
    description = r.string(m["description"], "description") if "description" in m else ""
    seed = r.integer(m["seed"], "seed", Range(0, MAX_SEED)) if "seed" in m else 0
    max_s = r.number(m["max_s"], "max_s", Range(0, lo_open=True)) if "max_s" in m else None
    scenarios: list[Path] = []
    for p, item in r.sequence(m["scenarios"], "scenarios") if "scenarios" in m else ():
        ref = r.string(item, p, what="a scenario path relative to the sweep file")
        if ref is None:
            continue
        target = (path.resolve().parent / ref).resolve()
        if not target.is_file():
            r.error(item, p, f"scenario file not found: {target}")
        elif target in scenarios:
            r.error(item, p, f"scenario {ref!r} listed twice")
        else:
            scenarios.append(target)
    if "scenarios" in m and isinstance(m["scenarios"], yaml.SequenceNode) and not m["scenarios"].value:
        r.error(m["scenarios"], "scenarios", "expected at least one scenario")
    profiles = _values(r, m["profiles"], "profiles", name_like=True) if "profiles" in m else ()
    seeds = _seeds(r, m["seeds"], seed or 0) if "seeds" in m else (seed or 0,)
    overrides: list[Override] = []
    for p, item in r.sequence(m["overrides"], "overrides") if "overrides" in m else ():
        o = _override(r, item, p)
        if o is not None:
            if any(o.column == other.column for other in overrides):
                r.error(
                    item, join(p, "name"), f"partition column {o.column!r} already used by another override"
                )
            if any(o.path == other.path for other in overrides):
                r.error(item, join(p, "key"), f"key {o.key!r} overridden twice")
            overrides.append(o)
    if name is None or description is None or seed is None or seeds is None or profiles is None:
        return None
    if "max_s" in m and max_s is None:
        return None
    sweep = Sweep(
        file=path.resolve(),
        sha256=hashlib.sha256(data).hexdigest(),
        name=name,
        description=description,
        seed=seed,
        max_s=max_s,
        scenarios=tuple(scenarios),
        profiles=profiles,
        seeds=seeds,
        overrides=tuple(overrides),
    )
    if sweep.n_tasks > MAX_TASKS:
        r.error(root, "", f"the axes cross to {sweep.n_tasks} tasks (limit {MAX_TASKS})")
    return sweep


def _values(r: Reader, node: yaml.Node, path: str, name_like: bool = False) -> tuple[Value, ...] | None:
    out: list[Value] = []
    for p, item in r.sequence(node, path):
        value = r.scalar(item, p)
        if not isinstance(item, yaml.ScalarNode) or value is None or not isinstance(value, str | int | float):
            r.error(item, p, f"expected a number or a word, got {shown(item)}")
            continue
        if name_like and not (isinstance(value, str) and NAME_RE.match(value)):
            r.error(item, p, f"expected a profile name (letters, digits, '_', '.', '-'), got {shown(item)}")
            continue
        v = Value(item.tag, str(item.value), line_of(item) or 0, value)
        if not _VALUE_RE.match(v.label):
            r.error(
                item,
                p,
                f"values name partitions: letters, digits, '_', '.', '+', '-' only, got {shown(item)}",
            )
            continue
        if any(v.label == other.label for other in out):
            r.error(item, p, f"value {v.label} listed twice")
            continue
        out.append(v)
    if isinstance(node, yaml.SequenceNode) and not node.value:
        r.error(node, path, "expected at least one value")
        return None
    return tuple(out) if isinstance(node, yaml.SequenceNode) else None


def _seeds(r: Reader, node: yaml.Node, sweep_seed: int) -> tuple[int, ...] | None:
    if isinstance(node, yaml.ScalarNode):
        count = r.integer(node, "seeds", Range(1, MAX_SEEDS))
        return None if count is None else derived_seeds(sweep_seed, count)
    seeds: list[int] = []
    for p, item in r.sequence(node, "seeds"):
        s = r.integer(item, p, Range(0, MAX_SEED))
        if s is not None:
            if s in seeds:
                r.error(item, p, f"seed {s} listed twice")
            seeds.append(s)
    if isinstance(node, yaml.SequenceNode) and not node.value:
        r.error(node, "seeds", "expected a count or a list of at least one seed")
    return tuple(seeds) if seeds else None


def _override(r: Reader, node: yaml.Node, p: str) -> Override | None:
    m = r.mapping(node, p, _OVERRIDE_KEYS, required=("key", "values"))
    if m is None or "key" not in m or "values" not in m:
        return None
    key = r.string(m["key"], join(p, "key"), what="a scenario key such as cells.spread.soc_std")
    keypath = parse_key(key) if key is not None else None
    if key is not None and keypath is None:
        r.error(
            m["key"],
            join(p, "key"),
            f"expected a key path such as timeline[2].drive_cycle.scale, got {key!r}",
        )
    if keypath is not None and keypath[0] in ("name", "seed"):
        r.error(m["key"], join(p, "key"), f"{keypath[0]} is set by the sweep itself, not by an override")
        keypath = None
    if keypath == ("cells", "profile"):
        r.error(m["key"], join(p, "key"), "give profiles as the sweep's profiles axis, not as an override")
        keypath = None
    column = re.sub(r"[^a-z0-9]+", "_", (key or "").lower()).strip("_")
    if "name" in m:
        column = r.string(m["name"], join(p, "name"), what="a column name") or ""
    if column and not _COLUMN_RE.match(column):
        r.error(
            m.get("name", m["key"]), join(p, "name"), f"expected a column name (a-z, 0-9, _), got {column!r}"
        )
        return None
    if column in RESERVED_COLUMNS:
        r.error(
            m.get("name", m["key"]),
            join(p, "name"),
            f"partition column {column!r} clashes with a column of the dataset: give another with name:",
        )
        return None
    values = _values(r, m["values"], join(p, "values"))
    if key is None or keypath is None or values is None:
        return None
    return Override(key, keypath, column, values, line_of(node) or 0)


def _check_against_scenarios(r: Reader, root: yaml.Node, sweep: Sweep) -> None:
    """Each scenario alone, then each profile and override value applied to it: an error in the result is
    reported at the line of the sweep file that gives the value."""
    file = str(sweep.file)
    axes: list[tuple[str, KeyPath, tuple[Value, ...]]] = [
        (join("overrides", i), o.path, o.values) for i, o in enumerate(sweep.overrides)
    ]
    if sweep.profiles:
        axes.insert(0, ("profiles", ("cells", "profile"), sweep.profiles))
    names: dict[str, Path] = {}
    nodes = root.value if isinstance(root, yaml.MappingNode) else []
    listed = next((v for k, v in nodes if getattr(k, "value", None) == "scenarios"), None)
    for i, scenario in enumerate(sweep.scenarios):
        loaded, issues, _ = load_with(scenario, [])
        if issues or loaded is None:
            r.errors.extend(issues)
            continue
        if loaded.name in names:
            item = listed.value[i] if isinstance(listed, yaml.SequenceNode) else None
            r.error(
                item,
                join("scenarios", i),
                f"{scenario} and {names[loaded.name]} are both named {loaded.name!r}",
            )
        names[loaded.name] = scenario
        for where, keypath, values in axes:
            for j, value in enumerate(values):
                _, issues, misfit = load_with(scenario, [(keypath, value.node(file))])
                vpath = join(where, j) if where == "profiles" else join(join(where, "values"), j)
                shown_key = ".".join(str(k) for k in keypath)
                if misfit is not None:
                    r.errors.append(Issue(file, value.line, vpath, f"{scenario.name}: {misfit}"))
                for issue in issues:
                    detail = f"{issue.path}: {issue.message}" if issue.path else issue.message
                    r.errors.append(
                        Issue(
                            file,
                            value.line,
                            vpath,
                            f"{shown_key} = {value.label} in {scenario.name}: {detail}",
                        )
                    )


def check_profiles(sweep: Sweep, resolve: Callable[[str], object]) -> list[Issue]:
    """Profiles the model does not know (built-in or calibrated), at the lines naming them."""
    issues: list[Issue] = []
    for i, value in enumerate(sweep.profiles):
        try:
            resolve(str(value.python))
        except Exception as exc:
            issues.append(Issue(str(sweep.file), value.line, join("profiles", i), str(exc)))
    return issues
