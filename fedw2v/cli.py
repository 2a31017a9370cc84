"""The `fedw2v` command: one thin command per stage (parse -> typed config -> call -> render).

Heavy libraries (torch, transformers, flwr, ray, pyarrow, numpy) are imported inside the commands, so
`fedw2v --help` stays instant. Errors become one-line messages and exit codes in one place,
`fedw2v.cli_group.ErrorMappingGroup` (what the commands raise, Ctrl-C, a closed stdout pipe, and what click refuses
on the command line); the mapping itself is in fedw2v.errors. Options are declared once, in the config classes
(`fedw2v.config.options`); `fedw2v.cli_options` turns the declarations into Typer options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer

from fedw2v import __version__
from fedw2v.cli_group import EXIT_NOW, ErrorMappingGroup, run_main
from fedw2v.cli_lm import lm_app
from fedw2v.cli_options import OutputPath, build, config_or_usage_error, declared
from fedw2v.config.decode import DecodeConfig
from fedw2v.config.footprint import FootprintConfig
from fedw2v.config.simulate import SimulateConfig
from fedw2v.config.train import ALLOW_PICKLE_HELP, MODEL_HELP, TrainConfig, TrainRunConfig
from fedw2v.evaluate import EvaluateConfig
from fedw2v.partition import ExportConfig, PartitionConfig
from fedw2v.transcribe import TranscribeConfig
from fedw2v.device import DEVICE_HELP
from fedw2v.errors import InputError, UsageError


app = typer.Typer(
    cls=ErrorMappingGroup,
    name="fedw2v",
    help="Federated fine-tuning of wav2vec 2.0 speech recognisers, with speaker-privacy analysis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.add_typer(lm_app, name="lm")

# Typed parameters declared once and reused by the commands.
ManifestOut = Annotated[
    Path, typer.Option("--output", "-o", help="Manifest file to write (Parquet).", click_type=OutputPath("file"))
]
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
    ctx.ensure_object(dict)["debug"] = debug


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Corpus directory to create (must not exist or be empty).")],
    speakers: Annotated[
        int | None, typer.Option(help="Speakers, one synthetic voice each (at least 3); default 10, or the "
                                      "number of --voices.")
    ] = None,
    minutes: Annotated[float, typer.Option(help="Total minutes of speech, roughly.")] = 15.0,
    seed: Seed = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT_DIR if it exists and is not empty.")] = False,
    voices: Annotated[
        str, typer.Option(help="Comma-separated voices that speak, in this order (the last ones become the dev and "
                               "test speakers): speaker ids (FliteSlt, EspeakUsF3, ...) or voice names (slt, "
                               "en-us+f3, ...). Default: the first --speakers voices.")
    ] = "",
) -> None:
    """Write a small TED-LIUM 3 style corpus spoken by synthetic voices (flite, espeak-ng): demo and tests."""
    import time

    from fedw2v.ui.console import console, progress_bar
    from fedw2v.corpus import synth as synth_corpus
    from fedw2v.ui.render import synth_table

    config = config_or_usage_error(
        synth_corpus.SynthConfig, out_dir=out_dir, speakers=speakers, minutes=minutes, seed=seed, force=force,
        voices=_csv(voices),
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
    from fedw2v.ui.console import console, print_problems, progress_bar
    from fedw2v.corpus import tedlium
    from fedw2v.errors import CorpusError
    from fedw2v.ui.render import prepare_table

    config = config_or_usage_error(
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
@declared(PartitionConfig, ExportConfig)
def partition(
    ctx: typer.Context,
    manifest_path: Annotated[Path, typer.Argument(metavar="MANIFEST", help="Manifest made by `fedw2v prepare`.")],
    output: ManifestOut,
    from_lists: Annotated[
        Path | None,
        typer.Option("--from-lists", help="Import the authors' client lists (DIR/client_<k>/ted_*.csv) instead."),
    ] = None,
    duplicates: Annotated[
        str, typer.Option(help="With --from-lists, an id listed more than once: first (first client wins) | drop.")
    ] = "first",
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Also write a PNG histogram of minutes per client.", click_type=OutputPath("file")),
    ] = None,
    **options: Any,
) -> None:
    """Split the corpus train utterances into federated clients with local train/dev/test/holdout splits."""
    from fedw2v.partition import run as partition_run
    from fedw2v.ui.console import console, err_console
    from fedw2v.ui.render import export_note, import_warnings, partition_table

    config = _partition_config(ctx, options, from_lists, duplicates)
    if plot is not None and (plot.suffix.lower() != ".png" or plot.is_dir()):
        raise UsageError(f"--plot {plot}: must be a .png file path")
    result = partition_run.run(manifest_path, output, config, options["max_clients"], plot, build(ExportConfig, options))
    for line in import_warnings(result.imported, manifest_path) if from_lists is not None else []:
        err_console.print(line, markup=False, soft_wrap=True)
    console.print(partition_table(result))
    console.print(
        f"wrote {result.stats.clients} clients ({result.table.num_rows} utterances) to {output}"
        + (f"; histogram {plot}" if plot is not None else "") + export_note(result.extra.get("exported")),
        soft_wrap=True,
    )


def _partition_config(ctx: typer.Context, options: dict[str, Any], from_lists: Path | None, duplicates: str) -> Any:
    """A scheme's PartitionConfig, or the lists to import; options that do not apply are refused, naming them."""
    from click.core import ParameterSource

    from fedw2v import partition as part
    from fedw2v.partition.run import ListsImport

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
        return ListsImport(from_lists, duplicates)
    if given("duplicates"):
        raise UsageError("--duplicates applies to --from-lists only")
    if options["scheme"] != "dirichlet" and given("alpha"):
        raise UsageError("--alpha applies to --scheme dirichlet only")
    if options["scheme"] == "speaker" and given("unit"):
        raise UsageError("--unit applies to --scheme iid and dirichlet only")
    return build(PartitionConfig, options)


ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help=MODEL_HELP)]
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help=ALLOW_PICKLE_HELP)]
Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]


