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
from fedw2v.errors import InputError, UsageError, exit_code_for, format_error


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
            from fedw2v.ui.console import err_console

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


def _rounds(value: str, option: str) -> tuple[int, ...]:
    """Comma-separated round numbers (empty: none); UsageError naming ``option`` otherwise."""
    try:
        return tuple(int(r) for r in _csv(value))
    except ValueError:
        raise UsageError(f"{option} must be comma-separated round numbers, not {value!r}") from None


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

    config = _config(
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
    from fedw2v.ui.console import console, err_console
    from fedw2v.ui.render import partition_table

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


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m",
        help="tiny | tiny-pretrained | a Hugging Face hub id | a local HF model directory | "
        "a fedw2v run or checkpoint directory.",
    ),
]
AllowPickle = Annotated[
    bool,
    typer.Option("--allow-pickle", help="Allow pickled weights (pytorch_model.bin); they can run code when loaded."),
]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available) | cpu | cuda.")]


def _say_model(loaded: Any, extra: str = "") -> None:
    from fedw2v.ui.console import err_console
    from fedw2v.model import num_parameters

    head = f"; new CTC head over {len(loaded.vocabulary)} characters" if loaded.new_head else ""
    err_console.print(
        f"model: {loaded.source} ({num_parameters(loaded.model) / 1e6:.1f}M parameters{head}){extra}",
        markup=False, soft_wrap=True,
    )


