"""`carebus dashboard hash-password`: what to put in `[[dashboard.users]]`."""

from __future__ import annotations

import typer
from rich.console import Console


def register(app: typer.Typer, console: Console) -> None:
    dashboard_app = typer.Typer(help="The coordinator dashboard.", no_args_is_help=True)
    app.add_typer(dashboard_app, name="dashboard")

    @dashboard_app.command("hash-password")
    def hash_password_cmd(
        login: str = typer.Option("coordination", help="The account's login."),
    ) -> None:
        """Ask for a password (twice, not echoed) and print the settings of the account."""
        from adapters.dashboard.auth import hash_password

        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        if len(password) < 12:
            console.print("[red]refused:[/red] at least 12 characters")
            raise typer.Exit(2)
        typer.echo(
            f'[[dashboard.users]]\nlogin = "{login}"\nname = ""\n'
            f'password_scrypt = "{hash_password(password)}"'
        )
