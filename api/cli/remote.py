"""``confledger reload`` and ``confledger rollback``: acting on a running service over HTTP."""

from __future__ import annotations

import contextlib
import getpass
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, NoReturn

import typer
from rich.text import Text

from confledger import __version__
from confledger.api.cli.app import JsonOption, app, err
from confledger.api.cli.render import print_json, print_operation

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_SERVICE_URL", "service_base_url"]

UrlOption = Annotated[
    str, typer.Option("--url", envvar="CONFLEDGER_URL", help="Base URL of the running confledger service.")
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        show_default=False,
        help="File holding the admin token (default: CONFLEDGER_ADMIN_TOKEN, else the file `serve` wrote "
        "beside the database).",
    ),
]
ServiceDatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        "-d",
        envvar="CONFLEDGER_DATABASE_URL",
        show_default=False,
        help="The service's database; locates the default token file.",
    ),
]
ServiceConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="CONFLEDGER_CONFIG",
        show_default=False,
        help="The service's config file; locates the default token file.",
    ),
]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the service.")]
DEFAULT_SERVICE_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1/config"


def _service_error(message: str) -> NoReturn:
    err.print(Text.assemble(("error", "red"), f": {message}"), soft_wrap=True)
    raise typer.Exit(2)


def _token_file_candidates(database: str | None, config: Path | None) -> list[Path]:
    """Where `serve` may have written its token file, most specific first.

    `serve` keeps it beside an SQLite log (`<db>.admin-token`) or, for PostgreSQL, beside the config
    (`confledger.admin-token`). The CLI may not know which database the service uses: with only
    `--config`, both places beside the config are looked at.
    """
    from confledger.api.settings import absolute, default_database_url, token_file_path

    candidates: list[Path] = []
    # A malformed URL: the places beside the config are still worth a look.
    with contextlib.suppress(Exception):
        candidates.append(token_file_path(database or default_database_url(config), config))
    base = absolute(config).parent if config is not None else Path.cwd()
    candidates += [base / "confledger.db.admin-token", base / "confledger.admin-token"]
    return list(dict.fromkeys(candidates))


class AdminToken(NamedTuple):
    value: str
    source: str  # where it came from, for the answer to a refusal


def _admin_token(token_file: Path | None, database: str | None, config: Path | None) -> AdminToken:
    """The admin token: --token-file, else CONFLEDGER_ADMIN_TOKEN, else the 0600 file `serve` wrote."""
    if token_file is None:
        from_env = os.environ.get("CONFLEDGER_ADMIN_TOKEN", "").strip()
        if from_env:
            return AdminToken(from_env, "CONFLEDGER_ADMIN_TOKEN")
        candidates = _token_file_candidates(database, config)
        token_file = next((path for path in candidates if path.exists()), None)
        if token_file is None:
            looked = ", ".join(str(path) for path in candidates)
            _service_error(
                f"no admin token: set CONFLEDGER_ADMIN_TOKEN or pass --token-file (looked in {looked})"
            )
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        _service_error(
            f"no admin token: set CONFLEDGER_ADMIN_TOKEN or pass --token-file (no token file at {token_file})"
        )
    except (OSError, UnicodeDecodeError) as exc:
        _service_error(f"cannot read the token file {token_file}: {type(exc).__name__}")
    if not token:
        _service_error(f"the token file {token_file} is empty")
    return AdminToken(token, f"the token file {token_file}")


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "no detail"
    if not isinstance(body, dict):
        return response.reason_phrase or "no detail"
    detail = body.get("detail")
    if isinstance(detail, list):  # a 422 from request validation
        detail = "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail
        )
    text = str(detail or response.reason_phrase or "no detail")
    code = body.get("code")
    return f"{text} [{code}]" if isinstance(code, str) and code else text


def _shown(text: str) -> str:
    """``text`` with the user part of any URL in it masked: a proxy or a basic-auth front may have put a
    credential there, and an error line ends up in terminals, CI logs and tickets."""
    return re.sub(r"//[^/@\s]*@", "//***@", text)


