"""What `fedw2v simulate` checks before it starts Ray: everything that can be checked without it.

A mistake found here is a one-line error within a second or two, instead of one found by the server after Ray and
its workers have started (or by every client, one round later): the clients manifest (read and validated, with
clients and an evaluation split), ``--clients-per-round`` against the number of clients (never capped silently),
the corpus root, the model (resolvable: a preset, a model or run directory, or a hub id) and the footprint
indicator manifest. The run directory is `server_app.check_run_dir`'s, called right after.
"""

from __future__ import annotations

from pathlib import Path

from fedw2v.config.simulate import SimulateConfig
from fedw2v.errors import InputError


def check(config: SimulateConfig) -> None:
    """InputError (one line, naming the file or option) for anything that would stop the run later."""
    import pyarrow.compute as pc

    from fedw2v import manifest as mf

    path = config.clients_manifest
    clients = mf.read(path, allow_outside_audio=config.allow_outside_audio)
    ids = clients.client_ids
    if not ids:
        raise InputError(f"{path}: no client_id is set", hint="make clients with `fedw2v partition`")
    if config.clients_per_round > len(ids):
        raise InputError(
            f"--clients-per-round {config.clients_per_round}: {path} has only {len(ids)} clients",
            hint=f"use --clients-per-round {len(ids)} or fewer, or partition into more clients",
        )
    split = clients.table.column("split")
    if not pc.any(pc.equal(split, config.eval_split)).as_py():
        raise InputError(f"{path}: no utterance in the {config.eval_split} split, which the server scores",
                         hint="choose another --eval-split, or a manifest with that split")
    root = Path(config.corpus_root or clients.info.corpus_root)
    if not root.is_dir():
        how = "--corpus-root" if config.corpus_root else f"the corpus root recorded in {path}"
        raise InputError(f"{root}: no such directory ({how})", hint="pass --corpus-root where the corpus is now")
    if not config.resume:  # a resumed run loads its LATEST checkpoint, not --model
        from fedw2v.model import resolve

        resolve(config.model)
    if config.footprint_rounds and config.indicator_manifest:
        mf.read(config.indicator_manifest, allow_outside_audio=config.allow_outside_audio)