@app.command()
def train(
    manifest_path: Annotated[Path, typer.Argument(metavar="MANIFEST", help="Manifest made by `fedw2v prepare`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write (checkpoints/, metrics.jsonl).")],
    model: ModelOpt = "facebook/wav2vec2-large-lv60",
    recipe: Annotated[
        str | None,
        typer.Option(help="paper (Adam 1e-4/1e-3, NewBob, batch 4) | tiny (AdamW 2e-3, warm-up; for `tiny`). "
                          "Default: tiny for --model tiny, else paper. Options below override it."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the train split [recipe: 20].")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Utterances per batch at most.")] = None,
    max_batch_seconds: Annotated[
        float | None, typer.Option("--max-batch-seconds", help="Padded audio seconds per batch at most.")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam | adamw.")] = None,
    lr_encoder: Annotated[float | None, typer.Option("--lr-encoder", help="Encoder learning rate.")] = None,
    lr_head: Annotated[float | None, typer.Option("--lr-head", help="CTC head learning rate.")] = None,
    warmup_steps: Annotated[int | None, typer.Option("--warmup-steps", help="Linear warm-up steps.")] = None,
    newbob: Annotated[
        bool | None, typer.Option("--newbob/--no-newbob", help="Anneal learning rates on the corpus dev loss.")
    ] = None,
    freeze_feature_encoder: Annotated[
        bool | None, typer.Option("--freeze-feature-encoder/--train-feature-encoder", help="Keep the CNN fixed.")
    ] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", help="Batches per optimizer step.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 | bf16 | fp16 (autocast on CUDA only).")] = None,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="CUDA only.")
    ] = None,
    min_seconds: Annotated[float | None, typer.Option("--min-seconds", help="Shortest training utterance.")] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="Longest training utterance.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Audio-reading worker processes.")] = None,
    device: Device = "auto",
    seed: Seed = 0,
    allow_pickle: AllowPickle = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the training metrics as JSON only.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its newest epoch checkpoint.")
    ] = False,
    keep_checkpoints: Annotated[int, typer.Option(help="Newest epoch checkpoints kept.")] = 1,
) -> None:
    """Train a CTC model centrally on the corpus train split (a run directory with a checkpoint per epoch)."""
    import json
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedw2v import manifest, runs, train_run
    from fedw2v import train as tr
    from fedw2v.config import train as trc
    from fedw2v.batching import utterances_from_manifest
    from fedw2v.ui.console import console, err_console
    from fedw2v.model import load_model
    from fedw2v.ui.render import train_table

    spec = model or "facebook/wav2vec2-large-lv60"
    recipe_name = recipe or ("tiny" if spec == "tiny" else "paper")
    if recipe_name not in trc.RECIPES:
        raise UsageError(f"--recipe must be one of {', '.join(trc.RECIPES)}, not {recipe_name!r}")
    config = _config(
        trc.recipe, name=recipe_name, epochs=epochs, max_batch_size=batch_size, max_batch_seconds=max_batch_seconds,
        optimizer=optimizer, lr_encoder=lr_encoder, lr_head=lr_head, warmup_steps=warmup_steps, newbob=newbob,
        freeze_feature_encoder=freeze_feature_encoder, grad_accum_steps=grad_accum, precision=precision,
        gradient_checkpointing=gradient_checkpointing, min_seconds=min_seconds, max_seconds=max_seconds,
        max_steps=max_steps, num_workers=workers, device=device, seed=seed,
    )  # fmt: skip
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if keep_checkpoints < 1:
        raise UsageError("--keep-checkpoints must be at least 1")
    source = manifest.read(manifest_path)
    train_utts = utterances_from_manifest(source, split="train")
    if not train_utts:
        raise InputError(f"{manifest_path}: no train utterances to train on")
    dev_utts = utterances_from_manifest(source, split="dev") if config.newbob else []
    wanted = {
        "command": "train", "manifest": str(manifest_path.resolve()), "model_spec": spec, "recipe": recipe_name,
        "train": config.to_dict(), "train_utterances": len(train_utts), "dev_utterances": len(dev_utts),
    }  # fmt: skip
    texts = [u.text for u in train_utts]
    state = None
    if resume:
        ckpt, state, recorded = train_run.resume_point(out, wanted)
        loaded = load_model(str(ckpt), texts, allow_pickle=allow_pickle, seed=seed)
        model_name = recorded.get("model", str(loaded.source))
        log = runs.MetricsLog(out)
        dropped = log.truncate_after(state.epochs_done, key="epoch", drop=("train_end",))
        err_console.print(f"resuming {out} after epoch {state.epochs_done} ({ckpt.name}; {state.metrics['steps']} "
                          f"steps; {dropped} later events dropped from metrics.jsonl)")  # fmt: skip
    else:
        train_run.check_new(out)
        loaded = load_model(spec, texts, allow_pickle=allow_pickle, seed=seed)
        model_name = str(loaded.source)
    _say_model(loaded, f"; recipe {recipe_name}")

    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        log = runs.MetricsLog(out)
        run_config = {**wanted, "model": model_name, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        runs.write_text_atomic(out / runs.CONFIG, json.dumps(run_config, indent=2) + "\n")
        if log.path.is_file():  # a run that crashed before its first checkpoint: its events describe nothing kept
            log.truncate_after(0, key="epoch", drop=("train_end",))

    def on_epoch(epoch: int, m: Any) -> None:
        log.append(runs.json_safe({
            "event": "epoch", "epoch": epoch + 1, "loss": m.epoch_loss[-1], "dev_loss": m.dev_loss[-1],
            "steps": m.steps, "skipped_batches": m.skipped_batches, "lr_encoder": m.lr_encoder, "lr_head": m.lr_head,
            "seconds": m.seconds}))  # fmt: skip

    def on_state(st: Any) -> None:
        if st.metrics["steps"]:  # an epoch without any step (all batches skipped) leaves nothing to save
            train_run.save_epoch(loaded.model, loaded.processor, out, st, model_name, keep_checkpoints)

    with Progress(
        TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} s audio/s"), TimeElapsedColumn(),
        console=err_console, transient=True, disable=json_out or not err_console.is_terminal,
    ) as bar:  # fmt: skip
        task = bar.add_task("train", total=None, epoch="-", loss="-", speed="-")

        def progress(p: Any) -> None:
            done = p.epoch * p.batches + p.batch
            bar.update(task, completed=done, total=p.epochs * p.batches, epoch=f"{p.epoch + 1}/{p.epochs}",
                       loss=f"{p.loss:.3f}", speed=f"{p.audio_seconds_per_second:.1f}")  # fmt: skip

        metrics = tr.local_train(loaded.model, loaded.processor, train_utts, config, dev=dev_utts or None,
                                 progress=progress, on_epoch=on_epoch, on_state=on_state, resume=state)  # fmt: skip
    if metrics.steps == 0:
        raise InputError(
            f"{manifest_path}: no training step was taken ({metrics.samples} utterances within "
            f"{config.min_seconds}-{config.max_seconds} s, {metrics.skipped_batches} skipped batches); nothing saved"
        )
    ckpt = runs.latest_checkpoint(out)
    runs.mark_latest_run(out)
    log.append(runs.json_safe({"event": "train_end", "checkpoint": ckpt.name, **metrics.to_dict()}))
    if json_out:
        typer.echo(json.dumps({"run": str(out), "checkpoint": str(ckpt), "model": model_name,
                               **metrics.to_dict()}))  # fmt: skip
    else:
        console.print(train_table(metrics, model_name, ckpt))


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(
        metavar="MODEL", help="tiny | tiny-pretrained | hub id | HF model dir | run or checkpoint dir.")],
    manifest_path: Annotated[
        Path | None, typer.Option("--manifest", help="Manifest with the split to score (with --participation: "
                                  "default the run's clients manifest).")
    ] = None,
    split: Annotated[str, typer.Option(help="Corpus split to score: test | dev (| train).")] = "test",
    by: Annotated[str | None, typer.Option("--by", help="Also score per group: speaker.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the hypotheses (and per-utterance errors) to this Parquet file.")
    ] = None,
    max_batch_seconds: Annotated[
        float, typer.Option("--max-batch-seconds", help="Padded audio seconds per decoding batch at most.")
    ] = 120.0,
    device: Device = "auto",
    allow_pickle: AllowPickle = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the scores as JSON only.")] = False,
    participation: Annotated[
        bool, typer.Option("--participation", help="MODEL is a federated run: score its kept checkpoints on every "
                           "client's local test split, by rounds each client took part in.")
    ] = False,
    rounds: Annotated[str, typer.Option(help="With --participation: checkpoint rounds to score [default: all kept].")]
    = "",
    plot: Annotated[
        Path | None, typer.Option(help="With --participation: PNG plot path [default: RUN/plots/participation.png].")
    ] = None,
) -> None:
    """Decode a whole corpus split (no length filter) and score it: WER and CER, optionally per speaker."""
    import json

    from fedw2v import evaluate as ev
    from fedw2v import manifest
    from fedw2v.ui.console import console, progress_bar
    from fedw2v.model import load_model
    from fedw2v.ui.render import evaluate_table, speaker_table

    if participation:
        _evaluate_participation(model, manifest_path, rounds, plot, device, json_out)
        return
    if manifest_path is None:
        raise UsageError("--manifest is required (except with --participation)")
    if by not in (None, "speaker"):
        raise UsageError(f"--by must be speaker, not {by!r}")
    config = _config(ev.EvaluateConfig, split=split, max_batch_seconds=max_batch_seconds, device=device)
    source = manifest.read(manifest_path)
    ev.split_rows(source, split)  # fail before loading the model
    loaded = load_model(model, allow_pickle=allow_pickle)
    if not json_out:
        _say_model(loaded)
    with progress_bar(f"decoding {split}") as update:
        result = ev.evaluate(source, loaded.model, loaded.processor, config, str(loaded.source), progress=update)
    if out is not None:
        ev.write_hypotheses(result, out)
    if json_out:
        typer.echo(json.dumps(result.to_dict(speakers=by == "speaker")))
        return
    console.print(evaluate_table(result))
    if by == "speaker":
        console.print(speaker_table(result))
    if out is not None:
        console.print(f"wrote {result.hypotheses.num_rows} hypotheses to {out}")


