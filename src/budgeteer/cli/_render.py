"""Rich renderables for the CLI: the demo's live view and final tables, and a scope's meters.

Pure functions from budgeteer objects to ``rich`` renderables; nothing here prints or reads a
ledger, so the commands in ``budgeteer.cli`` decide what goes where.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from budgeteer.cli.demo import DemoResult, RunProgress
from budgeteer.errors import Amount, BudgetExceeded, InvalidInput
from budgeteer.model import DIMENSIONS, Limit, LimitHeadroom, ScopeUsage, Window, span_text

_STATE_STYLES = {
    "waiting": "dim",
    "running": "cyan",
    "completed": "green",
    "stopped": "yellow",
    "failed": "bold red",
}
_CALENDAR_NAMES = {"day": "daily", "week": "weekly", "month": "monthly"}


# --------------------------------------------------------------------------------------------
# Amounts and windows as text


def amount_text(dimension: str, amount: Amount) -> str:
    """An amount for people: ``$0.4212``, ``12,345`` tokens, ``1.25`` s."""
    if dimension == "cost_usd":
        return f"${usd_text(Decimal(amount))}"
    if isinstance(amount, float):
        return f"{amount:,.3f}"
    return f"{amount:,}"


def usd_text(amount: Decimal) -> str:
    """Dollars without exponent, at least to the cent and at most to the nano-dollar."""
    text = format(amount.normalize(), "f")
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def window_text(window: Window) -> str:
    """The CLI's own spelling of ``window`` (what ``--window`` accepts), else its storage key."""
    if window.kind == "lifetime":
        return "lifetime"
    if window.kind == "rolling":
        short = f"rolling:{span_text(window.seconds)}"
        return short if parse_window(short) == window else window.key
    if window.kind == "pacing":
        return window.key
    name = _CALENDAR_NAMES[window.unit or "day"]
    if window.unit == "week" and window.week_start != 0:
        return window.key
    return name if window.tz == "UTC" else f"{name} ({window.tz})"


def parse_window(text: str, tz: str | None = None) -> Window:
    """Parse ``--window``: ``lifetime``, ``daily``, ``weekly``, ``monthly``, ``rolling:5h``.

    Rolling spans take ``s``, ``m``, ``h`` or ``d`` (bare numbers are seconds); a storage key
    such as ``rolling:18000:300`` or ``calendar:day:Europe/Berlin:0`` is accepted too.

    Raises:
        InvalidInput: naming ``--window`` or ``--tz``.
    """
    value = text.strip().lower()
    if tz is not None and value not in {"daily", "day", "weekly", "week", "monthly", "month"}:
        raise InvalidInput("--tz", tz, "only calendar windows (daily, weekly, monthly) take a tz")
    if value == "lifetime":
        return Window.lifetime()
    for unit, name in _CALENDAR_NAMES.items():
        if value in (unit, name):
            return Window.calendar(unit, tz=tz or "UTC")  # type: ignore[arg-type]
    if text.count(":") >= 2 or value.startswith("pacing:"):
        return Window.from_key(text.strip())
    if value.startswith("rolling:"):
        span = value.removeprefix("rolling:")
        sizes = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
        digits, size = (span[:-1], sizes[span[-1]]) if span[-1:] in sizes else (span, 1)
        if digits.isdigit() and int(digits) > 0:
            return Window.rolling(int(digits) * size)
    raise InvalidInput(
        "--window", text, "use lifetime, daily, weekly, monthly or rolling:<span> (e.g. rolling:5h)"
    )


def json_amount(amount: Amount) -> int | float | str:
    """An amount for JSON: dollars as an exact decimal string, counts and seconds as numbers."""
    if isinstance(amount, Decimal):
        return format(amount.normalize(), "f")
    return amount


# --------------------------------------------------------------------------------------------
# `budgeteer usage` and `budgeteer limit list`


