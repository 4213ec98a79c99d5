"""The command line, thin: it parses options and calls vitshrink's API.

    vitshrink search [RECIPE] [--trials N] [--timeout 2h] [--storage URL] [--executor local|ray|tune]
    vitshrink studies | pareto STUDY | show STUDY TRIAL | export STUDY --trial N | plot STUDY | compare A B
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
import warnings
from collections import Counter
from typing import Any, Optional

import optuna
import pandas as pd
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .data import DataError
from .errors import ConfigError
from .exporting import ExportError, card_path
from .models import ModelError
from .objectives import get_objective
from .plotting import PlotError, plot_comparison, plot_history, plot_study
from .search import SearchError, StorageError, pareto_trials, run_search
from .search._artifacts import ArtifactError, config_of
from .search._budget import is_not_run
from .search._driver import max_pruned
from .search._schema import (FAIL_REASON_ATTR, LABEL_ATTR, LATENCY_IQR_ATTR, PARAMS_ATTR, PRUNED_REASON_ATTR,
                             SCREENED_ATTR, STOPPED_ATTR, reason_of, role_of)
from .search._storage import describe_storage, fail_own_running_trials, mask_url
from .spaces import CompressionConfig, parse_duration, resolve_recipe
from .studies import StudyHandle, StudyNotFound, TrialNotAvailable, compare_studies, list_studies, open_study

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search Pareto-optimal compressions of vision transformers (accuracy, latency, size).")
console = Console(stderr=True)
out = Console()
STATE: dict[str, Any] = {"debug": False}

log = logging.getLogger("vitshrink")


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every stage and trial."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and the final table."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    STATE.update(debug=debug, quiet=quiet)
    level = logging.DEBUG if verbose or debug else logging.WARNING if quiet else logging.INFO
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False)
    else:  # a log file: one plain line per record, never wrapped at 80 columns
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_MaskPasswords())
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    for noisy in ("optuna", "ray", "torch", "onnxruntime", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not (verbose or debug) else logging.INFO)

    # Optuna logs a failed trial with its traceback at WARNING; vitshrink already logs the reason in
    # one line, so Optuna's own records show only with --debug (and pass the password mask).
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.ERROR)
    if not debug:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class _MaskPasswords(logging.Filter):
    """Mask URL passwords in every log record (the message and its arguments, once formatted)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = _mask(text)
        if masked != text:
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None:
            _mask_exception(record.exc_info[1])
        return True


