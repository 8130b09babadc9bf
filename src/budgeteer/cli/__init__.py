"""The ``budgeteer`` command line: the demo, a scope's meters, and its limits.

Installed with the optional extra ``budgeteer[cli]`` (typer and rich); ``import budgeteer`` never
imports this package. Commands::

    budgeteer demo [--ledger URL] [--runs N] [--seed S] [--pace F]
    budgeteer usage SCOPE [--json] --ledger URL
    budgeteer limit set SCOPE DIMENSION AMOUNT [--window W] [--tz TZ] --ledger URL
    budgeteer limit list SCOPE [--json] --ledger URL
    budgeteer limit remove SCOPE DIMENSION [--window W] [--tz TZ] --ledger URL

``--ledger`` defaults to ``$BUDGETEER_LEDGER``, else ``sqlite:///budgeteer.db`` (the demo alone
defaults to a throw-away file). Exit codes: 0 success; 1 the command ran but the answer is
"no" (a cap exceeded in the demo, no such limit to remove) or the ledger failed; 2 bad input,
reported in one line that names the field, with no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, NoReturn
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.live import Live

from budgeteer.cli import _render
from budgeteer.cli.demo import DEFAULT_RUNS, DEFAULT_SEED, ORG, DemoResult, RunProgress, run_demo
from budgeteer.errors import Amount, BackendUnavailable, BudgeteerError, InvalidInput
from budgeteer.ledger import Ledger
from budgeteer.model import DIMENSIONS, Limit, LimitHeadroom, Usage

__all__ = ["app", "main"]

DEFAULT_LEDGER = "sqlite:///budgeteer.db"
"""The ledger used when neither ``--ledger`` nor ``$BUDGETEER_LEDGER`` names one."""
LEDGER_ENV = "BUDGETEER_LEDGER"
"""The environment variable holding the default ledger URL."""
EXIT_NO = 1
"""The command ran, and the answer is "no" (or the ledger failed)."""
EXIT_BAD_INPUT = 2
"""An argument was refused; nothing was changed."""

app = typer.Typer(
    name="budgeteer",
    help="Hard, exact, hierarchical budgets for LLM agents: inspect and set a ledger's limits, "
    "or watch a simulated fleet of agents run into them (budgeteer demo).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
limit_app = typer.Typer(
    help="Set, list and remove a scope's limits.", no_args_is_help=True, add_completion=False
)
app.add_typer(limit_app, name="limit")

LedgerOption = Annotated[
    str,
    typer.Option(
        "--ledger",
        envvar=LEDGER_ENV,
        metavar="URL",
        help="The ledger: sqlite:///relative.db, sqlite:////absolute.db or memory://.",
    ),
]
ScopeArgument = Annotated[
    str,
    typer.Argument(
        metavar="SCOPE", help="A scope path such as org:acme/team:search.", show_default=False
    ),
]
DimensionArgument = Annotated[
    str,
    typer.Argument(
        metavar="DIMENSION",
        help=f"What the limit caps: one of {', '.join(DIMENSIONS)}.",
        show_default=False,
    ),
]
WindowOption = Annotated[
    str,
    typer.Option(
        "--window",
        metavar="WINDOW",
        help="lifetime, daily, weekly, monthly, or rolling:<span> such as rolling:5h "
        "(spans in s, m, h or d).",
    ),
]
TzOption = Annotated[
    str | None,
    typer.Option(
        "--tz", metavar="ZONE", help="IANA time zone of a daily, weekly or monthly window [UTC]."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def main() -> None:
    """Run the ``budgeteer`` command line (the console script's entry point)."""
    app()


# --------------------------------------------------------------------------------------------
# Plumbing: errors, consoles, ledgers


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"budgeteer: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn budgeteer's errors into one line on stderr and an exit code, without a traceback."""
    try:
        yield
    except InvalidInput as error:
        _fail(str(error), EXIT_BAD_INPUT)
    except BackendUnavailable as error:
        _fail(f"cannot open the ledger: {error}", EXIT_NO)
    except BudgeteerError as error:
        _fail(str(error), EXIT_NO)


def _console() -> Console:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped or captured output: rich would assume 80 columns and wrap the tables' numbers.
        console = Console(width=160)
    return console


def _sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite://`` URL (as ``SQLiteBackend.from_url`` reads it), else ``None``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        return None
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return Path(path) if path else None


def _open(url: str, *, must_exist: bool = False) -> Ledger:
    """Open the ledger at ``url``; read-only commands refuse to create a new SQLite file."""
    if must_exist:
        path = _sqlite_file(url)
        if path is not None and not path.exists():
            raise InvalidInput(
                "--ledger", url, f"no ledger file at {path} (set --ledger or ${LEDGER_ENV})"
            )
    return Ledger(url)


# --------------------------------------------------------------------------------------------
# budgeteer demo


@app.command()
def demo(
    ledger: Annotated[
        str | None,
        typer.Option(
            "--ledger",
            metavar="URL",
            help="Run against this ledger instead of a throw-away SQLite file, to inspect it "
            "afterwards with `budgeteer usage org:acme --ledger URL`.",
            show_default=False,
        ),
    ] = None,
    runs: Annotated[
        int, typer.Option(min=1, max=120, help="How many agents run at once (12: one per role).")
    ] = DEFAULT_RUNS,
    seed: Annotated[int, typer.Option(help="Seed of the simulated usage.")] = DEFAULT_SEED,
    pace: Annotated[
        float,
        typer.Option(min=0.0, max=10.0, help="Multiplies the simulated latencies (0: flat out)."),
    ] = 1.0,
) -> None:
    """Simulate a fleet of agents spending against one budget hierarchy; no network, no API key.

    A dozen agents run at once under org:acme, then team, engineer and session scopes, each
    through its own RunGuard on a shared SQLite ledger: they call real model names (priced from
    the bundled genai-prices table) and tools, until their task is done or a cap refuses them.
    One is a runaway that repeats the same tool call. At the end every limit of every scope is
    read back from the ledger: the exit code is 1 if any committed usage is above its cap.
    """
    console = _console()
    with _errors(), _quiet_guard_logs(), _demo_ledger(ledger) as opened:
        if console.is_terminal:
            result = _demo_live(console, opened, runs=runs, seed=seed, pace=pace)
        else:
            console.print(f"Running {runs} simulated agents against {opened.url} ...")
            result = run_demo(opened, runs=runs, seed=seed, pace=pace)
    console.print(_render.runs_table(result))
    console.print(_render.rollup_table(result))
    console.print(_render.summary_text(result))
    console.print(_render.verdict_text(result))
    if ledger is not None:
        console.print(
            f"Inspect the ledger: budgeteer usage {ORG} --ledger {ledger}", highlight=False
        )
    if not result.check.ok:
        raise typer.Exit(EXIT_NO)


def _demo_live(
    console: Console, ledger: Ledger, *, runs: int, seed: int, pace: float
) -> DemoResult:
    started = time.monotonic()
    with Live(console=console, refresh_per_second=10, transient=True) as live:

        def update(progress: Sequence[RunProgress]) -> None:
            scopes = sorted({ORG, *(run.plan.team for run in progress)})
            budgets = [
                head
                for scope in scopes
                for head in ledger.usage(scope).limits
                if head.dimension == "cost_usd"
            ]
            live.update(_render.live_view(progress, budgets, time.monotonic() - started))

        return run_demo(ledger, runs=runs, seed=seed, pace=pace, on_progress=update)


@contextmanager
def _demo_ledger(url: str | None) -> Iterator[Ledger]:
    if url is not None:
        with Ledger(url) as ledger:
            yield ledger
        return
    with (
        tempfile.TemporaryDirectory(prefix="budgeteer-demo-") as directory,
        Ledger(f"sqlite:///{Path(directory) / 'demo.db'}") as ledger,
    ):
        yield ledger


@contextmanager
def _quiet_guard_logs() -> Iterator[None]:
    # The guard logs a warning when a run nears a cap. With no logging configured, Python's
    # last-resort handler would print those lines through the live view; the demo's tables
    # tell the same story.
    logger = logging.getLogger("budgeteer")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------------------------------
# budgeteer usage


@app.command()
def usage(
    scope: ScopeArgument, ledger: LedgerOption = DEFAULT_LEDGER, as_json: JsonOption = False
) -> None:
    """Show SCOPE's meters: lifetime usage and holds per dimension, and each limit's headroom.

    Usage counts everything charged to SCOPE or any scope below it. Each limit shows the usage
    inside its current window, the holds outstanding, the cap and what remains.
    """
    with _errors(), _open(ledger, must_exist=True) as opened:
        meters = opened.usage(scope)
    if as_json:
        document = {
            "scope": meters.scope,
            "used": {d: _render.json_amount(v) for d, v in _nonzero(meters.used)},
            "held": {d: _render.json_amount(v) for d, v in _nonzero(meters.held)},
            "cost_unknown": meters.cost_unknown,
            "limits": [_limit_json(head) for head in meters.limits],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    _console().print(_render.usage_view(meters))


def _nonzero(usage: Usage) -> Iterator[tuple[str, Amount]]:
    for dimension in DIMENSIONS:
        value = usage.get(dimension)
        if value:
            yield dimension, value


def _limit_json(head: LimitHeadroom) -> dict[str, object]:
    return {
        "dimension": head.dimension,
        "window": _render.window_text(head.window),
        "window_key": head.window.key,
        "limit": _render.json_amount(head.limit),
        "used": _render.json_amount(head.used),
        "held": _render.json_amount(head.held),
        "remaining": _render.json_amount(head.remaining),
    }


# --------------------------------------------------------------------------------------------
# budgeteer limit ...


@limit_app.command("set")
def limit_set(
    scope: ScopeArgument,
    dimension: DimensionArgument,
    amount: Annotated[
        str,
        typer.Argument(
            metavar="AMOUNT",
            help="The cap: a count, seconds, or dollars for cost_usd (e.g. 20 or 0.50).",
            show_default=False,
        ),
    ],
    window: WindowOption = "lifetime",
    tz: TzOption = None,
    ledger: LedgerOption = DEFAULT_LEDGER,
) -> None:
    """Create or replace SCOPE's cap on DIMENSION over a window.

    A scope has at most one limit per dimension and window; setting it again replaces the cap.
    A new windowed limit counts usage from now on; a lifetime limit sees all history.
    """
    with _errors():
        limit = Limit(dimension, _parse_amount(amount), _render.parse_window(window, tz))
        with _open(ledger) as opened:
            opened.set_limit(scope, limit)
    _console().print(
        f"Set {scope}: {dimension} <= {_render.amount_text(dimension, limit.max)} "
        f"({_render.window_text(limit.window)})",
        highlight=False,
    )


def _parse_amount(text: str) -> Decimal:
    # Decimal, not float: "0.1" dollars must be exactly 0.1 (Limit turns counts back into ints).
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidInput("AMOUNT", text, "expected a number such as 20 or 0.50") from None
    return amount


@limit_app.command("list")
def limit_list(
    scope: ScopeArgument, ledger: LedgerOption = DEFAULT_LEDGER, as_json: JsonOption = False
) -> None:
    """List SCOPE's own limits (not those of the scopes above it)."""
    with _errors(), _open(ledger, must_exist=True) as opened:
        limits = opened.limits(scope)
    if as_json:
        document = [
            {
                "dimension": limit.dimension,
                "limit": _render.json_amount(limit.max),
                "window": _render.window_text(limit.window),
                "window_key": limit.window.key,
            }
            for limit in limits
        ]
        typer.echo(json.dumps(document, indent=2))
        return
    _console().print(_render.limit_list_table(scope, limits))


@limit_app.command("remove")
def limit_remove(
    scope: ScopeArgument,
    dimension: DimensionArgument,
    window: WindowOption = "lifetime",
    tz: TzOption = None,
    ledger: LedgerOption = DEFAULT_LEDGER,
) -> None:
    """Remove SCOPE's cap on DIMENSION over a window (exit code 1 if there was none)."""
    with _errors():
        parsed = _render.parse_window(window, tz)
        with _open(ledger, must_exist=True) as opened:
            removed = opened.remove_limit(scope, dimension, parsed)
    described = f"{dimension} ({_render.window_text(parsed)})"
    if not removed:
        _fail(f"no {described} limit on {scope}", EXIT_NO)
    _console().print(f"Removed {scope}: {described}", highlight=False)