def _say_model(loaded: Any, extra: str = "") -> None:
    from fedw2v.ui.console import err_console
    from fedw2v.model import num_parameters

    head = f"; new CTC head over {len(loaded.vocabulary)} characters" if loaded.new_head else ""
    err_console.print(
        f"model: {loaded.source} ({num_parameters(loaded.model) / 1e6:.1f}M parameters{head}){extra}",
        markup=False, soft_wrap=True,
    )


@app.command()
@declared(TrainRunConfig, TrainConfig)
def train(
    manifest_path: Annotated[Path, typer.Argument(metavar="MANIFEST", help="Manifest made by `fedw2v prepare`.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the training metrics as JSON only.")] = False,
    **options: Any,
) -> None:
    """Train a CTC model centrally on the corpus train split (a run directory with a checkpoint per epoch)."""
    import json

    from fedw2v import train_run
    from fedw2v.cli_options import values
    from fedw2v.ui.console import console, err_console, train_progress
    from fedw2v.ui.render import train_table

    config = config_or_usage_error(TrainRunConfig.build, str(manifest_path), values(TrainConfig, options),
                                   **values(TrainRunConfig, options))
    with train_progress(enabled=not json_out) as progress:
        outcome = train_run.run(config, on_model=_say_model, progress=progress,
                                say=lambda line: err_console.print(line, markup=False, soft_wrap=True))
    if json_out:
        typer.echo(json.dumps({"run": str(config.out), "checkpoint": str(outcome.checkpoint),
                               "model": outcome.model_name, **outcome.metrics.to_dict()}))  # fmt: skip
    else:
        console.print(train_table(outcome.metrics, outcome.model_name, outcome.checkpoint))


