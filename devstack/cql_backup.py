"""The CQL store's backups with nodetool, into a repository directory, per node:

- full: `nodetool snapshot -t SET KEYSPACE` (a flush, then hard links of every live sstable), each
  table's snapshot copied into SET/nodeN/TABLE/, the snapshot cleared;
- incremental: `nodetool flush KEYSPACE`, then the sstables Cassandra linked into each table's
  backups/ directory since the last set (incremental_backups: true) moved into SET/nodeN/TABLE/.

A restore loads a full set and the incremental sets after it, up to the one chosen, into fresh
nodes: the schema by the migrate command, then each set's sstables with `nodetool import` (ScyllaDB:
the same files with `nodetool refresh --load-and-stream`). Only sstables are copied: no CQL is written.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.cql_node import CqlNode


@dataclass(frozen=True)
class CqlSetInfo:
    kind: str  # "full" or "incremental"
    files: int
    size_bytes: int
    seconds: float
    tables: list[str]

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _table_dirs(node: CqlNode, keyspace: str) -> dict[str, list[Path]]:
    """Each table's directories (TABLE-ID; more than one when a table was dropped and made again)."""
    out: dict[str, list[Path]] = {}
    ks = node.data_dir / keyspace
    if ks.is_dir():
        for d in sorted(ks.iterdir()):
            if d.is_dir() and "-" in d.name:
                out.setdefault(d.name.rsplit("-", 1)[0], []).append(d)
    return out


def _whole_sstables(directory: Path) -> list[Path]:
    """The files of every sstable in `directory` whose components (its TOC.txt) are all there: one that
    is being linked in right now waits for the next set."""
    files: list[Path] = []
    for toc in sorted(directory.glob("*-TOC.txt")):
        prefix = toc.name[: -len("TOC.txt")]
        components = [c.strip() for c in toc.read_text().splitlines() if c.strip()]
        parts = [directory / f"{prefix}{c}" for c in components]
        if all(p.exists() for p in parts):
            files += [p for p in parts if p != toc] + [toc]
    return files


class CqlBackup:
    def __init__(self, nodes: list[CqlNode], keyspace: str, backup_dir: Path) -> None:
        self.nodes, self.keyspace = nodes, keyspace
        self.repo = backup_dir / "cql"

    def set_dir(self, set_id: str) -> Path:
        return self.repo / set_id

    def backup(self, set_id: str, *, full: bool) -> CqlSetInfo:
        started = time.monotonic()
        files = size = 0
        tables: set[str] = set()
        for i, node in enumerate(self.nodes):
            out = self.set_dir(set_id) / f"node{i + 1}"
            if full:
                # What was linked into backups/ before this snapshot is in it: dropped first, so that a
                # flush racing the snapshot lands in both (harmless), never in neither.
                for dirs in _table_dirs(node, self.keyspace).values():
                    for d in dirs:
                        for f in _whole_sstables(d / "backups"):
                            f.unlink()
                node.nodetool("snapshot", "-t", set_id, self.keyspace)
                try:
                    for table, dirs in _table_dirs(node, self.keyspace).items():
                        for d in dirs:
                            snap = d / "snapshots" / set_id
                            if not snap.is_dir():
                                continue
                            for f in sorted(snap.iterdir()):
                                if f.is_file():
                                    (out / table).mkdir(parents=True, exist_ok=True)
                                    shutil.copy2(f, out / table / f.name)
                                    files, size = files + 1, size + f.stat().st_size
                                    tables.add(table)
                finally:
                    node.nodetool("clearsnapshot", "-t", set_id, "--", self.keyspace)
            else:
                node.nodetool("flush", self.keyspace)
                for table, dirs in _table_dirs(node, self.keyspace).items():
                    for d in dirs:
                        for f in _whole_sstables(d / "backups"):
                            (out / table).mkdir(parents=True, exist_ok=True)
                            shutil.copy2(f, out / table / f.name)
                            files, size = files + 1, size + f.stat().st_size
                            tables.add(table)
                            f.unlink()
        return CqlSetInfo(
            kind="full" if full else "incremental",
            files=files,
            size_bytes=size,
            seconds=round(time.monotonic() - started, 2),
            tables=sorted(tables),
        )

    def load(self, chain: list[str]) -> dict[str, int]:
        """Imports the sstables of `chain` (a full set, then its incrementals in order) into the running,
        freshly migrated nodes; returns the files loaded per table."""
        loaded: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            staging = node.home / "restore"
            shutil.rmtree(staging, ignore_errors=True)
            by_table: dict[str, list[Path]] = {}
            for set_id in chain:
                src = self.set_dir(set_id) / f"node{i + 1}"
                if not src.is_dir():
                    continue
                for table_dir in sorted(src.iterdir()):
                    ssts = [f for f in table_dir.iterdir() if f.name.endswith((".db", ".txt", ".crc32"))]
                    if not any(f.name.endswith("-Data.db") for f in ssts):
                        continue
                    dest = staging / set_id / table_dir.name
                    dest.mkdir(parents=True)
                    for f in ssts:
                        shutil.copy2(f, dest / f.name)
                    by_table.setdefault(table_dir.name, []).append(dest)
                    loaded[table_dir.name] = loaded.get(table_dir.name, 0) + sum(
                        f.name.endswith("-Data.db") for f in ssts
                    )
            if by_table:
                node.nodetool_batch(
                    [["import", self.keyspace, table, *(str(d) for d in dirs)] for table, dirs in by_table.items()]
                )
            shutil.rmtree(staging, ignore_errors=True)
        return loaded

    def remove(self, set_id: str) -> None:
        shutil.rmtree(self.set_dir(set_id), ignore_errors=True)
