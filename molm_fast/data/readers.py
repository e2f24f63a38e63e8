"""Readers for the molecule files 3D-MoLM users bring (spec §3, shared/data/SOURCES.md).

Each returns one ``MoleculeRecord`` per item in the file, in file order: a bad row or record becomes a failed
record with its reason, a repeated id gets a warning (``on_duplicate="fail"`` fails it instead). An empty file
(no items) raises ``ValueError`` naming the file. Records from text tables carry only SMILES: pass them to
``generate_conformers``; records from a 3D SDF or an LMDB carry their coordinates, used as is.

  read_smiles        one SMILES per line, optional id after whitespace
  read_text_pairs    TSV ``CID<TAB>SMILES<TAB>description``: ChEBI-20 (MolT5), PubChem324k, PCdes. ChEBI-20 writes
                     every backslash of a SMILES doubled; ``\\\\`` -> ``\\`` (never valid SMILES, so always safe)
  read_chebi20_mm    ChEBI-20-MM CSV (TPSA, XLogP, IUPAC name, ...)
  read_qm9_csv       DeepChem QM9 CSV; HOMO/LUMO/gap converted Hartree -> eV (``homo_ev``, ``lumo_ev``, ``gap_ev``)
  read_pubchemqc_gap PubChemQC-style gap CSV (``gap_ev``; no HOMO, LUMO or SCF in that file; the R .rda original
                     next to it is not read: its CSV export holds the same table)
  read_table         any CSV/TSV with a SMILES column (column names detected)
  merge_properties   join a property table onto records by id (qm9_mini.sdf + qm9_mini.sdf.csv)
  read_sdf           .sdf, .sdf.gz, or a .zip of SDFs; 3D coordinates used as is, 2D ones left for RDKit
  read_lmdb          3D-MoLM LMDB of pickled dicts (PubChem: atoms/coordinates/smiles/description/...;
                     PubChemQC: atoms/coordinates_list/smi/cid); ``write_lmdb`` writes the PubChem layout
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from molm_fast.data.records import MoleculeRecord, check_structure, mark_duplicates

HARTREE_TO_EV = 27.211386245988  # CODATA 2018


def _finish(name: str, path: Any, records: list[MoleculeRecord], on_duplicate: str) -> list[MoleculeRecord]:
    if not records:
        raise ValueError(f"{name}: {path} is empty (no molecules)")
    mark_duplicates(records, on_duplicate=on_duplicate)
    return records


def unescape_smiles(smiles: str) -> str:
    """ChEBI-20 (MolT5) writes each SMILES backslash as two characters ``\\\\``; restore the single ``\\``."""
    return smiles.replace("\\\\", "\\")


def read_smiles(path: str | os.PathLike, *, on_duplicate: str = "warn") -> list[MoleculeRecord]:
    """One item per line (a final newline ends the last line); ``SMILES [id]``; a blank line is a failed item."""
    lines = Path(path).read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        fields = line.split()
        rec = MoleculeRecord(index=i, id=fields[1] if len(fields) > 1 else str(i),
                             smiles=unescape_smiles(fields[0]) if fields else "")
        records.append(rec.fail(f"line {i + 1} is empty") if not fields else rec)
    return _finish("read_smiles", path, records, on_duplicate)


def _table(name: str, path: str | os.PathLike, rows: Iterable[list[str]], *, id_col: str, smiles_col: str | None,
           float_cols: dict[str, float] | None = None, on_duplicate: str = "warn") -> list[MoleculeRecord]:
    """Rows (header first) -> records; float_cols maps a column to the factor its value is multiplied by."""
    float_cols = float_cols or {}
    it = iter(rows)
    header = next(it, None)
    if header is None:
        raise ValueError(f"{name}: {path} is empty (no header)")
    header = [h.strip() for h in header]
    missing = [c for c in (id_col, smiles_col, *float_cols) if c is not None and c not in header]
    if missing:
        raise ValueError(f"{name}: {path} lacks columns {missing}; header is {header}")
    col = {h: j for j, h in enumerate(header)}
    records = []
    for i, row in enumerate(it):
        rec = MoleculeRecord(index=i, id=str(i))
        records.append(rec)
        if not any(f.strip() for f in row):
            rec.fail(f"row {i + 1} is empty")
            continue
        if len(row) != len(header):
            rec.fail(f"row {i + 1} has {len(row)} fields, expected {len(header)}")
            continue
        rec.id = row[col[id_col]].strip()
        rec.smiles = unescape_smiles(row[col[smiles_col]].strip()) if smiles_col else None
        rec.properties = {h: row[j] for j, h in enumerate(header) if h not in (id_col, smiles_col) and h}
        for c, factor in float_cols.items():
            try:
                rec.properties[c] = float(row[col[c]]) * factor if row[col[c]].strip() else math.nan
            except ValueError:
                rec.fail(f"row {i + 1}: column {c!r} is not a number: {row[col[c]][:40]!r}")
        if rec.ok and smiles_col and not rec.smiles:
            rec.fail(f"row {i + 1} has an empty SMILES")
    return _finish(name, path, records, on_duplicate)


def read_text_pairs(path: str | os.PathLike, *, on_duplicate: str = "warn") -> list[MoleculeRecord]:
    """TSV with header ``CID SMILES description`` (ChEBI-20 MolT5 splits, PubChem324k, PCdes).
    ``properties["description"]`` keeps the text exactly (trailing spaces included)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return _table("read_text_pairs", path, rows, id_col="CID", smiles_col="SMILES", on_duplicate=on_duplicate)


