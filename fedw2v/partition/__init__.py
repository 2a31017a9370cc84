"""Clients from a manifest: which utterance of the corpus ``train`` split belongs to which client, and to which
of the client's local splits (``train`` / ``dev`` / ``test`` / ``holdout``).

Only rows of the corpus ``train`` split are assigned. Rows of the corpus ``dev`` and ``test`` splits are returned
unchanged (they are the server's evaluation sets). A train row that ends up in no client (dropped by
``max_clients``, absent from imported lists, or an imported duplicate under the ``drop`` policy) gets
``client_id`` null and ``local_split`` null, and is counted in the stats.

Two ways to make the clients, one module each, both returning a `PartitionResult`:

- `fedw2v.partition.schemes`: ``partition(table, PartitionConfig(...))``, the ``speaker`` (the paper), ``iid``
  and ``dirichlet`` schemes, each client's local split and the holdout rule;
- `fedw2v.partition.lists`: ``import_lists(table, lists_dir)``, the authors' ``client_<k>/`` list folders.

`fedw2v.partition.train_rows` reads the corpus-train rows both work on; `fedw2v.partition.result` builds the
output table, the client table and the stats. `fedw2v.partition.export` writes each client's own manifest (and
audio) for a real federation. The names below are the package's interface.
"""

from __future__ import annotations

from fedw2v.partition.export import ExportConfig, ExportResult, export_clients
from fedw2v.partition.lists import DUPLICATE_POLICIES, ImportReport, import_lists
from fedw2v.partition.result import CLIENT_COLUMNS, PartitionResult, PartitionStats, Spread
from fedw2v.partition.schemes import SCHEMES, UNITS, PartitionConfig, parse_local_split, partition

__all__ = [
    "CLIENT_COLUMNS",
    "DUPLICATE_POLICIES",
    "ExportConfig",
    "ExportResult",
    "SCHEMES",
    "UNITS",
    "ImportReport",
    "PartitionConfig",
    "PartitionResult",
    "PartitionStats",
    "Spread",
    "export_clients",
    "import_lists",
    "parse_local_split",
    "partition",
]