@app.command()
@declared(EvaluateConfig, DecodeConfig)
def evaluate(
    model: Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP)],
    manifest_path: Annotated[
        Path | None, typer.Option("--manifest", help="Manifest with the split to score (with --participation: "
                                  "default the run's clients manifest).")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Also score per group: speaker.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the hypotheses (and per-utterance errors) to this Parquet file.",
                                  click_type=OutputPath("file"))
    ] = None,
    allow_pickle: AllowPickle = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the scores as JSON only.")] = False,
    participation: Annotated[
        bool, typer.Option("--participation", help="MODEL is a federated run: score its kept checkpoints on every "
                           "client's local test split, by rounds each client took part in.")
    ] = False,
    rounds: Annotated[str, typer.Option(help="With --participation: checkpoint rounds to score [default: all kept].")]
    = "",
    plot: Annotated[
        Path | None, typer.Option(help="With --participation: PNG plot path [default: RUN/plots/participation.png].",
                                  click_type=OutputPath("file"))
    ] = None,
    **options: Any,
) -> None:
    """Decode a whole corpus split (no length filter) and score it: WER and CER, optionally per speaker."""
    import json

    from fedw2v import beam, manifest
    from fedw2v import evaluate as ev
    from fedw2v.model import load_model
    from fedw2v.ui.console import console, progress_bar
    from fedw2v.ui.render import evaluate_report

    config, decode = build(EvaluateConfig, options), build(DecodeConfig, options)
    if participation:
        _evaluate_participation(model, manifest_path, rounds, plot, config.device, json_out, decode.beam)
        return
    source = manifest.read(_evaluate_manifest(manifest_path, by), allow_outside_audio=config.allow_outside_audio)
    ev.split_rows(source, config.split)  # fail before loading the model
    files = beam.prepare(decode)
    loaded = load_model(model, allow_pickle=allow_pickle)
    if not json_out:
        _say_model(loaded)
    search = beam.for_model(files, decode, loaded, say=None if json_out else _say, weights=False)
    with progress_bar(f"decoding {config.split}") as update:
        result = ev.evaluate(source, loaded.model, loaded.processor, config, str(loaded.source), progress=update,
                             search=search, decode=decode, say=None if json_out else _say)
    if out is not None:
        ev.write_hypotheses(result, out)
    if json_out:
        typer.echo(json.dumps(result.to_dict(speakers=by == "speaker")))
        return
    for item in evaluate_report(result, by == "speaker", out):
        console.print(item)


def _evaluate_manifest(manifest_path: Path | None, by: str | None) -> Path:
    if manifest_path is None:
        raise UsageError("--manifest is required (except with --participation)")
    if by not in (None, "speaker"):
        raise UsageError(f"--by must be speaker, not {by!r}")
    return manifest_path


def _evaluate_participation(run: str, manifest_path: Path | None, rounds: str, plot: Path | None, device: str,
                            json_out: bool, beam: bool = False) -> None:
    import json

    from fedw2v import participation as part
    from fedw2v.ui.console import console, progress_bar
    from fedw2v.ui.render import participation_table

    from fedw2v.config.options import parse_rounds

    if beam:
        raise UsageError("--participation scores greedy decoding; --decoder beam does not apply")
    wanted = list(config_or_usage_error(parse_rounds, rounds, "--rounds"))
    with progress_bar("scoring checkpoints") as update:
        report = part.analyse(run, manifest_path, wanted or None, device,
                              progress=lambda label, done, total: update(done, total))
    out = part.plot(report, plot or Path(run) / "plots" / "participation.png")
    if json_out:
        typer.echo(json.dumps({**report.to_dict(), "plot": str(out)}))
        return
    console.print(participation_table(report))
    if report.clients_without_test:
        console.print(f"clients without a local test split (not scored): {len(report.clients_without_test)}")
    console.print(f"plot: {out}")


@app.command()
@declared(TranscribeConfig, DecodeConfig)
def transcribe(
    audio: Annotated[list[Path], typer.Argument(metavar="AUDIO...", help="Audio files (wav, flac, ogg, mp3, sph, …).",
                                                readable=False)],
    model: ModelOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write one file per input here instead of printing.",
                                             click_type=OutputPath("dir"))] = None,
    allow_pickle: AllowPickle = False,
    **options: Any,
) -> None:
    """Transcribe audio files with a CTC model (default: the newest run's latest checkpoint)."""
    from fedw2v import beam
    from fedw2v import transcribe as tx
    from fedw2v.decode import Decoder
    from fedw2v.device import resolve_device
    from fedw2v.model import default_source, resolve
    from fedw2v.plain_model import load_for_inference

    config = build(TranscribeConfig, options)
    decode = build(DecodeConfig, options)
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    files = beam.prepare(decode)
    loaded, engine = load_for_inference(resolve(model) if model else default_source(), config.engine, allow_pickle)
    _say_model(loaded, f"; forward pass: {engine}")
    search = beam.for_model(files, decode, loaded, say=_say)
    decoder = Decoder(loaded.model, loaded.processor, resolve_device(config.device))
    failed = tx.run(audio, decoder, config, out, str(loaded.source), echo=lambda text: typer.echo(text, nl=False),
                    say=_say, beam=search)
    del search  # its temporary lexicon (from an ARPA file's words) goes with it, before the process ends early
    click.get_current_context().ensure_object(dict)[EXIT_NOW] = True  # nothing left to tear down: `run_main`
    if failed:
        raise typer.Exit(1)


