"""One record per input item, with a status and a reason: nothing is dropped silently.

Every reader and the conformer generator return exactly one ``MoleculeRecord`` per input item, in input order
(``record.index`` is the item's position). ``status`` is ``"ok"`` or ``"failed"``; a failed record says why in
``reason`` and carries no coordinates. What upstream accepts stays accepted, with a line in ``warnings``: elements
outside the dictionary become [UNK], molecules over 256 heavy atoms are cropped, a molecule of hydrogens only keeps
its hydrogens, a 2D fallback conformer is flagged, and a repeated id is noted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from molm_fast.data.featurize import MAX_ATOMS, unknown_elements

OK, FAILED = "ok", "failed"


@dataclass
class MoleculeRecord:
    """index: position in the input; id: the item's id (CID, row id, SDF title) or str(index); smiles: as given
    (backslashes unescaped) or written by RDKit; atoms: element symbols incl. H; coordinates: [n, 3] float32 (one
    conformer) or None; source: where the coordinates came from ("sdf", "lmdb", "etkdg", "etkdg_no_h",
    "random_coords", "2d") or "" when there are none yet; properties: the item's other fields (description,
    QM values, SDF tags)."""

    index: int
    id: str
    smiles: str | None = None
    status: str = OK
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    atoms: list[str] | None = None
    coordinates: np.ndarray | None = None
    source: str = ""
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def has_coordinates(self) -> bool:
        return self.ok and self.coordinates is not None

    def warn(self, message: str) -> None:
        """Add a warning once (checks may run more than once on a record)."""
        if message not in self.warnings:
            self.warnings.append(message)

    def fail(self, reason: str) -> MoleculeRecord:
        """Mark failed (coordinates dropped) and return self."""
        self.status, self.reason, self.atoms, self.coordinates = FAILED, reason, None, None
        return self


def check_structure(record: MoleculeRecord, *, max_atoms: int = MAX_ATOMS) -> MoleculeRecord:
    """Validate ``record.atoms``/``record.coordinates`` and add the featurisation warnings; fail it on bad data."""
    if not record.ok or record.atoms is None:
        return record
    atoms = list(record.atoms)
    if len(atoms) == 0:
        return record.fail("molecule has no atoms")
    xyz = np.asarray(record.coordinates, dtype=np.float64) if record.coordinates is not None else None
    if xyz is not None:
        if xyz.shape != (len(atoms), 3):
            return record.fail(f"coordinates must be [n_atoms, 3] = [{len(atoms)}, 3], got {list(xyz.shape)}")
        bad = ~np.isfinite(xyz).all(axis=1)
        if bad.any():
            return record.fail(f"coordinates contain NaN or infinity ({int(bad.sum())} atoms, first atom "
                               f"{int(np.argmax(bad))})")
        record.coordinates = xyz.astype(np.float32)
    unknown = unknown_elements(atoms)
    if unknown:
        record.warn(f"elements outside the Uni-Mol dictionary map to [UNK]: {', '.join(unknown)}")
    heavy = sum(a != "H" for a in atoms)
    if heavy == 0:
        record.warn(f"hydrogens only: keeps its {len(atoms)} hydrogens")
    elif heavy > max_atoms:
        record.warn(f"{heavy} heavy atoms > {max_atoms}: randomly cropped to {max_atoms} at featurisation")
    if record.source == "2d":
        record.warn("3D embedding failed: 2D coordinates (z = 0) used as the last resort")
    return record


def mark_duplicates(records: Sequence[MoleculeRecord], *, on_duplicate: str = "warn") -> None:
    """Note (``"warn"``) or fail (``"fail"``) every record whose id was already seen; the first one stays as is."""
    if on_duplicate not in ("warn", "fail"):
        raise ValueError(f"mark_duplicates: on_duplicate must be 'warn' or 'fail', got {on_duplicate!r}")
    first: dict[str, int] = {}
    for r in records:
        if r.id in first:
            msg = f"duplicate id {r.id!r} (first at item {first[r.id]})"
            if on_duplicate == "fail":
                r.fail(msg)
            else:
                r.warn(msg)
        else:
            first[r.id] = r.index


def summarize(records: Sequence[MoleculeRecord]) -> dict[str, Any]:
    """Counts of ok / failed / warned items and the most common failure reasons (for logs and reports)."""
    reasons: dict[str, int] = {}
    for r in records:
        if not r.ok:
            key = r.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {"items": len(records), "ok": sum(r.ok for r in records), "failed": sum(not r.ok for r in records),
            "with_warnings": sum(bool(r.warnings) for r in records),
            "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}
