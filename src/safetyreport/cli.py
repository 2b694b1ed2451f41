"""The ``safetyreport`` command: serve, migrate, clinic, user, audit."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from safetyreport.audit import (
    ChainReport,
    VerifyReport,
    checkpoints,
    offline,
    restores,
    service,
    verify_chains,
)
from safetyreport.audit.chain import SYSTEM_CLI
from safetyreport.audit.signing import (
    SigningKeyError,
    existing_public_key,
    key_file,
    load_signer,
)
from safetyreport.auth import totp
from safetyreport.auth.permissions import ROLES
from safetyreport.auth.users import (
    add_clinic,
    add_user,
    disable_user,
    list_clinics,
    revoke_sessions,
    set_clinic_timezone,
    set_password,
)
from safetyreport.db.embedded import EmbeddedPostgresMissing, owner_url
from safetyreport.db.migrations import MigrationError, migrate
from safetyreport.db.pool import connect
from safetyreport.errors import NotFound, ServiceUnavailable, ValidationFailed
from safetyreport.settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


async def _migrate(settings: Settings, url: str) -> None:
    applied = await migrate(
        url, app_password=settings.database.app_password, record_rule_changes=True
    )
    for migration in applied:
        print(f"applied migration {migration.version:04d}_{migration.name}")


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    asyncio.run(_migrate(settings, owner_url(settings)))
    print("database schema is up to date")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from safetyreport import demo
    from safetyreport.app import check_schema

    settings = _settings()
    url = owner_url(settings)
    if settings.database.url is None:
        # Workers use the server this process started rather than joining it themselves:
        # worker processes exit without atexit hooks, so a worker that joined would keep
        # the embedded server running after the service stopped.
        os.environ["DATABASE_URL"] = url
    if args.no_migrate:
        # The URL may be the application role's, which cannot migrate: only check.
        try:
            asyncio.run(_with_conn(url, check_schema))
        except ServiceUnavailable as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            return 1
    else:
        # Migrate once, here, before any worker starts.
        asyncio.run(_migrate(settings, url))
    # Make the signing key (on first start) once, here, too.
    signer = load_signer(settings)
    if args.demo:
        created = asyncio.run(_with_conn(url, lambda conn: demo.seed(conn, settings.alerts)))
        print("demo data created" if created else "demo data already present")
    where = (
        "embedded PostgreSQL in " + str(settings.data_dir)
        if not settings.database.url
        else "DATABASE_URL"
    )
    print(f"safetyreport serving on http://{args.host}:{args.port} (database: {where})")
    print(f"  API schema: http://{args.host}:{args.port}/schema")
    print(f"  audit signing key {signer.key_id}: {key_file(settings)}")
    if args.demo:
        print(f"  demo clinic {demo.DEMO_CLINIC[0]}; logins (username / password):")
        for username, role, password in demo.DEMO_USERS:
            print(f"    {username:8} / {password:24} ({role})")
    sys.stdout.flush()
    _exit_cleanly_on_signals()
    _run_server(settings, args.host, args.port, args.workers)
    return 0


def _run_server(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from safetyreport.metrics.registry import MULTIPROCESS_DIR
    from safetyreport.server import server_config

    config = server_config(settings, host, port, workers)
    if workers == 1:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:
            raise SystemExit(3)  # the app refused to start (uvicorn's exit code for it)
        return
    # uvicorn binds the workers' shared socket with protocol 0, so asyncio does not see a
    # TCP socket and leaves Nagle's algorithm on: every response body then waits ~40 ms
    # for the client's delayed ACK (Kludex/uvicorn#3149). Rewrap it as TCP.
    bound = config.bind_socket()
    sock = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    # The workers count into files of this run's own folder, so that /metrics, whichever
    # worker answers it, adds up all of them (see metrics.registry).
    with tempfile.TemporaryDirectory(prefix="safetyreport-metrics-") as folder:
        os.environ[MULTIPROCESS_DIR] = folder
        Multiprocess(config, sockets=[sock]).run()


def _exit_cleanly_on_signals() -> None:
    """Turn SIGTERM and SIGINT into a normal exit once uvicorn has shut down.

    uvicorn handles the signal gracefully, then restores the previous handler and
    raises the signal again. With Python's default handler that kills the process
    (exit -15) before atexit hooks run, leaving the embedded PostgreSQL running.
    """

    def exit_normally(signum: int, frame: object) -> None:
        raise SystemExit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, exit_normally)


async def _with_conn(url: str, fn: Any) -> Any:
    conn = await connect(url)
    try:
        return await fn(conn)
    finally:
        await conn.close()


def _no_zone_warning(code: str) -> str:
    return (
        f"warning: clinic {code} has no time zone: its DEA due times are counted in UTC;"
        f" set it with 'safetyreport clinic set-timezone {code} ZONE'"
    )


def cmd_clinic_add(args: argparse.Namespace) -> int:
    async def run(conn: Any) -> int:
        result: int = await add_clinic(
            conn, args.code, args.name, SYSTEM_CLI, timezone=args.timezone
        )
        return result

    asyncio.run(_with_conn(owner_url(_settings()), run))
    print(f"clinic {args.code} created" + (f" in {args.timezone}" if args.timezone else ""))
    if args.timezone is None:
        print(_no_zone_warning(args.code), file=sys.stderr)
    return 0


def cmd_clinic_set_timezone(args: argparse.Namespace) -> int:
    async def run(conn: Any) -> None:
        await set_clinic_timezone(conn, args.code, args.zone, SYSTEM_CLI)

    asyncio.run(_with_conn(owner_url(_settings()), run))
    print(f"clinic {args.code} is in {args.zone}")
    return 0


def cmd_clinic_list(args: argparse.Namespace) -> int:
    async def run(conn: Any) -> list[Any]:
        return await list_clinics(conn)

    clinics = asyncio.run(_with_conn(owner_url(_settings()), run))
    width = max([len("CODE"), *(len(c["code"]) for c in clinics)])
    zone_width = max(
        [len("TIME ZONE"), len("(not set)"), *(len(c["timezone"] or "") for c in clinics)]
    )
    print(f"{'CODE':<{width}}  {'TIME ZONE':<{zone_width}}  NAME")
    for clinic in clinics:
        zone = clinic["timezone"] or "(not set)"
        print(f"{clinic['code']:<{width}}  {zone:<{zone_width}}  {clinic['name']}")
    for clinic in clinics:
        if clinic["timezone"] is None:
            print(_no_zone_warning(clinic["code"]), file=sys.stderr)
    return 0


def _password_from_stdin(args: argparse.Namespace) -> str | None:
    """The password on standard input; None (after saying why) without --password-stdin."""
    if not args.password_stdin:
        print("error: give the password on standard input with --password-stdin", file=sys.stderr)
        return None
    return sys.stdin.readline().rstrip("\r\n")


def cmd_user_add(args: argparse.Namespace) -> int:
    password = _password_from_stdin(args)
    if password is None:
        return 2

    async def run(conn: Any) -> int:
        result: int = await add_user(
            conn,
            username=args.username,
            password=password,
            role=args.role,
            clinics=args.clinic or [],
            all_clinics=args.all_clinics,
            actor=SYSTEM_CLI,
        )
        return result

    asyncio.run(_with_conn(owner_url(_settings()), run))
    print(f"user {args.username.strip().lower()} created")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    async def run(conn: Any) -> None:
        await disable_user(conn, args.username, SYSTEM_CLI)

    asyncio.run(_with_conn(owner_url(_settings()), run))
    print(f"user {args.username.strip().lower()} disabled; their sessions have ended")
    return 0


def cmd_user_set_password(args: argparse.Namespace) -> int:
    password = _password_from_stdin(args)
    if password is None:
        return 2

    async def run(conn: Any) -> None:
        await set_password(conn, args.username, password, SYSTEM_CLI)

    asyncio.run(_with_conn(owner_url(_settings()), run))
    print(f"password of {args.username.strip().lower()} changed; their sessions have ended")
    return 0


def cmd_user_revoke_sessions(args: argparse.Namespace) -> int:
    async def run(conn: Any) -> int:
        return await revoke_sessions(conn, args.username, SYSTEM_CLI)

    count = asyncio.run(_with_conn(owner_url(_settings()), run))
    print(f"{count} session(s) of {args.username.strip().lower()} ended")
    return 0


def cmd_user_totp_enrol(args: argparse.Namespace) -> int:
    settings = _settings()
    key = totp.load_key(settings)

    async def run(conn: Any) -> totp.Enrolment:
        return await totp.enrol(conn, args.username, key, SYSTEM_CLI)

    enrolment = asyncio.run(_with_conn(owner_url(settings), run))
    print("Second factor enrolled. Shown once only: add it to an authenticator app now.")
    print(f"  otpauth URI: {enrolment.uri}")
    print(f"  secret:      {enrolment.secret}")
    print("  recovery codes (each works once):")
    for code in enrolment.recovery_codes:
        print(f"    {code}")
    return 0


def cmd_user_totp_reset(args: argparse.Namespace) -> int:
    async def run(conn: Any) -> bool:
        return await totp.reset(conn, args.username, SYSTEM_CLI)

    removed = asyncio.run(_with_conn(owner_url(_settings()), run))
    name = args.username.strip().lower()
    print(f"second factor of {name} removed" if removed else f"{name} had no second factor")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify an export offline (EXPORT given), or else the live database's chains."""
    if args.export:
        return offline.run(args.export, args.public_key, args.checkpoint, as_json=args.json)
    settings = _settings()
    given: list[offline.Checkpoint] = []
    try:
        # The stored checkpoints' signatures are checked with the key given, or else the
        # service's own (its key file); with neither, every chain is walked whole.
        if args.public_key:
            key: Ed25519PublicKey | None = offline.load_public_key(
                Path(args.public_key).read_bytes()
            )
        else:
            key = existing_public_key(settings)
        if args.checkpoint:
            if not args.public_key or key is None:
                print(
                    "error: --checkpoint needs --public-key to check its signature",
                    file=sys.stderr,
                )
                return 2
            given = offline.load_checkpoint_files(args.checkpoint, key)
    except (OSError, ValueError, SigningKeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run(conn: Any) -> tuple[VerifyReport, checkpoints.Findings]:
        report = await verify_chains(conn, public_key=key, full=args.full)
        return report, await checkpoints.check_against_database(conn, given)

    report, findings = asyncio.run(_with_conn(owner_url(settings), run))
    problems = report.checkpoints + findings.broken
    ok = report.ok and not problems
    status = "broken" if not ok else "behind" if findings.behind else "verified"
    if args.json:
        document = {
            **msgspec.to_builtins(report),
            "ok": ok and not findings.behind,
            "status": status,
            "checkpoints": problems,
            "behind": findings.behind,
        }
        print(msgspec.json.encode(document).decode())
    else:
        for chain in report.chains:
            if chain.ok:
                print(f"ok      {chain.chain}: {chain.entries} entries {_walked_from(chain)}")
            else:
                print(f"BROKEN  {chain.chain}: entry {chain.broken_seq}: {chain.problem}")
        for problem in problems:
            print(f"BROKEN  {problem}")
        for finding in findings.behind:
            print(f"BEHIND  {finding}")
        verdict = {"verified": "verified", "broken": "FAILED", "behind": "BEHIND A SIGNED HEAD"}
        walk = (
            "every chain walked from its first entry"
            if report.full
            else f"each chain from its latest checkpoint signed with key {report.key_id} "
            "(--full walks every entry)"
        )
        print(
            f"{verdict[status]}: {report.entries} entries in "
            f"{len(report.chains)} chains ({walk}), {len(given)} checkpoints given"
        )
    # Behind a signed head (a restore or a truncation): not tampering, not a pass either.
    return {"verified": 0, "broken": 1, "behind": offline.EXIT_BEHIND}[status]


def _walked_from(chain: ChainReport) -> str:
    if chain.checkpoint_seq is None:
        return "from the first entry"
    return (
        f"after signed checkpoint #{chain.checkpoint_seq} (signed at {chain.checkpoint_signed_at})"
    )


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    """Sign every chain head now; write the newest checkpoint of each chain to a file."""
    settings = _settings()
    signer = load_signer(settings)

    async def run(conn: Any) -> list[checkpoints.SignedCheckpoint]:
        return await service.sign_all_checkpoints(conn, SYSTEM_CLI, signer)

    signed = asyncio.run(_with_conn(owner_url(settings), run))
    document = msgspec.json.format(msgspec.json.encode(signed)) + b"\n"
    if args.output == "-":
        sys.stdout.buffer.write(document)
    else:
        Path(args.output).write_bytes(document)
        print(f"{len(signed)} signed chain heads (key {signer.key_id}) written to {args.output}")
    return 0


def cmd_audit_record_restore(args: argparse.Namespace) -> int:
    """Record in the audit trail that the database was restored from a backup."""
    try:
        target = datetime.fromisoformat(args.target_time)
    except ValueError:
        print("error: --target-time: give an ISO 8601 time with an offset", file=sys.stderr)
        return 2

    async def run(conn: Any) -> restores.Restore:
        return await restores.record_restore(conn, SYSTEM_CLI, target, args.backup)

    restore = asyncio.run(_with_conn(owner_url(_settings()), run))
    print(f"recorded: {restore.describe()}")
    for chain, seq in sorted(restore.heads.items()):
        print(f"  {chain}: restored up to #{seq}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safetyreport", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate (unless --no-migrate), then serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--demo", action="store_true", help="seed a demo clinic, users and reports")
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not migrate (DATABASE_URL may be the application role's); "
        "refuse to start unless 'safetyreport migrate' has brought the schema up to date",
    )
    serve.set_defaults(func=cmd_serve)

    sub.add_parser(
        "migrate", help="apply pending database migrations (with the schema owner's URL)"
    ).set_defaults(func=cmd_migrate)

    clinic = sub.add_parser("clinic", help="manage clinics").add_subparsers(
        dest="action", required=True
    )
    clinic_add = clinic.add_parser("add", help="create a clinic")
    clinic_add.add_argument("code")
    clinic_add.add_argument("--name", required=True)
    clinic_add.add_argument(
        "--timezone",
        help="the clinic's IANA time zone, e.g. America/Los_Angeles (its DEA business days)",
    )
    clinic_add.set_defaults(func=cmd_clinic_add)
    clinic_zone = clinic.add_parser("set-timezone", help="set a clinic's IANA time zone (audited)")
    clinic_zone.add_argument("code")
    clinic_zone.add_argument("zone", help="e.g. America/Los_Angeles")
    clinic_zone.set_defaults(func=cmd_clinic_set_timezone)
    clinic.add_parser(
        "list", help="list clinics with their time zones; warns of those without one"
    ).set_defaults(func=cmd_clinic_list)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    user_add = user.add_parser("add", help="create a user; the password is read from stdin")
    user_add.add_argument("username")
    user_add.add_argument("--role", required=True, choices=ROLES)
    user_add.add_argument("--clinic", action="append", help="clinic code (repeatable)")
    user_add.add_argument("--all-clinics", action="store_true", help="auditors and admins only")
    user_add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    user_add.set_defaults(func=cmd_user_add)
    for name, func, text in (
        ("disable", cmd_user_disable, "disable a user and end their sessions at once"),
        ("revoke-sessions", cmd_user_revoke_sessions, "end every session of a user"),
        ("totp-enrol", cmd_user_totp_enrol, "enrol a second factor: prints its URI and codes"),
        ("totp-reset", cmd_user_totp_reset, "remove a user's second factor"),
    ):
        action = user.add_parser(name, help=text)
        action.add_argument("username")
        action.set_defaults(func=func)
    user_password = user.add_parser(
        "set-password", help="set a user's password (read from stdin); ends their sessions"
    )
    user_password.add_argument("username")
    user_password.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    user_password.set_defaults(func=cmd_user_set_password)

    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="action", required=True
    )
    verify = audit.add_parser(
        "verify",
        help="verify an export offline, or without EXPORT every chain in the database",
    )
    offline.add_arguments(verify, export_required=False)
    verify.add_argument(
        "--full",
        action="store_true",
        help="(the database) walk every chain from its first entry; without it each chain "
        "is walked from its latest signed checkpoint",
    )
    verify.set_defaults(func=cmd_audit_verify)
    checkpoint = audit.add_parser(
        "checkpoint",
        help="sign every chain head now; write the newest checkpoint of each chain to a file "
        "(keep it outside the database, for --checkpoint)",
    )
    checkpoint.add_argument("--output", default="-", help="the file to write (default: stdout)")
    checkpoint.set_defaults(func=cmd_audit_checkpoint)
    record_restore = audit.add_parser(
        "record-restore",
        help="after a restore from backup: record it (backup, target time, each chain's "
        "head then) in every audit chain",
    )
    record_restore.add_argument(
        "--target-time", required=True, help="the time restored to, with offset (ISO 8601)"
    )
    record_restore.add_argument("--backup", help="the label of the backup restored from")
    record_restore.set_defaults(func=cmd_audit_record_restore)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ValidationFailed as exc:
        for error in exc.errors:
            print(f"error: {error.field}: {error.message}", file=sys.stderr)
        return 2
    except NotFound as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2
    except (MigrationError, EmbeddedPostgresMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
