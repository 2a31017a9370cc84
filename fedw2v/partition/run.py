"""The `fedw2v partition` stage: read the manifest, assign clients (a scheme, or the authors' lists), record how
(the command line and seed in the manifest's metadata), write the clients manifest atomically, and plot.

The command line recorded is the canonical one (every setting that shaped the result written out), so a
manifest says how to remake it whatever defaults a later version has.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ListsImport:
    """``--from-lists``: the authors' client lists, imported as they are."""

    directory: Path
    duplicates: str  # partition.DUPLICATE_POLICIES


def command_line(manifest_path: Path, output: Path, config: Any, max_clients: int | None, plot: Path | None) -> str:
    """The canonical `fedw2v partition` command that makes this result (``config``: PartitionConfig or
    ListsImport)."""
    if isinstance(config, ListsImport):
        command = (f"fedw2v partition {manifest_path} -o {output} --from-lists {config.directory} "
                   f"--duplicates {config.duplicates}")
    else:
        command = (
            f"fedw2v partition {manifest_path} -o {output} --scheme {config.scheme} "
            f"--local-split {','.join(f'{x:g}' for x in config.local_split)} "
            f"--holdout-minutes {config.holdout_minutes:g} --holdout-min-minutes {config.holdout_min_minutes:g} "
            f"--seed {config.seed}"
        )
        if config.scheme != "speaker":
            command += f" --num-clients {config.num_clients} --unit {config.unit}"
        if config.scheme == "dirichlet":
            command += f" --alpha {config.alpha:g}"
    if max_clients is not None:
        command += f" --max-clients {max_clients}"
    if plot is not None:
        command += f" --plot {plot}"
    return command


def run(manifest_path: Path, output: Path, config: Any, max_clients: int | None = None,
        plot: Path | None = None, export: Any = None) -> Any:
    """Partition ``manifest_path`` into ``output`` (and the histogram ``plot``; with ``export``, an
    `ExportConfig` naming a directory, one manifest per client there); returns the partition result, its
    ``extra["exported"]`` the `ExportResult`."""
    from fedw2v import manifest
    from fedw2v import partition as part

    source = manifest.read(manifest_path)
    if isinstance(config, ListsImport):
        result = part.import_lists(source.table, config.directory, config.duplicates, max_clients=max_clients,
                                   source=str(manifest_path))
        seed, scheme = None, "lists"
    else:
        result = part.partition(source.table, config, source=str(manifest_path))
        seed, scheme = config.seed, config.scheme
    command = command_line(manifest_path, output, config, max_clients, plot)
    info = source.info.with_command(command, seed, scheme=scheme, partition=result.extra)
    manifest.write(manifest.Manifest(result.table, info), output)
    if export is not None and export.export_clients:
        exported = part.export_clients(manifest.Manifest(result.table, info), export, command)
        result = replace(result, extra={**result.extra, "exported": exported})
    if plot is not None:
        from fedw2v.plots import client_minutes_histogram

        client_minutes_histogram(result.minutes_per_client, plot,
                                 title=f"fedw2v partition ({scheme}): {result.stats.clients} clients")
    return result