def _evaluate_participation(run: str, manifest_path: Path | None, rounds: str, plot: Path | None, device: str,
                            json_out: bool) -> None:
    import json

    from fedw2v import participation as part
    from fedw2v.ui.console import console, progress_bar
    from fedw2v.ui.render import participation_table

    wanted = list(_rounds(rounds, "--rounds"))
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
def transcribe(
    audio: Annotated[list[Path], typer.Argument(metavar="AUDIO...", help="Audio files (wav, flac, ogg, mp3, sph, …).")],
    model: ModelOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text | json (word times) | srt.")] = "text",
    chunk_seconds: Annotated[
        float, typer.Option("--chunk-seconds", help="Longer audio is decoded in overlapping chunks of this length.")
    ] = 30.0,
    overlap_seconds: Annotated[
        float, typer.Option("--overlap-seconds", help="Context kept on each side of a chunk border.")
    ] = 1.0,
    out: Annotated[Path | None, typer.Option("--out", help="Write one file per input here instead of printing.")] = None,
    device: Device = "auto",
    allow_pickle: AllowPickle = False,
) -> None:
    """Transcribe audio files with a CTC model (default: the newest run's latest checkpoint)."""
    import json

    from fedw2v import transcribe as tx
    from fedw2v.ui.console import err_console
    from fedw2v.decode import Decoder
    from fedw2v.model import default_source, load_model
    from fedw2v.device import resolve_device

    config = _config(tx.TranscribeConfig, format=fmt, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
                     device=device)  # fmt: skip
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    loaded = load_model(model if model else default_source(), allow_pickle=allow_pickle)
    _say_model(loaded)
    decoder = Decoder(loaded.model, loaded.processor, resolve_device(config.device))
    used: set[str] = set()
    several = len(audio) > 1

    def emit(item: Any) -> None:
        if isinstance(item, tx.FileFailure):
            err_console.print(f"error: {item.error}", markup=False, soft_wrap=True)
            return
        if config.format == "json" and out is None:
            return  # one JSON document for all files, printed at the end
        text = tx.render(item, config.format, str(loaded.source))
        if out is not None:
            target = tx.output_path(out, item.file, config.format)
            n = 2
            while str(target) in used:
                target = target.with_name(f"{Path(item.file).stem}-{n}{target.suffix}")
                n += 1
            used.add(str(target))
            out.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            err_console.print(f"{item.file} -> {target}", markup=False, soft_wrap=True)
        else:
            if several:
                typer.echo(f"==> {item.file} <==")
            typer.echo(text, nl=False)
            if several:
                typer.echo("")

    results = tx.transcribe_files(audio, decoder, config, on_result=emit)
    failed = [r for r in results if isinstance(r, tx.FileFailure)]
    if config.format == "json" and out is None:
        typer.echo(json.dumps({
            "model": str(loaded.source),
            "files": [r.to_dict() for r in results if isinstance(r, tx.FileResult)],
            "errors": [r.to_dict() for r in failed],
        }, ensure_ascii=False))  # fmt: skip
    if failed:
        err_console.print(f"{len(failed)} of {len(results)} files failed", markup=False)
        raise typer.Exit(1)


