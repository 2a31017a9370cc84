"""The `fedw2v` command: one thin command per stage (parse -> typed config -> call -> render).

Heavy libraries (torch, transformers, flwr, ray, pyarrow, numpy) are imported inside the commands, so
`fedw2v --help` stays instant. Domain errors become one-line messages and exit codes in `_Group.invoke`,
the only place that does so (the mapping itself is in fedw2v.errors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from fedw2v import __version__
from fedw2v.errors import FedW2VError, UsageError, exit_code_for, format_error


class _Group(TyperGroup):
    """Maps every exception escaping a command to one line on stderr and an exit code (--debug: traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 -- this is the one place errors are turned into messages
            if (ctx.obj or {}).get("debug") or os.environ.get("FEDW2V_DEBUG") == "1":
                raise
            from fedw2v.console import err_console

            err_console.print(format_error(exc), markup=False, soft_wrap=True)
            raise click.exceptions.Exit(exit_code_for(exc)) from None


app = typer.Typer(
    cls=_Group,
    name="fedw2v",
    help="Federated fine-tuning of wav2vec 2.0 speech recognisers, with speaker-privacy analysis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Typed parameters declared once and reused by the commands.
ManifestOut = Annotated[Path, typer.Option("--output", "-o", help="Manifest file to write (Parquet).", dir_okay=False)]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (same seed, same result).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedw2v {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = {"debug": debug}


def _config(cls: type, **kwargs: Any) -> Any:
    """Build a typed config; its ValueError (a rule on the options) becomes a usage error."""
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Corpus directory to create (must not exist or be empty).")],
    speakers: Annotated[int, typer.Option(help="Speakers, one synthetic voice each (at least 3).")] = 10,
    minutes: Annotated[float, typer.Option(help="Total minutes of speech, roughly.")] = 15.0,
    seed: Seed = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT_DIR if it exists and is not empty.")] = False,
) -> None:
    """Write a small TED-LIUM 3 style corpus spoken by synthetic voices (flite, espeak-ng): demo and tests."""
    import time

    from fedw2v.console import console, progress_bar
    from fedw2v.corpus import synth as synth_corpus
    from fedw2v.render import synth_table

    config = _config(
        synth_corpus.SynthConfig, out_dir=out_dir, speakers=speakers, minutes=minutes, seed=seed, force=force
    )
    started = time.monotonic()
    with progress_bar("synthesising talks") as update:
        result = synth_corpus.synthesize(config, progress=update)
    console.print(synth_table(result))
    console.print(
        f"wrote {result.utterances} utterances in {len(result.talks)} talks to {result.out_dir} "
        f"in {time.monotonic() - started:.0f} s; next: fedw2v prepare {result.out_dir} -o manifest.parquet",
        soft_wrap=True,
    )


@app.command()
def prepare(
    corpus_dir: Annotated[Path, typer.Argument(help="TED-LIUM release 3 directory (or a corpus in its layout).")],
    output: ManifestOut,
    distribution: Annotated[
        str, typer.Option(help="Which distribution of the corpus: legacy | speaker-adaptation.")
    ] = "legacy",
    splits: Annotated[str, typer.Option(help="Comma-separated corpus splits to read.")] = "train,dev,test",
    normalization: Annotated[
        str, typer.Option(help="Text normalisation: paper (clitics split, as the paper) | joined (it's).")
    ] = "paper",
    strict: Annotated[bool, typer.Option("--strict", help="Fail on any skipped segment instead of reporting it.")] = False,
) -> None:
    """Read a TED-LIUM 3 corpus into an utterance manifest (no audio is decoded)."""
    from fedw2v import manifest
    from fedw2v.console import console, print_problems, progress_bar
    from fedw2v.corpus import tedlium
    from fedw2v.errors import CorpusError
    from fedw2v.render import prepare_table

    config = _config(
        tedlium.PrepareConfig,
        corpus_dir=corpus_dir,
        distribution=distribution,
        splits=_csv(splits),
        normalization=normalization,
    )
    with progress_bar("reading STM/SPH") as update:
        result = tedlium.prepare(config, progress=update)
    print_problems(result.problems)
    console.print(prepare_table(result))
    if result.problems and strict:
        first = result.problems[0]
        raise CorpusError(
            f"{len(result.problems)} problems with --strict (first: {first}); nothing written",
            hint="fix the corpus or drop --strict to skip bad segments",
        )
    if result.table.num_rows == 0:
        raise CorpusError(f"{corpus_dir}: no utterances found in {', '.join(config.splits)}; nothing written")
    command = (
        f"fedw2v prepare {corpus_dir} -o {output} --distribution {config.distribution} "
        f"--splits {','.join(config.splits)} --normalization {config.normalization}" + (" --strict" if strict else "")
    )
    info = manifest.ManifestInfo(
        corpus_root=str(Path(corpus_dir).resolve()),
        normalization=config.normalization,
        command=command,
        extra={"distribution": config.distribution},
    )
    manifest.write(manifest.Manifest(result.table, info), output)
    console.print(f"wrote {result.table.num_rows} utterances to {output}")


@app.command()
def partition(
    ctx: typer.Context,
    manifest_path: Annotated[Path, typer.Argument(metavar="MANIFEST", help="Manifest made by `fedw2v prepare`.")],
    output: ManifestOut,
    scheme: Annotated[
        str, typer.Option(help="speaker (the paper: one client per speaker) | iid | dirichlet.")
    ] = "speaker",
    num_clients: Annotated[
        int | None, typer.Option("--num-clients", help="Number of clients (iid, dirichlet).")
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="Dirichlet concentration (dirichlet): small = unequal clients, large = near iid.")
    ] = 0.5,
    unit: Annotated[
        str, typer.Option(help="What iid/dirichlet deal to clients: speaker (whole speakers) | utterance.")
    ] = "speaker",
    local_split: Annotated[
        str, typer.Option("--local-split", help="Each client's local train,dev,test fractions.")
    ] = "0.8,0.1,0.1",
    holdout_minutes: Annotated[
        float, typer.Option(help="Minutes of local train held out (never trained on) per client; 0: none.")
    ] = 5.0,
    holdout_min_minutes: Annotated[
        float, typer.Option(help="Only clients with more speech than this many minutes get a holdout.")
    ] = 10.0,
    max_clients: Annotated[
        int | None, typer.Option("--max-clients", help="Keep only the K clients with the most speech.")
    ] = None,
    seed: Seed = 0,
    from_lists: Annotated[
        Path | None,
        typer.Option("--from-lists", help="Import the authors' client lists (DIR/client_<k>/ted_*.csv) instead."),
    ] = None,
    duplicates: Annotated[
        str, typer.Option(help="With --from-lists, an id listed more than once: first (first client wins) | drop.")
    ] = "first",
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also write a PNG histogram of minutes per client.", dir_okay=False)
    ] = None,
) -> None:
    """Split the corpus train utterances into federated clients with local train/dev/test/holdout splits."""
    from click.core import ParameterSource

    from fedw2v import manifest
    from fedw2v import partition as part
    from fedw2v.console import console, err_console
    from fedw2v.render import partition_table

    def given(*names: str) -> list[str]:
        return [
            "--" + n.replace("_", "-") for n in names if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE
        ]

    if from_lists is not None:
        clash = given("scheme", "num_clients", "alpha", "unit", "local_split", "holdout_minutes",
                      "holdout_min_minutes", "seed")  # fmt: skip
        if clash:
            raise UsageError(f"--from-lists imports the authors' clients as they are; {', '.join(clash)} do not apply")
        if duplicates not in part.DUPLICATE_POLICIES:
            raise UsageError(f"--duplicates must be one of {', '.join(part.DUPLICATE_POLICIES)}, not {duplicates!r}")
        config = None
    else:
        if given("duplicates"):
            raise UsageError("--duplicates applies to --from-lists only")
        if scheme != "dirichlet" and given("alpha"):
            raise UsageError("--alpha applies to --scheme dirichlet only")
        if scheme == "speaker" and given("unit"):
            raise UsageError("--unit applies to --scheme iid and dirichlet only")
        try:
            fractions = part.parse_local_split(local_split)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        config = _config(
            part.PartitionConfig, scheme=scheme, num_clients=num_clients, alpha=alpha, unit=unit,
            local_split=fractions, holdout_minutes=holdout_minutes, holdout_min_minutes=holdout_min_minutes,
            max_clients=max_clients, seed=seed,
        )  # fmt: skip
    if plot is not None and (plot.suffix.lower() != ".png" or plot.is_dir()):
        raise UsageError(f"--plot {plot}: must be a .png file path")

    source = manifest.read(manifest_path)
    if config is None:
        assert from_lists is not None
        result = part.import_lists(
            source.table, from_lists, duplicates, max_clients=max_clients, source=str(manifest_path)
        )
        imp = result.imported
        if imp.duplicate_ids:
            err_console.print(
                f"warning: {imp.duplicate_ids} ids listed more than once ({imp.duplicate_ids_across_clients} in "
                f"several clients; e.g. {', '.join(imp.duplicate_examples[:3])}): policy {imp.duplicate_policy}, "
                f"{imp.duplicate_rows_ignored} list rows ignored",
                markup=False, soft_wrap=True,
            )  # fmt: skip
        if imp.unmatched_ids:
            err_console.print(
                f"warning: {imp.unmatched_ids} listed ids are not in {manifest_path} "
                f"(e.g. {', '.join(imp.unmatched_examples[:3])}): ignored",
                markup=False, soft_wrap=True,
            )  # fmt: skip
        if imp.outside_train_ids:
            err_console.print(
                f"warning: {imp.outside_train_ids} listed ids belong to the corpus dev/test split: ignored",
                markup=False, soft_wrap=True,
            )  # fmt: skip
        command = f"fedw2v partition {manifest_path} -o {output} --from-lists {from_lists} --duplicates {duplicates}"
        run_seed = None
        scheme_name = "lists"
    else:
        result = part.partition(source.table, config, source=str(manifest_path))
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
        run_seed = config.seed
        scheme_name = config.scheme
    if max_clients is not None:
        command += f" --max-clients {max_clients}"
    if plot is not None:
        command += f" --plot {plot}"
    console.print(partition_table(result))
    info = source.info.with_command(command, run_seed, scheme=scheme_name, partition=result.extra)
    manifest.write(manifest.Manifest(result.table, info), output)
    if plot is not None:
        from fedw2v.plots import client_minutes_histogram

        client_minutes_histogram(
            result.minutes_per_client, plot, title=f"fedw2v partition ({scheme_name}): {result.stats.clients} clients"
        )
    console.print(
        f"wrote {result.stats.clients} clients ({result.table.num_rows} utterances) to {output}"
        + (f"; histogram {plot}" if plot is not None else ""),
        soft_wrap=True,
    )


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