def usage_view(meters: ScopeUsage) -> RenderableType:
    """A scope's lifetime meters and its limits, as two tables."""
    totals = Table(title=f"Usage of {meters.scope}", title_justify="left")
    totals.add_column("Dimension")
    totals.add_column("Used (lifetime)", justify="right")
    totals.add_column("Held", justify="right")
    for dimension in DIMENSIONS:
        used, held = meters.used.get(dimension), meters.held.get(dimension)
        if used or held:
            used_text = amount_text(dimension, used)
            if dimension == "cost_usd" and meters.cost_unknown:
                used_text += " (at least: some costs unknown)"
            totals.add_row(dimension, used_text, amount_text(dimension, held))
    if not totals.rows:
        totals.add_row(Text("nothing recorded", style="dim"), "", "")
    if not meters.limits:
        return Group(totals, Text(f"No limits on {meters.scope}.", style="dim"))
    return Group(totals, limits_table(meters.limits, title=f"Limits of {meters.scope}"))


def limits_table(limits: Sequence[LimitHeadroom], *, title: str) -> Table:
    """Each limit with its window, usage, holds, cap and what remains."""
    table = Table(title=title, title_justify="left")
    for name in ("Dimension", "Window"):
        table.add_column(name)
    for name in ("Used", "Held", "Limit", "Remaining"):
        table.add_column(name, justify="right")
    table.add_column("Used %", justify="right")
    for head in limits:
        dim = head.dimension
        table.add_row(
            dim,
            window_text(head.window),
            amount_text(dim, head.used),
            amount_text(dim, head.held),
            amount_text(dim, head.limit),
            amount_text(dim, head.remaining),
            _percent(head),
        )
    return table


def limit_list_table(scope: str, limits: Sequence[Limit]) -> RenderableType:
    """A scope's own limits (no usage)."""
    if not limits:
        return Text(f"No limits on {scope}.", style="dim")
    table = Table(title=f"Limits of {scope}", title_justify="left")
    table.add_column("Dimension")
    table.add_column("Limit", justify="right")
    table.add_column("Window")
    for limit in limits:
        table.add_row(
            limit.dimension, amount_text(limit.dimension, limit.max), window_text(limit.window)
        )
    return table


def _percent(head: LimitHeadroom) -> Text:
    if not head.limit:
        return Text("-")
    fraction = float(head.used) / float(head.limit)
    style = "red" if fraction > 1 else "yellow" if fraction >= 0.8 else ""
    return Text(f"{fraction:.0%}", style=style)


# --------------------------------------------------------------------------------------------
# The demo


def _leaf(scope: str) -> str:
    return scope.rsplit("/", 1)[-1]


def _stopped_text(stopped_by: BudgetExceeded | None) -> tuple[str, str]:
    if stopped_by is None:
        return "", ""
    return _leaf(stopped_by.scope), stopped_by.dimension


def live_view(
    progress: Sequence[RunProgress], budgets: Sequence[LimitHeadroom], elapsed_s: float
) -> RenderableType:
    """The demo while it runs: every run's spend and state, and the shared caps filling up."""
    table = Table(
        title=f"budgeteer demo: {len(progress)} simulated agents, {elapsed_s:4.1f} s",
        title_justify="left",
    )
    table.add_column("Session")
    table.add_column("Team / engineer")
    table.add_column("Agent")
    table.add_column("Model")
    table.add_column("State")
    for name in ("Iter", "Tools", "Tokens", "Cost"):
        table.add_column(name, justify="right")
    table.add_column("Stopped by")
    for run in progress:
        scope, dimension = _stopped_text(run.stopped_by)
        usage = run.usage
        table.add_row(
            _leaf(run.plan.path),
            f"{run.plan.profile.team} / {_leaf(run.plan.engineer).removeprefix('engineer:')}",
            run.plan.profile.label,
            run.plan.profile.model,
            Text(run.state, style=_STATE_STYLES[run.state]),
            str(usage.iterations),
            str(usage.tool_calls),
            f"{usage.tokens:,}",
            f"${usage.cost_usd or Decimal(0):.4f}",
            f"{scope} {dimension}".strip(),
        )
    bars = Table.grid(padding=(0, 1))
    bars.add_column()
    bars.add_column()
    bars.add_column(justify="right")
    for head in budgets:
        bars.add_row(
            f"{head.scope} {head.dimension} ({window_text(head.window)})",
            ProgressBar(total=float(head.limit), completed=float(head.used), width=30),
            f"${head.used:.4f} / ${head.limit:.2f}"
            if isinstance(head.used, Decimal)
            else f"{amount_text(head.dimension, head.used)} / "
            f"{amount_text(head.dimension, head.limit)}",
        )
    return Group(table, bars)


