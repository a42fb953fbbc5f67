"""Factories for the transform sets HR-Dv2 averages over."""

from __future__ import annotations

import itertools
from typing import Iterable, Sequence

from hrdv2.errors import ConfigError
from hrdv2.transforms.base import Compose, Flip, Identity, PublishedCompose, Rot90, Shift, Transform

PATTERNS = ("neumann", "moore")
FLIP_SETS = ("hrdv2", "published")
COMPOSITIONS = ("exact", "published")


def shifts(distances: Sequence[int] = (1, 2), pattern: str = "moore", include_identity: bool = True) -> list[Transform]:
    """Pixel shifts at each distance d: 4 neighbours ("neumann": up/down/left/right) or 8 ("moore":
    plus diagonals). Moore with distances (1, 2) plus identity gives the paper's 17 transforms."""
    if pattern not in PATTERNS:
        raise ConfigError(f"shift pattern {pattern!r} is unknown; use one of {PATTERNS}.")
    out: list[Transform] = [Identity()] if include_identity else []
    for d in distances:
        d = int(d)
        if d <= 0:
            raise ConfigError(f"shift distance {d} must be a positive number of pixels.")
        if pattern == "neumann":
            offsets = [(-d, 0), (d, 0), (0, -d), (0, d)]
        else:
            offsets = [(dy, dx) for dy in (-d, 0, d) for dx in (-d, 0, d) if (dy, dx) != (0, 0)]
        out.extend(Shift(dy, dx) for dy, dx in offsets)
    return out


def flips(kind: str = "hrdv2", include_identity: bool = True) -> list[Transform]:
    """``"hrdv2"``: identity, left-right, up-down and both (= rotation by 180 degrees).
    ``"published"``: the published HR-Dv2 code's set [identity, left-right, identity, up-down]
    (``get_flip_transforms``), the identity counted twice, so it carries half the weight."""
    if kind not in FLIP_SETS:
        raise ConfigError(f"flip set {kind!r} is unknown; use one of {list(FLIP_SETS)}.")
    if kind == "published":
        return [Identity(), Flip("h"), Identity(), Flip("v")] if include_identity else [Flip("h"), Flip("v")]
    out: list[Transform] = [Identity()] if include_identity else []
    out += [Flip("h"), Flip("v"), Compose((Flip("h"), Flip("v")))]
    return out


def rotations(include_identity: bool = True) -> list[Transform]:
    """Quarter turns by 90, 180 and 270 degrees (and the identity)."""
    out: list[Transform] = [Identity()] if include_identity else []
    out += [Rot90(k) for k in (1, 2, 3)]
    return out


def _flatten(t: Transform) -> tuple:
    if isinstance(t, Identity):
        return ()
    if isinstance(t, (Compose, PublishedCompose)):
        return tuple(itertools.chain.from_iterable(_flatten(s) for s in t.transforms))
    return (t,)


def product(*sets: Iterable[Transform], composition: str = "exact") -> list[Transform]:
    """Every combination, one transform from each set (applied in the order given).

    ``composition="published"`` maps combinations back the way the published code does
    (:class:`~hrdv2.transforms.base.PublishedCompose`), to reproduce its results."""
    if composition not in COMPOSITIONS:
        raise ConfigError(f"composition {composition!r} is unknown; use one of {list(COMPOSITIONS)}.")
    joined = Compose if composition == "exact" else PublishedCompose
    out: list[Transform] = []
    for combo in itertools.product(*[list(s) for s in sets]):
        parts = tuple(itertools.chain.from_iterable(_flatten(t) for t in combo))
        out.append(Identity() if not parts else parts[0] if len(parts) == 1 else joined(parts))
    return out


def validate_shifts(transforms: Sequence[Transform], patch_size: int) -> None:
    """Shifts of P/2 or more repeat information from the neighbouring patch: refuse them."""
    for t in transforms:
        for part in _flatten(t):
            if isinstance(part, Shift) and max(abs(part.dy), abs(part.dx)) * 2 >= patch_size:
                raise ConfigError(
                    f"shift {part.name} is {max(abs(part.dy), abs(part.dx))} px, but shifts must be below half the "
                    f"patch size ({patch_size} px -> at most {(patch_size - 1) // 2} px). Use smaller --shifts."
                )


def default_transforms() -> list[Transform]:
    """The paper's default: identity plus Moore shifts by 1 and 2 px (17 transforms)."""
    return shifts((1, 2), "moore")
