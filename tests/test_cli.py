"""The `budgeteer` command line, through typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from budgeteer import Ledger, Limit, Usage, Window
from budgeteer.cli import app

ORG = "org:acme"
TEAM = "org:acme/team:search"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A ledger with one daily cost cap on the org, some usage below it and one open hold."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger(url) as ledger:
        ledger.set_limit(ORG, Limit("cost_usd", Decimal("20"), Window.daily()))
        ledger.set_limit(TEAM, Limit("tool_calls", 50))
        ledger.charge(
            f"{TEAM}/session:s1",
            Usage(input_tokens=1200, output_tokens=300, requests=1, cost_usd=Decimal("0.0421")),
        )
        ledger.reserve(f"{TEAM}/session:s1", Usage(tool_calls=2, cost_usd=Decimal(0)))
    return url


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "usage", "limit"):
        assert command in result.output
    limit_help = runner.invoke(app, ["limit", "--help"])
    assert limit_help.exit_code == 0
    for command in ("set", "list", "remove"):
        assert command in limit_help.output
    demo_help = runner.invoke(app, ["demo", "--help"])
    assert "--runs" in demo_help.output
    assert "--seed" in demo_help.output


def test_usage_prints_the_meters_and_the_limits(runner: CliRunner, url: str) -> None:
    result = runner.invoke(app, ["usage", ORG, "--ledger", url])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "$0.0421" in out  # lifetime cost
    assert "1,500" in out  # total tokens
    assert "$20.00" in out  # the cap
    assert "$19.9579" in out  # what remains
    assert "daily" in out
    team = runner.invoke(app, ["usage", TEAM, "--ledger", url])
    assert team.exit_code == 0
    assert "tool_calls" in team.output  # the team's limit, with the open hold of 2
    assert "48" in team.output


def test_usage_json_is_exact_and_machine_readable(runner: CliRunner, url: str) -> None:
    result = runner.invoke(app, ["usage", ORG, "--ledger", url, "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["scope"] == ORG
    assert document["used"]["cost_usd"] == "0.0421"
    assert document["used"]["total_tokens"] == 1500
    assert document["held"] == {"tool_calls": 2}
    (limit,) = document["limits"]
    assert limit["dimension"] == "cost_usd"
    assert limit["window"] == "daily"
    assert (limit["limit"], limit["used"], limit["remaining"]) == ("20", "0.0421", "19.9579")


def test_the_ledger_defaults_to_the_environment(
    runner: CliRunner, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUDGETEER_LEDGER", url)
    result = runner.invoke(app, ["usage", ORG, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["used"]["requests"] == 1


def test_limit_set_list_remove(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    set_result = runner.invoke(
        app, ["limit", "set", TEAM, "tool_calls", "50", "--window", "rolling:5h", "--ledger", url]
    )
    assert set_result.exit_code == 0, set_result.output
    cost = runner.invoke(
        app,
        ["limit", "set", TEAM, "cost_usd", "0.50", "--window", "daily", "--tz",
         "Europe/Berlin", "--ledger", url],
    )  # fmt: skip
    assert cost.exit_code == 0, cost.output
    with Ledger(url) as ledger:
        assert set(ledger.limits(TEAM)) == {
            Limit("tool_calls", 50, Window.rolling(hours=5)),
            Limit("cost_usd", Decimal("0.5"), Window.daily("Europe/Berlin")),
        }

    listed = runner.invoke(app, ["limit", "list", TEAM, "--ledger", url, "--json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(json.loads(listed.stdout), key=lambda limit: limit["dimension"]) == [
        {
            "dimension": "cost_usd",
            "limit": "0.5",
            "window": "daily (Europe/Berlin)",
            "window_key": "calendar:day:Europe/Berlin:0",
        },
        {
            "dimension": "tool_calls",
            "limit": 50,
            "window": "rolling:5h",
            "window_key": "rolling:18000:300",
        },
    ]
    table = runner.invoke(app, ["limit", "list", TEAM, "--ledger", url])
    assert "rolling:5h" in table.output
    assert "$0.50" in table.output

    removed = runner.invoke(
        app, ["limit", "remove", TEAM, "tool_calls", "--window", "rolling:5h", "--ledger", url]
    )
    assert removed.exit_code == 0, removed.output
    again = runner.invoke(
        app, ["limit", "remove", TEAM, "tool_calls", "--window", "rolling:5h", "--ledger", url]
    )
    assert again.exit_code == 1
    assert "no tool_calls" in again.output
    with Ledger(url) as ledger:
        assert [limit.dimension for limit in ledger.limits(TEAM)] == ["cost_usd"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["limit", "set", ORG, "tokens", "100"], "limit.dimension"),
        (["limit", "set", ORG, "tool_calls", "lots"], "AMOUNT"),
        (["limit", "set", ORG, "tool_calls", "1.5"], "limit.max"),
        (["limit", "set", ORG, "tool_calls", "10", "--window", "hourly"], "--window"),
        (["limit", "set", ORG, "tool_calls", "10", "--tz", "Europe/Berlin"], "--tz"),
        (["limit", "set", ORG, "cost_usd", "1", "--window", "daily", "--tz", "Mars/Base"],
         "window.tz"),
        (["limit", "set", "acme", "tool_calls", "10"], "path"),
        (["usage", "not a scope"], "path"),
        (["limit", "remove", ORG, "tokens"], "dimension"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_field_and_exit_code_2(
    runner: CliRunner, url: str, args: list[str], field: str
) -> None:
    before = Path(url.removeprefix("sqlite:///")).read_bytes()
    result = runner.invoke(app, [*args, "--ledger", url])
    assert result.exit_code == 2, result.output
    assert f"invalid {field}=" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert Path(url.removeprefix("sqlite:///")).read_bytes() == before


def test_reading_a_missing_ledger_is_refused_without_creating_it(
    runner: CliRunner, tmp_path: Path
) -> None:
    missing = tmp_path / "typo.db"
    for args in (["usage", ORG], ["limit", "list", ORG], ["limit", "remove", ORG, "requests"]):
        result = runner.invoke(app, [*args, "--ledger", f"sqlite:///{missing}"])
        assert result.exit_code == 2
        assert "invalid --ledger=" in result.stderr
    assert not missing.exists()


def test_an_unopenable_ledger_is_one_line_and_exit_code_1(
    runner: CliRunner, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}"
    result = runner.invoke(app, ["limit", "set", ORG, "requests", "5", "--ledger", url])
    assert result.exit_code == 1
    assert result.stderr.startswith("budgeteer: error: cannot open the ledger")
    assert "Traceback" not in result.output


def test_demo_with_four_runs_exits_0_and_leaves_an_inspectable_ledger(
    runner: CliRunner, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = runner.invoke(app, ["demo", "--runs", "4", "--ledger", url])
    assert result.exit_code == 0, result.output
    assert "No cap exceeded" in result.output
    assert "Roll-up per level" in result.output
    assert "session:s02" in result.output  # the runaway
    usage = runner.invoke(app, ["usage", ORG, "--ledger", url, "--json"])
    assert json.loads(usage.stdout)["used"]["requests"] > 0


def test_importing_budgeteer_does_not_import_the_cli_extras() -> None:
    code = (
        "import sys, budgeteer, budgeteer.guard, budgeteer.pricing; "
        "loaded = {'typer', 'rich'} & {name.split('.')[0] for name in sys.modules}; "
        "sys.exit(sorted(loaded) or 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