def _mask_exception(exc: BaseException) -> None:
    """Mask passwords in an exception's message (and its causes') before it is printed."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if exc.args and any(isinstance(a, str) and _mask(a) != a for a in exc.args):
            exc.args = tuple(_mask(a) if isinstance(a, str) else a for a in exc.args)
        exc = exc.__cause__ or exc.__context__


# The exceptions a user can cause (reported in one line, exit code 2).
USER_ERRORS = (ConfigError, DataError, ModelError, SearchError, StorageError, ArtifactError, StudyNotFound,
               TrialNotAvailable, ExportError, PlotError)


def _mask(text: str) -> str:
    """`mask_url` on any text."""
    return mask_url(text) if "://" in text else text


def _fail(exc: BaseException) -> None:
    if STATE.get("debug"):
        _mask_exception(exc)
        sys.stderr.write("".join(traceback.format_exception(exc)))
    console.print(f"[bold red]error:[/] {escape(_mask(str(exc)))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _format_table(df, fmt: str, columns: list[str] | None = None) -> None:
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter(f"--format {fmt!r}: use table, csv or json")
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
        return
    if fmt == "json":
        sys.stdout.write(df.to_json(orient="records", indent=2, date_format="iso") + "\n")
        return

    cols = columns or list(df.columns)
    table = Table(show_lines=False)
    for c in cols:
        table.add_column(c, overflow="fold")
    for _, row in df.iterrows():
        table.add_row(*["" if (not isinstance(v, (list, tuple, dict)) and pd.isna(v)) else _fmt(v) for v in (row[c] for c in cols)])
    out.print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pareto_records(handle) -> list[dict[str, Any]]:
    """The Pareto trials as JSON records: the study's objectives and the metrics every trial measures
    (read by name), then what the trial stored about itself."""

    records = []
    wanted = dict.fromkeys(("accuracy", "latency_ms", "size_bytes", *handle.objectives))
    for t in pareto_trials(handle.study):
        values = handle.values_of(t, wanted)
        if values["size_bytes"] is not None:
            values["size_bytes"] = int(values["size_bytes"])
        records.append({"trial": t.number, **values, "test_accuracy": handle.test_accuracy(t.number),
                        "latency_iqr_ms": t.user_attrs.get(LATENCY_IQR_ATTR), "params": t.user_attrs.get(PARAMS_ATTR),
                        "macs": handle.values_of(t, ["macs"])["macs"], "role": role_of(t),
                        "label": t.user_attrs.get(LABEL_ATTR), "config": config_of(t).to_dict()})
    return records


@app.command()
def search(
    recipe: Optional[str] = typer.Argument(None, help="A recipe TOML file or built-in name (default: quickstart)."),
    trials: Optional[int] = typer.Option(None, "--trials", "-n", help="Completed trials wanted in the study."),
    timeout: Optional[str] = typer.Option(None, help="Stop starting trials after this long (e.g. 90s, 10m, 2h)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default sqlite:///vitshrink.db)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: the recipe's)."),
    model: Optional[str] = typer.Option(None, "--model", help="The teacher's timm architecture."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="The teacher's weights (safetensors/pth)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="digits, fashion-mnist, cifar10 or image-folder."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where the dataset's files are."),
    sampler: Optional[str] = typer.Option(
        None, help="vitshrink (the default: scores candidates before training), nsga2, tpe, gp or random."),
    seed_with: Optional[str] = typer.Option(None, "--seed-with", help="'reference': enqueue the hand-picked set."),
    executor: str = typer.Option("local", help="local, or tune to run trials as Ray Tune trials on a Ray cluster "
                                 "(results under ARTIFACTS/tune/STUDY); ray is the same executor, by its former name."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local one)."),
    workers: int = typer.Option(1, help="Concurrent trials on Ray (Tune's max concurrent trials)."),
    gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial", help="GPUs each Tune trial asks for "
                                         "(fractions share a GPU); refused on a cluster without GPUs."),
    artifacts: Optional[str] = typer.Option(None, help="Folder for the saved models (default: beside the storage)."),
    new_study: bool = typer.Option(False, "--new-study", help="Start a new study instead of resuming."),
    grace_period: int = typer.Option(30, "--grace-period", min=1,
                                     help="Seconds without a heartbeat before a RUNNING trial is failed and retried."),
) -> None:
    """Run (or resume) a search; running the same command again resumes it."""
    try:
        r = resolve_recipe(recipe)
        r = r.with_overrides(trials=trials, timeout=parse_duration(timeout), sampler=sampler, seed_with=seed_with,
                             dataset=dataset, data_dir=data_dir, teacher_model=model, teacher_checkpoint=checkpoint)
        if model and not checkpoint:
            r = r.with_overrides(teacher_checkpoint=None)
        _run_search_with_progress(r, storage, study, new_study, artifacts, executor, address, workers, grace_period,
                                  gpus_per_trial)
    except USER_ERRORS as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _interrupted(storage)


def _interrupted(storage: str | None) -> None:
    """Ctrl-C: fail (and queue for retry) any trial this process still holds RUNNING, then exit 130."""
    failed = []
    try:
        failed = fail_own_running_trials(storage, "interrupted by the user (Ctrl-C); retried when the search resumes")
    except Exception as exc:  # noqa: BLE001 - the next run fails stale trials anyway
        log.warning("could not mark the running trial as failed: %s", exc)
    extra = f" ({len(failed)} running trial(s) marked failed)" if failed else ""
    console.print(f"[yellow]interrupted[/]{extra}: completed trials are stored and the interrupted trial is queued "
                  "to run again; run the same command to resume", highlight=False, soft_wrap=True)
    raise typer.Exit(130)


def _run_search_with_progress(r, storage, study_name, new_study, artifacts, executor, address, workers,
                              grace_period=30, gpus_per_trial=0.0) -> None:
    quiet = STATE.get("quiet")
    plain = not out.is_terminal  # output to a file or pipe: a line per finished trial instead of a live bar
    console.print(f"[bold]vitshrink search[/] {r.name}: {r.dataset}, teacher {r.teacher_model}, "
                  f"{r.trials} trials, storage {describe_storage(storage)}", soft_wrap=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[best]}"), console=console, transient=False,
                        disable=bool(quiet) or plain or not console.is_terminal)
    with progress:
        teacher_task = progress.add_task("teacher epochs", total=None, best="", visible=False)
        trial_task = progress.add_task("trials", total=r.trials, best="")

        def on_epoch(epoch: int, total: int, loss: float) -> None:
            progress.update(teacher_task, visible=True, total=total, completed=epoch, best=f"loss {loss:.3f}")

        def on_trial(st, frozen, counts) -> None:
            if is_not_run(frozen):  # a budget slot given back to another driver: nothing ran
                return
            if plain and not quiet:
                print(_trial_line(frozen, counts, r.trials, r.objectives), flush=True)
            done = [t for t in st.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
            best = ""
            if done:
                best = " · ".join(_best(done, r.objectives)) + f" · failed {counts['FAIL']} · pruned {counts['PRUNED']}"
            progress.update(trial_task, completed=counts["COMPLETE"], best=best)
            if frozen.state.name == "FAIL" and executor != "local":  # local trials log their own failure
                log.warning("trial %d failed: %s", frozen.number, frozen.user_attrs.get(FAIL_REASON_ATTR))

        summary = run_search(r, storage=storage, study_name=study_name, new_study=new_study, artifact_dir=artifacts,
                             executor=executor, address=address, workers=workers, on_trial=on_trial,
                             on_teacher_epoch=on_epoch, grace_period=grace_period, gpus_per_trial=gpus_per_trial)
    pruned = (f", {summary.pruned} pruned (screened, stopped behind their peers or impossible: "
              "see each trial's reason)") if summary.pruned else ""
    console.print(f"study {summary.study.study_name!r}: {summary.completed} completed, {summary.failed} failed{pruned}, "
                  f"{summary.new_trials} run now in {summary.seconds:.0f} s (stopped by {summary.stopped_by})",
                  soft_wrap=True)

    handle = StudyHandle(summary.study, storage or "")
    df = handle.pareto()
    if len(df):
        _pareto_table(df, summary.study.study_name, handle.objectives)
    if summary.stopped_by == "failures":
        _stopped_by_failures(summary.study, r)
    if summary.stopped_by == "pruned":
        _stopped_by_pruning(summary.study, r)


def _best(done, objectives: tuple[str, ...]) -> list[str]:
    """The best value of each objective among the completed trials `done`, as "best <column> <value>"."""

    parts = []
    for i, name in enumerate(objectives):
        o = get_objective(name)
        best = (max if o.maximize else min)(t.values[objectives.index(name)] for t in done)
        parts.append(f"{'best ' if i == 0 else ''}{o.column} {o.show(best)}")
    return parts


def _stopped_by_failures(study, r) -> None:
    """Too many trials failed in this run: name the most common reason and exit 1."""

    reasons = Counter(t.user_attrs.get(FAIL_REASON_ATTR) or "no reason recorded"
                      for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL")
    reason, n = reasons.most_common(1)[0]
    limit = r.max_failures if r.max_failures is not None else max(5, r.trials)
    console.print(f"[bold red]error:[/] search stopped: {limit} trials failed in this run (study.max_failures = "
                  f"{limit}); most common reason ({n}x): {_mask(reason)}. Fix the cause (see `vitshrink show "
                  f"{study.study_name} N` for a trial) and run the same command to resume, or raise "
                  "study.max_failures in the recipe", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _stopped_by_pruning(study, r) -> None:
    """Nearly every sample was impossible, screened or stopped: name the most common reason and exit 1."""

    reasons = Counter(t.user_attrs.get(PRUNED_REASON_ATTR) or "no reason recorded"
                      for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED")
    reason, n = reasons.most_common(1)[0]
    console.print(f"[bold red]error:[/] search stopped: {max_pruned(r)} sampled configurations in this run were "
                  f"pruned (impossible, or screened / stopped as unable to enter the front); most common reason "
                  f"({n}x): {_mask(reason)}. Narrow the search space so that its dimensions fit together (or relax "
                  "[constraints] that no candidate meets), then run the same command to resume",
                  highlight=False, soft_wrap=True)
    raise typer.Exit(1)


_TABLE_COLUMNS = ["trial", "accuracy", "test_accuracy", "latency_ms", "latency_iqr_ms", "size_bytes", "label"]
# Output to a file or pipe: the columns that fit 80 characters, the label cut to what is left.
_PLAIN_COLUMNS = (("trial", "trial", "{:.0f}".format), ("accuracy", "val_acc", "{:.4f}".format),
                  ("test_accuracy", "test_acc", "{:.4f}".format), ("latency_ms", "latency_ms", "{:.3f}".format),
                  ("size_bytes", "size_kB", lambda v: f"{v / 1e3:.1f}"))
PLAIN_WIDTH = 80


def _study_columns(objectives: tuple[str, ...]) -> tuple[list[str], tuple]:
    """(rich table columns, plain columns) of a study's Pareto table: accuracy and latency as today,
    then each objective of the study in its own column (size when it is one)."""

    extra = [n for n in objectives if n not in ("accuracy", "latency_ms")]
    table = _TABLE_COLUMNS[:5] + extra + ["label"]
    plain = _PLAIN_COLUMNS[:4] + tuple((n, get_objective(n).column, get_objective(n).show) for n in extra)
    return table, plain


def _trial_line(frozen, counts: dict[str, int], budget: int, objectives: tuple[str, ...]) -> str:
    """One line per finished trial, for logs: number, state, progress, objectives (by name) and label,
    or why it failed or was pruned."""

    head = f"trial {frozen.number} {frozen.state.name} [{counts['COMPLETE']}/{budget}]"
    if frozen.state.name == "COMPLETE":
        shown = {"accuracy": "acc {:.4f}".format, "latency_ms": "latency {:.3f} ms".format,
                 "size_bytes": lambda v: f"size {v / 1e3:.1f} kB"}
        parts = [shown[n](v) if n in shown else f"{get_objective(n).column} {get_objective(n).show(v)}"
                 for n, v in zip(objectives, frozen.values)]
        text = " ".join(parts) + f"  {frozen.user_attrs.get(LABEL_ATTR) or ''}"
    else:
        text = _mask(reason_of(frozen) or "no reason recorded")
    return f"{head} {text}".replace("\r", " ").replace("\n", " ").rstrip()


def _pareto_table(df, study_name: str, objectives: tuple[str, ...]) -> None:
    """The Pareto table: a rich table on a terminal, else plain text that fits `PLAIN_WIDTH` columns."""
    table_columns, plain_columns = _study_columns(objectives)
    if out.is_terminal:
        _format_table(df, "table", table_columns)
        return

    def cell(value, fmt) -> str:
        return "-" if value is None or pd.isna(value) else fmt(value)

    rows = [[cell(row[c], fmt) for c, _, fmt in plain_columns] for _, row in df.iterrows()]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, (_, h, _) in enumerate(plain_columns)]
    room = max(8, PLAIN_WIDTH - sum(widths) - 2 * len(widths))
    cut = False
    lines = ["  ".join(h.rjust(w) for (_, h, _), w in zip(plain_columns, widths)) + "  label"]
    for r, label in zip(rows, df["label"]):
        label = "" if label is None or (isinstance(label, float) and pd.isna(label)) else str(label)
        if len(label) > room:
            label, cut = label[:room - 3] + "...", True
        lines.append(("  ".join(v.rjust(w) for v, w in zip(r, widths)) + "  " + label).rstrip())
    if cut:
        lines.append(f"labels cut to fit; every column: vitshrink pareto {study_name} --format csv")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


@app.command()
def pareto(
    study: str = typer.Argument("quickstart", help="Study name."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL."),
    format: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
) -> None:
    """The Pareto-optimal trials: trial number, objectives and config."""
    try:
        handle = open_study(study, storage)
        if format == "json":
            sys.stdout.write(json.dumps(_pareto_records(handle), indent=2) + "\n")
            return
        if format == "table":
            _pareto_table(handle.pareto(), study, handle.objectives)
            _pruned_counts(handle)
            return
        _format_table(handle.pareto(), format)
    except USER_ERRORS as exc:
        _fail(exc)


def _pruned_counts(handle) -> None:
    """One line under the Pareto table: trials screened (never trained) and stopped early."""
    trials = handle.study.get_trials(deepcopy=False)

    screened = sum(t.state.name == "PRUNED" and SCREENED_ATTR in t.user_attrs for t in trials)
    stopped = sum(t.state.name == "PRUNED" and STOPPED_ATTR in t.user_attrs for t in trials)
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    impossible = sum(t.state.name == "PRUNED" for t in trials) - screened - stopped
    console.print(f"{complete} completed, {screened} screened (not trained), {stopped} stopped early, {impossible} "
                  "impossible (none eligible for the front)", highlight=False, soft_wrap=True)


@app.command()
def studies(
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL."),
    format: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
) -> None:
    """List the studies in a storage with their progress and best values."""
    try:
        _format_table(list_studies(storage), format)
    except USER_ERRORS as exc:
        _fail(exc)


# --- show / export / plot / compare: querying studies and shipping their models ---------------------------------


def _busy(text: str):
    """A spinner on stderr while a slow step runs (silent with --quiet)."""

    return contextlib.nullcontext() if STATE.get("quiet") else console.status(text)


@app.command()
def show(
    study: str = typer.Argument(..., help="Study name."),
    trial: int = typer.Argument(..., help="Trial number."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL."),
    format: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
) -> None:
    """One trial in full: config, each build stage's record, objectives, latency spread, test accuracy, failure."""
    try:
        handle = open_study(study, storage)
        info = handle.describe(trial)
        if format == "json":
            sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
            return
        if format == "csv":
            _format_table(handle.trials().query(f"trial == {trial}"), "csv")
            return
        if format != "table":
            raise typer.BadParameter(f"--format {format!r}: use table, csv or json")
        _show_table(info)
    except USER_ERRORS as exc:
        _fail(exc)


