"""3D-MoIT computed-property instructions for a user's own molecules (spec §3.3), and the 3D-MoIT JSON format.

Templates, answer format and units are upstream's (``help_functions/instruct_split.py``): one of 8 question
templates per (molecule, property) (the source's missing comma merges the last two; kept), each with its trailing
space, then "If uncertain, provide an estimate. Respond with the numerical value only."; the answer is
"The {property} for the input molecule is {value:.2f}{unit}." with " g/mol" for MW, " Å²" for TPSA, none for LogP
and Complexity; NaN values are skipped.

Values. Upstream took all four 2D properties from PubChem. A value given with the molecule (SD tag or table
column, e.g. ``PUBCHEM_MOLECULAR_WEIGHT``, ``PUBCHEM_XLOGP3``, ``PUBCHEM_CACTVS_TPSA``, ``PUBCHEM_CACTVS_COMPLEXITY``,
``polararea``, ``xlogp``) is used first (``prefer_given=True``); otherwise RDKit computes MW (``Descriptors.MolWt``,
average mass, as PubChem), LogP (Crippen ``MolLogP``: NOT PubChem's XLogP3, values differ) and TPSA
(``rdMolDescriptors.CalcTPSA``, N/O contributions as Ertl; PubChem's Cactvs TPSA can differ for S/P).
**PubChem's Complexity (Cactvs, Bertz/Hendrickson variant) is not reproducible with RDKit**: it is used only when
given and otherwise skipped with a reason, never approximated (RDKit's BertzCT is a different scale).
3D properties come from QM data only: HOMO, LUMO, HOMO-LUMO Gap from ``homo_ev``/``lumo_ev``/``gap_ev``
(``read_qm9_csv``, ``read_pubchemqc_gap``), SCF Energy from ``scf_energy_ev`` when given. Their answers use three
decimals and " eV" (upstream's demo answer "5.762 eV"); SCF Energy is written in units of 10^4 eV, which the
evaluation's valid range (-5, 0) implies; the 3D answer strings are [UNVERIFIED] (upstream's generator is not
public).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from molm_fast.data.records import MoleculeRecord

# Upstream's list, verbatim (trailing spaces kept; the last two strings are merged by a missing comma).
QUESTION_TEMPLATES: tuple[str, ...] = (
    "What is the [property] of this molecule? ",
    "Could you give me the [property] value of this molecule? ",
    "I would like to know the [property] of this molecule, can you provide it? ",
    "Please provide the [property] value for this molecule. ",
    "I am interested in the [property] of this molecule, could you tell me what it is? ",
    "I would like to know the [property] of this molecule, could you please provide it? ",
    "I need to know the [property] of this molecule, could you please provide it? ",
    "Please provide me with the [property] value of this molecule. Determine the [property] value of this molecule. ",
)
FURTHER_INSTRUCTION = "If uncertain, provide an estimate. Respond with the numerical value only."
OUTPUT_TEMPLATE = "The [property] for the input molecule is [output]."

# task -> (format of the value, unit suffix, scale applied to the value, keys of a given value in priority order)
PROPERTIES: dict[str, tuple[str, str, float, tuple[str, ...]]] = {
    "Molecular Weight": ("{:.2f}", " g/mol", 1.0, ("PUBCHEM_MOLECULAR_WEIGHT", "molecular_weight")),
    "LogP": ("{:.2f}", "", 1.0, ("PUBCHEM_XLOGP3", "PUBCHEM_XLOGP3_AA", "xlogp", "logp")),
    "Topological Polar Surface Area": ("{:.2f}", " Å²", 1.0, ("PUBCHEM_CACTVS_TPSA", "polararea", "tpsa")),
    "Complexity": ("{:.2f}", "", 1.0, ("PUBCHEM_CACTVS_COMPLEXITY", "complexity")),
    "HOMO": ("{:.3f}", " eV", 1.0, ("homo_ev",)),
    "LUMO": ("{:.3f}", " eV", 1.0, ("lumo_ev",)),
    "HOMO-LUMO Gap": ("{:.3f}", " eV", 1.0, ("gap_ev",)),
    "SCF Energy": ("{:.3f}", " ×10^4 eV", 1e-4, ("scf_energy_ev",)),
}
COMPUTED_2D = ("Molecular Weight", "LogP", "Topological Polar Surface Area", "Complexity")
COMPUTED_3D = ("HOMO", "LUMO", "HOMO-LUMO Gap", "SCF Energy")
RDKIT_COMPUTABLE = ("Molecular Weight", "LogP", "Topological Polar Surface Area")
TASKS = (*COMPUTED_3D, *COMPUTED_2D, "Description", "Caption")


@dataclass
class InstructionItem:
    """One 3D-MoIT item: ``input`` is the molecule key (CID / LMDB index); status/reason/warnings as records."""

    instruction: str
    input: str
    output: str
    task: str
    status: str = "ok"
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output, "task": self.task}


def _rdkit_value(task: str, smiles: str | None) -> tuple[float, str]:
    from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors

    from molm_fast.data.conformers import parse_smiles

    if task not in RDKIT_COMPUTABLE:
        why = ("PubChem's Complexity (Cactvs) is not reproducible with RDKit" if task == "Complexity"
               else "comes from QM data only")
        return math.nan, f"{task}: no value given and {why}"
    mol, reason = parse_smiles(smiles or "")
    if mol is None:
        return math.nan, f"{task}: {reason}"
    fn = {"Molecular Weight": Descriptors.MolWt, "LogP": Crippen.MolLogP,
          "Topological Polar Surface Area": rdMolDescriptors.CalcTPSA}[task]
    return float(fn(mol)), ""


def property_value(record: MoleculeRecord, task: str, *, prefer_given: bool = True) -> tuple[float, str, str]:
    """-> (value, source "given:<key>" or "rdkit", reason when the value is NaN)."""
    if task not in PROPERTIES:
        raise ValueError(f"property_value: task must be one of {list(PROPERTIES)}, got {task!r}")
    keys = PROPERTIES[task][3]
    use_given = prefer_given or task not in RDKIT_COMPUTABLE
    for key, raw in [(k, record.properties[k]) for k in keys if k in record.properties] if use_given else []:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            return value, f"given:{key}", ""
    value, reason = _rdkit_value(task, record.smiles)
    return value, "rdkit", reason


def format_answer(task: str, value: float) -> str:
    fmt, unit, scale, _ = PROPERTIES[task]
    return OUTPUT_TEMPLATE.replace("[property]", task).replace("[output]", fmt.format(value * scale) + unit)


def computed_property_items(records: Sequence[MoleculeRecord], tasks: Sequence[str] = COMPUTED_2D, *,
                            seed: int = 0, prefer_given: bool = True
                            ) -> tuple[list[InstructionItem], list[tuple[str, str, str]]]:
    """Computed-property QA for each ok record and task, in record order then task order.

    Returns (items, skipped): skipped lists (record id, task, reason) for every (record, task) without a finite
    value, and for failed records; nothing is dropped without a line. The template of (record i, task j) is drawn
    with ``np.random.default_rng((seed, i, j))``, so the choice does not depend on the other records.
    """
    unknown = [t for t in tasks if t not in PROPERTIES]
    if unknown:
        raise ValueError(f"computed_property_items: tasks must be among {list(PROPERTIES)}, got {unknown}")
    items: list[InstructionItem] = []
    skipped: list[tuple[str, str, str]] = []
    for r in records:
        if not r.ok:
            skipped.extend((r.id, t, f"record failed: {r.reason}") for t in tasks)
            continue
        for j, task in enumerate(tasks):
            value, source, reason = property_value(r, task, prefer_given=prefer_given)
            if not math.isfinite(value):
                skipped.append((r.id, task, reason or f"{task} is NaN"))
                continue
            template = QUESTION_TEMPLATES[int(np.random.default_rng((seed, r.index, j)).integers(8))]
            item = InstructionItem(template.replace("[property]", task) + FURTHER_INSTRUCTION, r.id,
                                   format_answer(task, value), task)
            if source == "rdkit" and task == "LogP":
                item.warnings.append("LogP from RDKit Crippen, not PubChem XLogP3")
            items.append(item)
    return items, skipped


def write_moit_json(path: str | os.PathLike, items: Sequence[InstructionItem]) -> int:
    """Write the ok items as upstream does (a JSON list, indent 4). Returns how many were written."""
    ok = [it.to_json() for it in items if it.status == "ok"]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(ok, f, indent=4)
    return len(ok)


def read_moit_json(path: str | os.PathLike) -> list[InstructionItem]:
    """A 3D-MoIT JSON list of {instruction, input, output, task}; one item per element, in order. An element that
    is not an object with those four string fields fails with its reason; an unknown task gets a warning."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"read_moit_json: {path} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"read_moit_json: {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise ValueError(f"read_moit_json: {path} must hold a JSON list, got {type(data).__name__}")
    items = []
    for i, el in enumerate(data):
        fields = {k: el.get(k) for k in ("instruction", "input", "output", "task")} if isinstance(el, dict) else {}
        bad = [k for k, v in fields.items() if not isinstance(v, str)] if fields else ["(not an object)"]
        item = InstructionItem(**{k: v if isinstance(v, str) else "" for k, v in fields.items()}) if fields else \
            InstructionItem("", "", "", "")
        if bad:
            item.status, item.reason = "failed", f"element {i} lacks string fields {bad}"
        elif item.task not in TASKS:
            item.warnings.append(f"unknown task {item.task!r} (3D-MoIT tasks: {list(TASKS)})")
        items.append(item)
    return items


__all__ = ["COMPUTED_2D", "COMPUTED_3D", "FURTHER_INSTRUCTION", "InstructionItem", "OUTPUT_TEMPLATE", "PROPERTIES",
           "QUESTION_TEMPLATES", "TASKS", "computed_property_items", "format_answer", "property_value",
           "read_moit_json", "write_moit_json"]