def read_chebi20_mm(path: str | os.PathLike, *, on_duplicate: str = "warn") -> list[MoleculeRecord]:
    """ChEBI-20-MM CSV: CID, SMILES, description, polararea (TPSA, A^2), xlogp (NaN when empty), inchi, ..."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return _table("read_chebi20_mm", path, rows, id_col="CID", smiles_col="SMILES",
                  float_cols={"polararea": 1.0, "xlogp": 1.0}, on_duplicate=on_duplicate)


def read_qm9_csv(path: str | os.PathLike, *, on_duplicate: str = "warn") -> list[MoleculeRecord]:
    """DeepChem QM9 CSV (``mol_id``, ``smiles``, ``homo``/``lumo``/``gap`` in Hartree, ...). Adds ``homo_ev``,
    ``lumo_ev``, ``gap_ev`` (x 27.211386, as the reference answers use eV); the Hartree columns stay. A table
    without ``smiles`` (``qm9_mini.sdf.csv``) gives records without SMILES: ``merge_properties`` joins them onto
    the SDF's records by id."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    smiles_col = "smiles" if rows and "smiles" in [h.strip() for h in rows[0]] else None
    records = _table("read_qm9_csv", path, rows, id_col="mol_id", smiles_col=smiles_col,
                     float_cols={"homo": 1.0, "lumo": 1.0, "gap": 1.0}, on_duplicate=on_duplicate)
    for r in records:
        if r.ok:
            r.properties.update({f"{k}_ev": r.properties[k] * HARTREE_TO_EV for k in ("homo", "lumo", "gap")})
    return records