@app.command()
def simulate(
    clients_manifest: Annotated[
        Path, typer.Argument(metavar="CLIENTS_MANIFEST", help="Partitioned manifest made by `fedw2v partition`.")
    ],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory, e.g. runs/NAME.")],
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Hub id | HF model dir | fedw2v run/checkpoint | tiny | tiny-pretrained.")]
    = "facebook/wav2vec2-large-lv60",
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 100,
    clients_per_round: Annotated[int, typer.Option(help="Clients sampled per round (uniform, no replacement).")] = 20,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 20,
    batch_size: Annotated[int | None, typer.Option(help="Local batch size [default: 4, tiny recipe 16].")] = None,
    lr_encoder: Annotated[float | None, typer.Option(help="Encoder learning rate [default: 1e-4].")] = None,
    lr_head: Annotated[float | None, typer.Option(help="CTC-head learning rate [default: 1e-3].")] = None,
    recipe: Annotated[str, typer.Option(help="Local recipe: paper (Adam, NewBob) | tiny (AdamW 2e-3 + warm-up).")]
    = "paper",
    local_steps: Annotated[int, typer.Option(help="Cap on local optimizer steps per round (0: none).")] = 0,
    newbob: Annotated[bool, typer.Option("--newbob/--no-newbob", help="NewBob annealing on local dev loss.")] = True,
    freeze_feature_encoder: Annotated[
        bool, typer.Option("--freeze-feature-encoder", help="Keep the CNN feature encoder fixed (never sent).")
    ] = False,
    precision: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 (autocast on CUDA).")] = "fp32",
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Recompute activations (CUDA): less memory.")
    ] = False,
    weighting: Annotated[str, typer.Option(help="Aggregation weights: num | loss | wer.")] = "num",
    eval_every: Annotated[int, typer.Option(help="Evaluate the global model every N rounds.")] = 1,
    eval_split: Annotated[str, typer.Option(help="Corpus split the server scores: test | dev.")] = "test",
    gpus_per_client: Annotated[float, typer.Option(help="GPU share per client (0.5: two per GPU).")] = 1.0,
    cpus_per_client: Annotated[float, typer.Option(help="CPU cores per client.")] = 2.0,
    min_fit_clients: Annotated[
        int, typer.Option(help="A round fails below this many successes [default: half the clients per round].")
    ] = 0,
    round_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for a round's clients; a later reply is a failure [0: no limit].")
    ] = 0.0,
    seed: Seed = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --run-dir from its LATEST checkpoint.")]
    = False,
    keep_checkpoints: Annotated[int, typer.Option(help="Newest checkpoints kept (the best one always is).")] = 3,
    footprint_rounds: Annotated[
        str, typer.Option(help="Comma-separated rounds whose client updates get footprints (fedw2v footprint).")
    ] = "",
    indicator: Annotated[
        Path | None, typer.Option(help="Manifest of the footprint indicator set [default: CLIENTS_MANIFEST].")
    ] = None,
    indicator_split: Annotated[str, typer.Option(help="Corpus split of the indicator utterances.")] = "dev",
    indicator_utterances: Annotated[int, typer.Option(help="Indicator utterances used.")] = 64,
    save_updates: Annotated[
        bool, typer.Option("--save-updates", help="Also store the footprint rounds' client weights (safetensors).")
    ] = False,
    corpus_root: Annotated[
        Path | None, typer.Option(help="Where the corpus is now, if it moved since `prepare`.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Flower's and Ray's own logs.")] = False,
) -> None:
    """Federated fine-tuning on Flower's Ray-backed simulation engine: checkpoints every round, resumable."""
    from fedw2v import runs
    from fedw2v.ui.console import console
    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.ui.progress import RunDisplay
    from fedw2v.fl.simulate import simulate as run_simulation
    from fedw2v.ui.render import simulate_table
    from fedw2v.config.train import RECIPES
    from fedw2v.config.train import recipe as train_recipe

    if recipe not in RECIPES:
        raise UsageError(f"--recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
    base = train_recipe(recipe)
    rounds_fp = _rounds(footprint_rounds, "--footprint-rounds")
    if not clients_manifest.is_file():
        raise InputError(f"{clients_manifest}: no such manifest", hint="make it with `fedw2v partition`")
    config = _config(
        SimulateConfig,
        clients_manifest=str(clients_manifest.resolve()), run_dir=str(run_dir.resolve()), model=model, rounds=rounds,
        clients_per_round=clients_per_round, local_epochs=local_epochs,
        batch_size=batch_size or base.max_batch_size, lr_encoder=base.lr_encoder if lr_encoder is None else lr_encoder,
        lr_head=base.lr_head if lr_head is None else lr_head, recipe=recipe, local_steps=local_steps, newbob=newbob,
        freeze_feature_encoder=freeze_feature_encoder, precision=precision,
        gradient_checkpointing=gradient_checkpointing, weighting=weighting, eval_every=eval_every,
        eval_split=eval_split, gpus_per_client=gpus_per_client, cpus_per_client=cpus_per_client,
        min_fit_clients=min_fit_clients, round_timeout=round_timeout, seed=seed, keep_checkpoints=keep_checkpoints,
        resume=resume,
        footprint_rounds=rounds_fp, indicator_manifest=str(indicator.resolve()) if indicator else "",
        indicator_split=indicator_split, indicator_utterances=indicator_utterances, save_updates=save_updates,
        corpus_root=str(corpus_root.resolve()) if corpus_root else "",
    )
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
def footprint(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A federated run made by `fedw2v simulate`.")],
    indicator: Annotated[
        Path | None,
        typer.Option("--indicator", help="Manifest of the indicator set (default: the run's).", dir_okay=False),
    ] = None,
    indicator_split: Annotated[
        str | None, typer.Option("--indicator-split", help="Corpus split of the indicator utterances (run's: dev).")
    ] = None,
    indicator_utterances: Annotated[
        int | None, typer.Option("--indicator-utterances", help="Indicator utterances used (run's: 64).")
    ] = None,
    rounds: Annotated[
        str, typer.Option("--rounds", help="Comma-separated rounds to analyse (default: the run's footprint rounds).")
    ] = "",
    enroll_epochs: Annotated[
        int | None, typer.Option("--enroll-epochs", help="Epochs of fine-tuning on each holdout (run's local epochs).")
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the confidence intervals.")]
    = 1000,
    device: Device = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON only.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", help="PNG of EER against layer (default: RUN_DIR/plots/footprint-eer.png).", dir_okay=False
        ),
    ] = None,
) -> None:
    """Speaker-privacy attack on a run's client updates: EER per layer of footprint trials (REFERENCE.md §4)."""
    import json

    from fedw2v import footprint as fp
    from fedw2v.ui.console import console, err_console
    from fedw2v.plots import eer_per_layer
    from fedw2v.ui.render import footprint_table

    round_list = _rounds(rounds, "--rounds")
    if indicator is not None and not indicator.is_file():
        raise InputError(f"--indicator {indicator}: no such manifest file")
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: must be a .png file path")
    for name, value in (("--indicator-utterances", indicator_utterances), ("--enroll-epochs", enroll_epochs)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1")
    config = _config(
        fp.FootprintConfig, rounds=round_list, indicator_manifest=str(indicator.resolve()) if indicator else "",
        indicator_split=indicator_split or "", indicator_utterances=indicator_utterances or 0,
        enroll_epochs=enroll_epochs or 0, bootstrap=bootstrap, device=device,
    )
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
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