def _say(line: str) -> None:
    from fedw2v.ui.console import err_console

    err_console.print(line, markup=False, soft_wrap=True)


@app.command()
@declared(SimulateConfig)
def simulate(
    clients_manifest: Annotated[
        Path, typer.Argument(metavar="CLIENTS_MANIFEST", help="Partitioned manifest made by `fedw2v partition`.")
    ],
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Flower's and Ray's own logs.")] = False,
    **options: Any,
) -> None:
    """Federated fine-tuning on Flower's Ray-backed simulation engine: checkpoints every round, resumable."""
    from fedw2v import runs
    from fedw2v.fl.simulate import simulate as run_simulation
    from fedw2v.ui.console import console
    from fedw2v.ui.progress import RunDisplay
    from fedw2v.ui.render import simulate_table

    if not clients_manifest.is_file():
        raise InputError(f"{clients_manifest}: no such manifest", hint="make it with `fedw2v partition`")
    config = build(SimulateConfig, options, clients_manifest=str(clients_manifest.resolve()))
    try:
        with RunDisplay(config.rounds, console) as display:
            state = run_simulation(config, reporter=display, verbose=verbose)
    finally:
        if runs.checkpoint_rounds(config.run_dir):
            runs.mark_latest_run(config.run_dir)
    console.print(simulate_table(config, state))
    console.print(f"checkpoints: {config.run_dir}/checkpoints (LATEST = round {state.round}); metrics: "
                  f"{config.run_dir}/metrics.jsonl; plot: {config.run_dir}/plots/wer.png", soft_wrap=True)


@app.command()
@declared(FootprintConfig)
def footprint(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A federated run made by `fedw2v simulate`.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON only.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", help="PNG of EER against layer (default: RUN_DIR/plots/footprint-eer.png).",
            click_type=OutputPath("file"),
        ),
    ] = None,
    **options: Any,
) -> None:
    """Speaker-privacy attack on a run's client updates: EER per layer of footprint trials (REFERENCE.md §4)."""
    import json

    from fedw2v.plots import eer_per_layer
    from fedw2v.privacy import attack as fp
    from fedw2v.ui.console import console, err_console
    from fedw2v.ui.render import footprint_table

    indicator = options.get("indicator_manifest")
    if indicator is not None and not indicator.is_file():
        raise InputError(f"--indicator {indicator}: no such manifest file")
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: must be a .png file path")
    config = build(FootprintConfig, options)
    with err_console.status("footprint analysis", spinner="dots") as status:
        live = err_console.is_terminal and not json_out
        report = fp.analyse(run_dir, config, progress=(lambda message: status.update(message)) if live else None)
    target = plot if plot is not None else Path(run_dir) / "plots" / "footprint-eer.png"
    eer_per_layer(report.layers, {r.round: r.result.eer for r in report.rounds}, target, average=report.average,
                  title=f"{Path(run_dir).name}: footprint attack, EER per layer (lower = more identity leaks)")
    if json_out:
        typer.echo(json.dumps({**json.loads(fp.report_json(report)), "plot": str(target)}))
        return
    console.print(footprint_table(report))
    console.print(f"plot: {target}", soft_wrap=True)


def main() -> None:
    """The `fedw2v` executable (tests call `app`)."""
    run_main(app)


if __name__ == "__main__":  # pragma: no cover
    main()
