"""Which class each cell's map explains, and which maps a condition comparison may set side by side.

A class-activation map answers "where is the evidence for class *t*?". For a two-class
softmax model the map for one class is close to the complement of the map for the other,
so comparing vpa cells' vpa-maps with ctrl cells' ctrl-maps can manufacture a rim/centre
difference from the change of target alone. The target policy makes the choice explicit:

``contrast`` (default)
    every compared cell is explained for the same class, the non-reference condition's;
    with more conditions, each non-reference condition ``C`` and the reference are explained
    for ``C`` (reference cells get one map per comparison). A difference between conditions
    is then a difference between cells, never between targets.
``own``
    each cell for its own condition (the study's policy, usually with correct cells only):
    the two sides of a comparison differ in cells *and* target; the target-swap control
    (:mod:`epikit.analysis.target_swap`) measures how much of a difference the target alone makes.
``predicted``
    each cell for its predicted class (mixed targets on both sides).
a class name
    every cell for that class.

:func:`plan_targets` expands the selected cells into (cell, target) pairs for the explain
stage; :func:`side_targets` says which target each side of a comparison uses, so the
biomarkers stage compares only maps that belong together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from epikit.errors import ConfigError, DataError

TARGET_POLICIES: tuple[str, ...] = ("contrast", "own", "predicted")
#: Policies whose maps pair each condition with the reference condition chosen at explain time.
PAIRED_POLICIES: tuple[str, ...] = ("contrast", "own")


def check_target(target: str, classes: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless ``target`` is a policy or one of ``classes``."""
    if target not in TARGET_POLICIES and target not in list(classes):
        raise ConfigError(f"target {target!r} is neither a policy ({', '.join(TARGET_POLICIES)}) nor a class; "
                          f"classes: {', '.join(map(str, classes))}")


def plan_targets(conditions: np.ndarray, predicted: np.ndarray | None, target: str, classes: Sequence[str],
                 reference: str) -> tuple[np.ndarray, np.ndarray]:
    """(cell, target) pairs: positions into the selected cells (a cell may repeat) and class indices.

    ``conditions`` (and ``predicted``, needed for ``target="predicted"``) are per selected
    cell. Under ``contrast`` a reference cell appears once per non-reference condition;
    every other policy gives each cell one target. Pairs are ordered by comparison, then cell.
    """
    classes = [str(c) for c in classes]
    check_target(target, classes)
    conditions = np.asarray(conditions).astype(str)
    positions = np.arange(len(conditions))
    if target == "contrast":
        if reference not in classes:
            raise DataError(f"reference condition {reference!r} is not a class of the model ({', '.join(classes)})")
        parts = [(positions[(conditions == other) | (conditions == reference)], classes.index(other))
                 for other in classes if other != reference]
        chosen = np.concatenate([p for p, _ in parts]) if parts else positions[:0]
        return chosen, np.concatenate([np.full(len(p), t, dtype=np.int64) for p, t in parts]) if parts \
            else np.zeros(0, np.int64)
    if target == "own":
        labels = conditions
    elif target == "predicted":
        if predicted is None:
            raise DataError("target 'predicted' needs the cells' predictions; train a classifier first")
        labels = np.asarray(predicted).astype(str)
    else:
        labels = np.full(len(conditions), target)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(f"class(es) {', '.join(unknown)} to explain are not classes of the model "
                        f"({', '.join(classes)}); re-run training")
    return positions, np.array([classes.index(label) for label in labels], dtype=np.int64)


def check_maps_reference(policy: str, maps_reference: str | None, reference: str, where: str) -> None:
    """Raise :class:`ConfigError` when maps that pair conditions with ``maps_reference`` are compared
    against another ``reference`` (their comparisons would find no maps); ``where``: the maps' path."""
    if policy in PAIRED_POLICIES and maps_reference and maps_reference != reference:
        raise ConfigError(f"{where} was explained against reference {maps_reference!r} (target {policy!r}) but "
                          f"biomarkers compare with {reference!r}; re-run explain with --reference {reference} "
                          "or drop biomarkers.reference")


def side_targets(target: str, condition: str, reference: str) -> tuple[str | None, str | None]:
    """The class explained on the condition's side and on the reference's side of a comparison.

    None means "whatever each cell was explained for" (``predicted``: mixed targets).
    """
    if target == "contrast":
        return condition, condition
    if target == "own":
        return condition, reference
    if target == "predicted":
        return None, None
    return target, target


def swapped(name: str, condition: str, reference: str) -> str:
    """The other class of a comparison: the condition's for the reference's and vice versa."""
    return {condition: reference, reference: condition}.get(name, name)


def describe_targets(target: str, condition: str, reference: str) -> str:
    """What a comparison's maps show, for a finding's sentence: ``evidence for vpa`` and the like."""
    ours, theirs = side_targets(target, condition, reference)
    if ours is None:
        return "evidence for each nucleus's predicted class"
    if ours == theirs:
        return f"evidence for {ours}"
    return f"evidence for each nucleus's own condition ({ours} in {condition}, {theirs} in {reference} nuclei)"