def runs_table(result: DemoResult) -> Table:
    """Per run: what it spent, how it ended, and which scope stopped it on which dimension."""
    table = Table(title="Runs", title_justify="left")
    table.add_column("Run (scope path)", overflow="fold")
    table.add_column("Agent")
    for name in ("Calls", "Tools", "Tokens", "Cost"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("Status")
    table.add_column("Stopped by (scope, dimension)")
    for outcome in result.runs:
        report = outcome.report
        scope, dimension = _stopped_text(report.stopped_by)
        status = Text(report.status, style=_STATE_STYLES[report.status])
        if outcome.error:
            status.append(f" {outcome.error}")
        cost = report.usage.cost_usd
        table.add_row(
            report.path,
            outcome.plan.profile.label,
            str(report.model_calls),
            str(report.usage.tool_calls),
            f"{report.usage.tokens:,}",
            "unknown" if cost is None else f"${cost:.4f}",
            status,
            f"{scope}, {dimension}" if scope else "",
        )
    return table


def rollup_table(result: DemoResult) -> Table:
    """Per org, team and engineer scope: what it spent, and each limit's use against its cap."""
    table = Table(title="Roll-up per level", title_justify="left")
    table.add_column("Scope")
    for name in ("Cost", "Tokens", "Requests"):
        table.add_column(name, justify="right")
    table.add_column("Limit")
    table.add_column("Used / cap", justify="right")
    table.add_column("Used %", justify="right")
    for meters in result.rollup:
        depth = meters.scope.count("/")
        used = meters.used
        first = (
            "  " * depth + _leaf(meters.scope),
            amount_text("cost_usd", used.cost_usd or Decimal(0)),
            f"{used.tokens:,}",
            f"{used.requests:,}",
        )
        heads = meters.limits or ()
        if not heads:
            table.add_row(*first, "", "", "")
        for i, head in enumerate(heads):
            cells = first if i == 0 else ("", "", "", "")
            table.add_row(
                *cells,
                f"{head.dimension} ({window_text(head.window)})",
                f"{amount_text(head.dimension, head.used)} / "
                f"{amount_text(head.dimension, head.limit)}",
                _percent(head),
            )
    return table


def summary_text(result: DemoResult) -> Text:
    """How the runs ended, in one line."""
    reports = [outcome.report for outcome in result.runs]
    stopped = [r for r in reports if r.stopped_by is not None]
    own = sum(1 for r in stopped if r.stopped_by is not None and r.stopped_by.scope == r.path)
    completed = sum(1 for r in reports if r.status == "completed")
    failed = sum(1 for r in reports if r.status == "failed")
    text = Text(
        f"{len(reports)} runs in {result.duration_s:.1f} s: {completed} completed, "
        f"{len(stopped)} stopped ({own} by their own session caps, "
        f"{len(stopped) - own} by a shared cap above them)"
    )
    if failed:
        text.append(f", {failed} failed", style="bold red")
    return text


def verdict_text(result: DemoResult) -> Text:
    """The cap check's verdict: no cap exceeded, or each one that was."""
    check = result.check
    if check.ok:
        return Text(
            f"✓ No cap exceeded: {check.limits_checked} limits on {len(check.scopes)} scopes "
            "checked, committed usage <= cap for every one, and no hold left outstanding.",
            style="bold green",
        )
    text = Text("✗ CAP EXCEEDED:", style="bold red")
    for head in check.violations:
        text.append(
            f"\n  {head.scope} {head.dimension} ({window_text(head.window)}): used "
            f"{amount_text(head.dimension, head.used)} > "
            f"cap {amount_text(head.dimension, head.limit)}"
        )
    for scope in check.holds_left:
        text.append(f"\n  {scope}: holds still outstanding after every run ended")
    return text