def read_pubchemqc_gap(path: str | os.PathLike, *, on_duplicate: str = "warn") -> list[MoleculeRecord]:
    """``CID,SMILES,E_kJ_per_mol,HOMO_LUMO_gap_eV`` (B3LYP/6-31G(d) gap in eV) -> ``properties["gap_ev"]``."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    records = _table("read_pubchemqc_gap", path, rows, id_col="CID", smiles_col="SMILES",
                     float_cols={"HOMO_LUMO_gap_eV": 1.0, "E_kJ_per_mol": 1.0}, on_duplicate=on_duplicate)
    for r in records:
        if r.ok:
            r.properties["gap_ev"] = r.properties["HOMO_LUMO_gap_eV"]
    return records


def read_table(path: str | os.PathLike, *, smiles_col: str | None = None, id_col: str | None = None,
               delimiter: str | None = None, on_duplicate: str = "warn") -> list[MoleculeRecord]:
    """Any CSV/TSV with a SMILES column. Defaults: delimiter by extension (``.csv`` comma, else tab); SMILES column
    = the first header named smiles/smi (any case); id column = id/cid/mol_id/name, else rows are numbered. Other
    columns go to ``properties`` as strings."""
    delimiter = delimiter or ("," if str(path).lower().endswith(".csv") else "\t")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    header = [h.strip() for h in rows[0]] if rows else []
    smiles_col = smiles_col or next((h for h in header if h.lower() in ("smiles", "smi")), None)
    if rows and smiles_col is None:
        raise ValueError(f"read_table: {path} needs a SMILES column (smiles/smi) or smiles_col=; header is {header}")
    id_col = id_col or next((h for h in header if h.lower() in ("id", "cid", "mol_id", "name")), None)
    if rows and id_col is None:  # number the rows
        id_col, rows = "row", [["row", *rows[0]]] + [[str(i), *r] for i, r in enumerate(rows[1:])]
    return _table("read_table", path, rows, id_col=id_col or "", smiles_col=smiles_col, on_duplicate=on_duplicate)


def merge_properties(records: Sequence[MoleculeRecord], extra: Sequence[MoleculeRecord]) -> int:
    """Add the properties of ``extra`` records to the ``records`` with the same id (first occurrence of each id in
    ``extra``; existing keys are kept). Returns how many records received properties."""
    by_id: dict[str, MoleculeRecord] = {}
    for e in extra:
        if e.ok:
            by_id.setdefault(e.id, e)
    n = 0
    for r in records:
        e = by_id.get(r.id)
        if e is not None:
            r.properties = {**e.properties, **r.properties}
            n += 1
    return n


# ------------------------------------------------------------------------------------------------------ SDF
_TAG = re.compile(r"^>\s*.*<([^>]+)>")


def _sdf_texts(path: str | os.PathLike) -> list[str]:
    p = str(path)
    if p.endswith(".zip"):
        with zipfile.ZipFile(p) as z:
            names = [n for n in z.namelist() if n.lower().endswith(".sdf")]
            if not names:
                raise ValueError(f"read_sdf: {p} holds no .sdf member (members: {z.namelist()[:5]})")
            return [z.read(n).decode("utf-8", errors="replace") for n in names]
    if p.endswith(".gz"):
        with gzip.open(p, "rt", encoding="utf-8", errors="replace") as f:
            return [f.read()]
    return [Path(p).read_text(encoding="utf-8", errors="replace")]


def _sdf_blocks(text: str) -> list[str]:
    """Split on ``$$$$`` lines; a last block without its ``$$$$`` is kept (it may be truncated)."""
    blocks, cur = [], []
    for line in io.StringIO(text):
        if line.rstrip("\r\n") == "$$$$":
            blocks.append("".join(cur))
            cur = []
        else:
            cur.append(line)
    if "".join(cur).strip():
        blocks.append("".join(cur))
    return blocks


def _sdf_tags(block: str) -> dict[str, str]:
    tags, name, value = {}, None, []
    for line in block.split("M  END", 1)[-1].splitlines():
        m = _TAG.match(line)
        if m:
            name, value = m.group(1), []
        elif name is not None:
            if line.strip() == "":
                tags[name], name = "\n".join(value), None
            else:
                value.append(line)
    if name is not None:
        tags[name] = "\n".join(value)
    return tags


def _sdf_record(i: int, block: str) -> MoleculeRecord:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    title = block.splitlines()[0].strip() if block.strip() else ""
    rec = MoleculeRecord(index=i, id=title or str(i))
    if "M  END" not in block:
        return rec.fail(f"SDF record {i + 1} ({title or 'no title'}) is truncated: no 'M  END' line")
    rec.properties = _sdf_tags(block)
    mol = Chem.MolFromMolBlock(block.split("M  END", 1)[0] + "M  END\n", removeHs=False)
    if mol is None or mol.GetNumAtoms() == 0:
        return rec.fail(f"RDKit cannot read SDF record {i + 1} ({title or 'no title'})")
    rec.id = title or rec.properties.get("PUBCHEM_COMPOUND_CID", str(i))
    try:
        rec.smiles = Chem.MolToSmiles(Chem.RemoveHs(mol))
    except Exception:  # RemoveHs sanitises; a record RDKit can read but not sanitise keeps its explicit-H SMILES
        rec.smiles = Chem.MolToSmiles(mol)
    conf = mol.GetConformer() if mol.GetNumConformers() else None
    if conf is not None and conf.Is3D():
        rec.atoms = [a.GetSymbol() for a in mol.GetAtoms()]
        rec.coordinates, rec.source = conf.GetPositions(), "sdf"
        check_structure(rec)
    else:
        rec.warn("SDF coordinates are 2D and not used: generate_conformers embeds the molecule in 3D")
    return rec


def read_sdf(path: str | os.PathLike, *, on_duplicate: str = "warn") -> list[MoleculeRecord]:
    """Every record of an SDF (plain, .gz, or every .sdf inside a .zip, in member order), SD tags in
    ``properties``. A record without ``M  END`` (a truncated file) or that RDKit cannot read fails alone."""
    blocks = [b for text in _sdf_texts(path) for b in _sdf_blocks(text)]
    return _finish("read_sdf", path, [_sdf_record(i, b) for i, b in enumerate(blocks)], on_duplicate)


# ----------------------------------------------------------------------------------------------------- LMDB
def _open_lmdb(path: str | os.PathLike, **kw):
    try:
        import lmdb
    except ImportError as exc:
        raise ImportError("LMDB files need the 'lmdb' package: pip install 'molm_fast[data]'") from exc
    return lmdb.open(os.fspath(path), subdir=False, lock=False, readahead=False, meminit=False, **kw)


def read_lmdb(path: str | os.PathLike, *, conformer: str = "first", seed: int = 0,
              on_duplicate: str = "warn") -> list[MoleculeRecord]:
    """3D-MoLM LMDB (``subdir=False``; key = CID or running index; value = pickled dict). One conformer is kept:
    the first, or (``conformer="random"``) one drawn with ``seed`` per key. Other fields go to ``properties``."""
    if conformer not in ("first", "random"):
        raise ValueError(f"read_lmdb: conformer must be 'first' or 'random', got {conformer!r}")
    if not os.path.isfile(path):
        raise ValueError(f"read_lmdb: {path} is not a file (3D-MoLM LMDBs are single files, subdir=False)")
    env = _open_lmdb(path, readonly=True, max_readers=256)
    records = []
    with env.begin() as txn:
        for i, (key, value) in enumerate(txn.cursor()):
            rec = MoleculeRecord(index=i, id=key.decode())
            records.append(rec)
            try:
                data = pickle.loads(value)
            except Exception as exc:  # any unpickling failure is this record's problem only
                rec.fail(f"LMDB value of key {rec.id!r} is not a pickled record: {type(exc).__name__}")
                continue
            confs = data.get("coordinates", data.get("coordinates_list")) if isinstance(data, dict) else None
            if confs is None or "atoms" not in data:
                rec.fail(f"LMDB record {rec.id!r} lacks 'atoms' or 'coordinates'")
                continue
            if len(confs) == 0:
                rec.fail(f"LMDB record {rec.id!r} has no conformer")
                continue
            pick = 0 if conformer == "first" else int(np.random.default_rng((seed, i)).integers(len(confs)))
            rec.smiles = data.get("smiles", data.get("smi"))
            rec.atoms, rec.coordinates, rec.source = list(data["atoms"]), np.asarray(confs[pick]), "lmdb"
            rec.properties = {k: v for k, v in data.items() if k not in ("atoms", "coordinates", "coordinates_list")}
            rec.properties["n_conformers"] = len(confs)
            check_structure(rec)
    env.close()
    return _finish("read_lmdb", path, records, on_duplicate)


def write_lmdb(path: str | os.PathLike, records: Sequence[MoleculeRecord], *,
               map_size: int = 1 << 34) -> int:
    """Write records with coordinates in 3D-MoLM's PubChem layout (key = id; atoms, coordinates = [one array],
    smiles, description, enriched_description, cid). Returns how many were written; failed records are skipped
    (they have no structure) and duplicate ids are refused."""
    usable = [r for r in records if r.has_coordinates]
    ids = [r.id for r in usable]
    if len(set(ids)) != len(ids):
        raise ValueError("write_lmdb: ids must be unique (LMDB keys), found duplicates")
    env = _open_lmdb(path, map_size=map_size)
    with env.begin(write=True) as txn:
        for r in usable:
            value = {"atoms": list(r.atoms), "coordinates": [np.asarray(r.coordinates, np.float32)],
                     "smiles": r.smiles, "description": r.properties.get("description", ""),
                     "enriched_description": r.properties.get("enriched_description", ""), "cid": r.id}
            txn.put(r.id.encode(), pickle.dumps(value, protocol=-1))
    env.close()
    return len(usable)
