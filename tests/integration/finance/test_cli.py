"""`tally invoice export`, `tally statement export`, `tally finance reconcile|close`, run as an
operator runs them: the installed console script in a child process."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import asyncpg

from tests.integration.finance.conftest import C, add_tenant, at, fold, purchased, record, used

TALLY = str(Path(sys.executable).with_name("tally"))
ENV = {
    "TALLY_TAX_RATES": "DE:19",
    "TALLY_ISSUER_NAME": "Tally Platform GmbH",
    "TALLY_ISSUER_COUNTRY": "DE",
    "TALLY_ISSUER_TAX_ID": "DE123456789",
}


async def tally(*args: str, cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        TALLY,
        *args,
        cwd=cwd,
        env={**os.environ, **ENV},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_invoice_export_writes_the_file_and_describes_it_in_one_json_object(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    tenant = await add_tenant(pool, "Cli Shop", country="DE")
    await record(pool, purchased(tenant, "cs_1", 100, 11900), at("2025-03-05"))

    code, out, _ = await tally(
        "invoice", "export", "--tenant", "cli shop", "--period", "2025-03", "--format", "csv",
        "--out", "exports/march.csv", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert result["path"] == "exports/march.csv"
    assert result["tenant_id"] == str(tenant) and result["documents"] == 1
    rows = list(
        csv.DictReader(io.StringIO((tmp_path / "exports/march.csv").read_text(), newline=""))
    )
    assert rows[0]["document_number"] == "INV-000001" and rows[0]["gross"] == "119.00"

    code, out, _ = await tally(
        "invoice", "export", "--all", "--period", "2025-03", "--format", "pdf", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert result["content"] == "zip" and result["path"] == "invoices-all-2025-03.zip"
    assert zipfile.ZipFile(tmp_path / result["path"]).namelist() == ["INV-000001.pdf"]

    code, out, _ = await tally(
        "invoice", "export", "--tenant", str(tenant), "--period", "2025-03", "--format", "json",
        "--out", "-", cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(out)["documents"][0]["gross_minor"] == 11900


async def test_statement_export_reconcile_and_close(pool: asyncpg.Pool, tmp_path: Path) -> None:
    tenant = await add_tenant(pool, "Stmt")
    await record(pool, purchased(tenant, "cs_1", 10, 1190), at("2025-03-05"))
    await record(pool, used(tenant, "gpt-4o", 2 * C, C, at=at("2025-03-06")), at("2025-03-06"))
    await fold(pool)

    code, out, _ = await tally(
        "statement", "export", "--tenant", "Stmt", "--period", "2025-03", "--format", "pdf",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert result["content"] == "pdf"
    assert (tmp_path / result["path"]).read_bytes().startswith(b"%PDF")

    code, out, _ = await tally("finance", "close", "--period", "2025-03", "--json", cwd=tmp_path)
    assert code == 0
    assert [p["period"] for p in json.loads(out)["closed"]] == ["2025-03"]
    code, out, _ = await tally("finance", "close", "--period", "2025-03", "--json", cwd=tmp_path)
    assert json.loads(out)["closed"] == []

    code, out, _ = await tally(
        "finance", "reconcile", "--period", "2025-03", "--json", cwd=tmp_path
    )
    assert code == 0
    report = json.loads(out)
    assert report["ok"] and report["totals"]["usage_nano"] == 2 * C


async def test_bad_input_fails_cleanly_without_writing_anything(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    for args, message in (
        (("--tenant", "nobody", "--period", "2025-03"), "no tenant 'nobody'"),
        (("--all", "--period", "2025-3"), "period must look like YYYY-MM"),
        (("--all", "--period", "2099-01"), "has not started"),
    ):
        code, out, err = await tally(
            "invoice", "export", *args, "--format", "csv", "--out", "x.csv", "--json",
            cwd=tmp_path,
        )  # fmt: skip
        assert code == 1
        assert message in json.loads(out)["error"]["message"]
        assert message in err
    assert list(tmp_path.iterdir()) == []
