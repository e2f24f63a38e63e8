"""Molecules in: SMILES / SDF / LMDB / RDKit -> 3D conformers -> Uni-Mol features -> batches (spec §1.2, §3).

Featurisation (3D-MoLM exactly): ``featurize_reference`` (one molecule, upstream steps) and ``featurize_packed``
(vectorised over a batch); the 31-entry dictionary ``ATOM_SYMBOLS`` with PAD/BOS/EOS/UNK/MASK indices.
Batches: ``PaddedBatch`` (tokens [B, N], coords [B, N, 3], N a multiple of 8, pads 0), ``PackedBatch`` (tokens [T],
coords [T, 3], cu_seqlens [B+1] int32, max_seqlen), ``collate_reference`` (upstream D3Collater),
``bucket_batches`` (length buckets), ``distance_and_edge_type`` (plain reference of what the encoder computes).
Storage: ``MoleculeStore`` (packed conformers; ``store.batch(indices, layout=...)``), ``BatchDataset``.
Records: ``MoleculeRecord`` (one per input item, status "ok"/"failed" + reason + warnings).
Conformers: ``generate_conformers(items, ConformerConfig(...), workers=, cache=, progress=)`` (ETKDGv3 + MMFF,
seeded, fallbacks, per-molecule time limit, processes, SQLite cache); ``embed_molecule``, ``conformer_from_smiles``.
Readers: ``read_smiles``, ``read_text_pairs``, ``read_chebi20_mm``, ``read_qm9_csv``, ``read_pubchemqc_gap``,
``read_sdf``, ``read_table`` (any CSV/TSV with a SMILES column), ``read_lmdb`` / ``write_lmdb``,
``merge_properties`` (join a property table by id).
3D-MoIT: ``computed_property_items`` (MW/LogP/TPSA/Complexity/HOMO/LUMO/gap/SCF QA with upstream templates),
``read_moit_json`` / ``write_moit_json``, ``InstructionItem``.
"""

from molm_fast.data.cache import ConformerCache
from molm_fast.data.collate import (
    PAD_TO_MULTIPLE,
    PackedBatch,
    PaddedBatch,
    bucket_batches,
    collate_reference,
    distance_and_edge_type,
)
from molm_fast.data.conformers import ConformerConfig, conformer_from_smiles, embed_molecule, generate_conformers
from molm_fast.data.featurize import (
    ATOM_SYMBOLS,
    BOS,
    EOS,
    MASK,
    MAX_ATOMS,
    NUM_TYPES,
    PAD,
    UNK,
    atom_tokens,
    crop_rng,
    featurize_packed,
    featurize_reference,
)
from molm_fast.data.moit import InstructionItem, computed_property_items, read_moit_json, write_moit_json
from molm_fast.data.readers import (
    HARTREE_TO_EV,
    merge_properties,
    read_chebi20_mm,
    read_lmdb,
    read_pubchemqc_gap,
    read_qm9_csv,
    read_sdf,
    read_smiles,
    read_table,
    read_text_pairs,
    unescape_smiles,
    write_lmdb,
)
from molm_fast.data.records import MoleculeRecord, check_structure, mark_duplicates, summarize
from molm_fast.data.store import BatchDataset, MoleculeStore

__all__ = [
    "ATOM_SYMBOLS", "BOS", "EOS", "MASK", "MAX_ATOMS", "NUM_TYPES", "PAD", "PAD_TO_MULTIPLE", "UNK",
    "HARTREE_TO_EV", "BatchDataset", "ConformerCache", "ConformerConfig", "MoleculeRecord", "MoleculeStore",
    "PackedBatch", "PaddedBatch",
    "atom_tokens", "bucket_batches", "check_structure", "collate_reference", "crop_rng", "distance_and_edge_type",
    "featurize_packed", "featurize_reference", "mark_duplicates", "summarize",
    "conformer_from_smiles", "embed_molecule", "generate_conformers",
    "read_chebi20_mm", "read_lmdb", "read_pubchemqc_gap", "read_qm9_csv", "read_sdf", "read_smiles", "read_table",
    "read_text_pairs",
    "merge_properties", "unescape_smiles", "write_lmdb",
    "InstructionItem", "computed_property_items", "read_moit_json", "write_moit_json",
]