def _show_table(info: dict[str, Any]) -> None:
    head = Table(show_header=False, box=None, title=f"{info['study']} · trial {info['trial']}", title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    measured = {**(info.get("metrics") or {}), **info["objectives"]}  # by name: objectives or not
    others = [(name, value) for name, value in info["objectives"].items()
              if name not in ("accuracy", "latency_ms", "size_bytes", "macs")]
    rows = [("state", info["state"]), ("role", info["role"]), ("label", info["label"]),
            ("val accuracy", measured.get("accuracy")), ("test accuracy", info["test_accuracy"]),
            ("teacher accuracy", info["teacher_accuracy"]), ("accuracy drop", info["accuracy_drop"]),
            ("latency ms (median)", measured.get("latency_ms")),
            ("latency IQR ms / CV", f"{_fmt(info['latency_iqr_ms'])} / {_fmt(info['latency_cv'])}"
             if info["latency_iqr_ms"] is not None else None),
            ("size bytes", None if measured.get("size_bytes") is None else int(measured["size_bytes"])),
            *others, ("params", info["params"]), ("MACs", info["macs"]),
            ("feasible", info["feasible"]), ("seconds", info["seconds"]), ("fail reason", info["fail_reason"]),
            ("pruned reason", info.get("pruned_reason")), ("rungs", info.get("rungs") or None)]
    for k, v in rows:
        if v is not None:
            head.add_row(k, _fmt(v))
    out.print(head)
    if info["config"]:
        cfg = CompressionConfig.from_dict(info["config"])
        out.print("config: " + (cfg.summary() if not cfg.is_identity else "teacher (all identity settings)"))
    if info["records"]:
        out.print("build stages:")
        for r in info["records"]:
            main = {"stage", "transform", "seconds", "params_before", "params_after", "macs_before", "macs_after"}
            notes = " ".join(f"{k}={json.dumps(v)}" for k, v in r.items() if k not in main)
            out.print(f"  {r.get('stage')}/{r.get('transform')}: params {r.get('params_before')} -> "
                      f"{r.get('params_after')}, MACs {r.get('macs_before')} -> {r.get('macs_after')}, "
                      f"{r.get('seconds')} s" + (f"; {notes}" if notes else ""), highlight=False, soft_wrap=True)


@app.command()
def export(
    study: str = typer.Argument(..., help="Study name."),
    trial: int = typer.Option(..., "--trial", "-t", help="A completed trial (see `vitshrink pareto`)."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx, torchscript or safetensors."),
    out_path: str = typer.Option(..., "--out", "-o", help="File to write; a model card goes to <file>.card.json."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL."),
) -> None:
    """Export a trial's model (ONNX, TorchScript or safetensors + config) with a JSON model card."""
    try:
        handle = open_study(study, storage)
        with _busy(f"exporting trial {trial} of {study} as {format}"):
            path = handle.export(trial, format, out_path)
        card = json.loads(card_path(path).read_text())
        check = card["check"]
        console.print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB) and {card_path(path).name}; "
                      f"checked against {card['checked_against']}: max |diff| {check['max_abs_diff']:.2g}, "
                      f"argmax agreement {check['argmax_agreement']:.3f}", highlight=False)
    except USER_ERRORS as exc:
        _fail(exc)


@app.command()
def plot(
    study: str = typer.Argument(..., help="Study name."),
    out_path: str = typer.Option("pareto.png", "--out", "-o", help=".png/.svg/.pdf, or .html (needs plotly)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL."),
    history: bool = typer.Option(False, "--history", help="Plot hypervolume against search time instead."),
) -> None:
    """Plot accuracy vs latency (marker size = model size), the Pareto front, teacher and references;
    with --history, the hypervolume against the search's wall-clock time."""
    try:
        with _busy(f"plotting {study}"):
            handle = open_study(study, storage)
            path = plot_history([handle], out_path) if history else plot_study(handle, out_path)
        console.print(f"wrote {path}", highlight=False)
    except USER_ERRORS as exc:
        _fail(exc)


@app.command()
def compare(
    studies_: list[str] = typer.Argument(..., metavar="STUDY...", help="Two or more study names."),
    out_path: Optional[str] = typer.Option(None, "--out", "-o", help="Also plot the fronts (.png or .html)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (all studies are read from it)."),
    format: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
) -> None:
    """Compare studies: their hypervolumes (teacher-normalised) as a table, their fronts on one plot."""
    try:
        handles = [open_study(name, storage) for name in studies_]
        _format_table(compare_studies(handles), format)
        if out_path:
            path = plot_comparison(handles, out_path)
            console.print(f"wrote {path}", highlight=False)
    except USER_ERRORS as exc:
        _fail(exc)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
