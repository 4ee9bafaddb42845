"""Grafana provisioning files for one tenant's organization: a data source, a folder of dashboards.

The data source logs in as the tenant's database role; its password comes from an
environment variable of the Grafana process, named after the role, never from the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from monitoring.tenant import SQL_DATASOURCE, tenant_dashboards

DEFAULT_GRAFANA_DIR = PurePosixPath("/etc/grafana/provisioning")
"""Where the written directory is mounted in the Grafana container."""


@dataclass(frozen=True, slots=True)
class TenantGrafana:
    """Names used in a tenant's provisioning."""

    tenant: str
    role: str
    schema: str
    org_id: int
    timescaledb: bool

    @property
    def key(self) -> str:
        """A short stable id of the tenant for uids and file names."""
        return hashlib.sha256(self.tenant.encode()).hexdigest()[:10]

    @property
    def password_env(self) -> str:
        """The environment variable holding the role's password for Grafana."""
        return f"{self.role.upper()}_DB_PASSWORD"

    @property
    def datasource(self) -> dict[str, str]:
        """uid and name of the tenant's store data source."""
        return {"uid": f"wfa-store-{self.key}", "name": "Workflow analytics store"}


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def datasource_file(t: TenantGrafana) -> str:
    """datasources/<role>.yaml: the store, as the tenant's role, in the tenant's org."""
    head = (
        f"# Data source of tenant {json.dumps(t.tenant)} (organization {t.org_id}), written by\n"
        "# `wfa grafana provision`. It logs in as a role that sees only this tenant's rows.\n"
        f"# Grafana needs {t.password_env} (and WFA_GRAFANA_DB_HOST, _NAME, _SSLMODE).\n"
    )
    body = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": t.datasource["name"],
                "uid": t.datasource["uid"],
                "orgId": t.org_id,
                "type": SQL_DATASOURCE,
                "access": "proxy",
                "url": "${WFA_GRAFANA_DB_HOST}",
                "user": t.role,
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "database": "${WFA_GRAFANA_DB_NAME}",
                    "sslmode": "${WFA_GRAFANA_DB_SSLMODE}",
                    "postgresVersion": 1500,
                    "timescaledb": t.timescaledb,
                    "maxOpenConns": 5,
                    "maxIdleConns": 2,
                    "connMaxLifetime": 14400,
                    "timeInterval": "1h",
                },
                "secureJsonData": {"password": f"${{{t.password_env}}}"},
            }
        ],
    }
    return head + _yaml(body)


def provider_file(t: TenantGrafana, grafana_dir: PurePosixPath) -> str:
    """dashboards/<role>.yaml: the tenant's folder, loaded from dashboards/<role>/."""
    body = {
        "apiVersion": 1,
        "providers": [
            {
                "name": f"workflow-analytics-{t.key}",
                "orgId": t.org_id,
                "folder": "Workflow analytics",
                "folderUid": f"wfa-{t.key}",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {
                    "path": str(grafana_dir / "dashboards" / t.role),
                    "foldersFromFilesStructure": False,
                },
            }
        ],
    }
    head = f"# Dashboards of tenant {json.dumps(t.tenant)}, written by `wfa grafana provision`.\n"
    return head + _yaml(body)


def write(
    t: TenantGrafana, out: Path, grafana_dir: PurePosixPath = DEFAULT_GRAFANA_DIR
) -> list[Path]:
    """Write the tenant's provisioning under `out`; the paths written."""
    boards = tenant_dashboards(t.schema, t.datasource)
    folder = out / "dashboards" / t.role
    folder.mkdir(parents=True, exist_ok=True)
    (out / "datasources").mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.json"):
        if stale.name not in boards:
            stale.unlink()
    files = {
        out / "datasources" / f"{t.role}.yaml": datasource_file(t),
        out / "dashboards" / f"{t.role}.yaml": provider_file(t, grafana_dir),
    }
    for name, d in boards.items():
        files[folder / name] = json.dumps(d, indent=2, ensure_ascii=False) + "\n"
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return sorted(files)