def service_base_url(url: str) -> str:
    """The service's base URL from what a user gives ``--url``: the tour's ``$API`` (the base with the
    API's prefix) and ``host:port`` without a scheme (as curl takes it) name the service too; they were
    a bare 404 and a "missing protocol" error."""
    base = url.strip().rstrip("/").removesuffix(API_PREFIX).rstrip("/")
    return base if "://" in base else f"http://{base}"


def _call_service(
    url: str, path: str, body: dict[str, Any], token: AdminToken, timeout: float
) -> dict[str, Any]:
    """POST to the service; anything but an operation result is one stderr line and exit code 2."""
    url = service_base_url(url)
    endpoint = url + API_PREFIX + path
    headers = {
        "Authorization": f"Bearer {token.value}",
        "User-Agent": f"confledger-cli/{__version__}",
        # Recorded as trigger "cli" and actor "cli:<user>" (the token still decides what is allowed).
        "X-Confledger-Client": "cli",
        "X-Confledger-User": getpass.getuser(),
    }
    import httpx

    try:
        with httpx.Client(timeout=timeout) as client:
            response = client.post(endpoint, json=body, headers=headers)
    except httpx.TimeoutException:
        _service_error(f"confledger at {_shown(url)} did not answer within {timeout:g} s")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _service_error(f"cannot reach confledger at {_shown(url)}: {_shown(reason)}")
    status = response.status_code
    if status == 401:
        # A token file left from before the service was given CONFLEDGER_ADMIN_TOKEN is the usual cause.
        _service_error(
            f"the service refused the token from {token.source} (401): {_detail(response)}; the service may "
            "use another one: set CONFLEDGER_ADMIN_TOKEN, or pass --token-file"
        )
    if status == 403:
        _service_error(f"forbidden (403): {_detail(response)}")
    if status == 409:
        running = None
        with contextlib.suppress(ValueError, AttributeError):
            running = response.json().get("running_operation_id")
        suffix = f" (running operation {running})" if running else ""
        _service_error(f"conflict (409): {_detail(response)}{suffix}")
    try:
        data = response.json()
    except ValueError:
        data = None
    # 200, and a failed rollback's 400/404, carry the operation; anything else is the service's error.
    if status in (200, 400, 404) and isinstance(data, dict) and "operation_id" in data:
        return data
    _service_error(f"the service answered HTTP {status}: {_detail(response)}")


def _finish_operation(operation: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(operation)
    else:
        print_operation(operation)
    if not operation.get("success"):
        raise typer.Exit(1)


@app.command("reload")
def reload_command(
    force: Annotated[bool, typer.Option("--force", help="Apply even if the config did not change.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Load and validate only; apply nothing.")
    ] = False,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Another config file, inside the service's allowed directories."),
    ] = None,
    url: UrlOption = DEFAULT_SERVICE_URL,
    token_file: TokenFileOption = None,
    database: ServiceDatabaseOption = None,
    config: ServiceConfigOption = None,
    timeout: TimeoutOption = 60.0,
    as_json: JsonOption = False,
) -> None:
    """Reload the running service's config (exit 0 applied, 1 failed or rolled back, 2 not done)."""
    token = _admin_token(token_file, database, config)
    config_source = source
    if source is not None and Path(source).exists():
        # A path that exists here is meant from here; the service checks it against its allow-list.
        config_source = str(Path(source).absolute())
    body = {"force": force, "dry_run": dry_run, "config_source": config_source}
    _finish_operation(_call_service(url, "/reload", body, token, timeout), as_json)


@app.command("rollback")
def rollback_command(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="[HASH]", help="An applied config's hash or prefix (default: the previous one)."
        ),
    ] = None,
    url: UrlOption = DEFAULT_SERVICE_URL,
    token_file: TokenFileOption = None,
    database: ServiceDatabaseOption = None,
    config: ServiceConfigOption = None,
    timeout: TimeoutOption = 60.0,
    as_json: JsonOption = False,
) -> None:
    """Roll the running service back (exit 0 done, 1 refused or failed, 2 not reached)."""
    token = _admin_token(token_file, database, config)
    _finish_operation(_call_service(url, "/rollback", {"target_hash": target}, token, timeout), as_json)
