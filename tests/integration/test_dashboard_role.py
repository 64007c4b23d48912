"""`carebus run dashboard`: the role in the composition root, over real HTTP."""

from __future__ import annotations

import re

import httpx
import pytest

from bus.settings import DashboardSettings, Settings
from bus.stack import ROLES, run_stack

pytestmark = pytest.mark.kafka


async def test_dashboard_role_with_its_one_time_local_account(
    catalog_applied: str, settings: Settings
) -> None:
    assert "dashboard" in ROLES  # so `carebus up` runs it
    s = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"bootstrap": catalog_applied}),
            "dashboard": DashboardSettings(port=0),
        }
    )
    async with run_stack(s, ("dashboard",)) as running:
        where = running.endpoints["dashboard"]
        found = re.search(r"local account 'coordination', password '([^']+)'", where)
        assert found, where
        base = f"http://127.0.0.1:{running.ports['dashboard']}"
        assert where.startswith(f"{base}/tableau/")
        async with httpx.AsyncClient(base_url=base) as client:
            first = await client.get("/tableau/")
            assert first.status_code == 303 and "/tableau/connexion" in first.headers["location"]
            form = await client.get("/tableau/connexion")
            token = re.search(r'name="jeton" value="([^"]+)"', form.text).group(1)
            login = {"jeton": token, "identifiant": "coordination", "suite": ""}
            bad = await client.post("/tableau/connexion", data={**login, "mot_de_passe": "x"})
            assert bad.status_code == 401
            form = await client.get("/tableau/connexion")
            token = re.search(r'name="jeton" value="([^"]+)"', form.text).group(1)
            ok = await client.post(
                "/tableau/connexion",
                data={**login, "jeton": token, "mot_de_passe": found.group(1)},
            )
            assert ok.status_code == 303 and ok.headers["location"] == "/tableau/"
            page = await client.get("/tableau/")
            assert page.status_code == 200 and "Dossiers ouverts" in page.text
            assert "Coordination (compte local)" in page.text
            assert page.headers["cache-control"] == "no-store"
            version = await client.get("/tableau/version")
            assert version.json()["version"] >= 0
