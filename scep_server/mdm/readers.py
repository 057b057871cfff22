"""Reading a source's inventory with its configuration (the client secret is read from the host at use time)."""
from __future__ import annotations

import aiohttp

from ..challenge.config import ChallengeConfigError, SecretRef
from .clients import GraphClient, JamfClient, MdmUnavailable
from .plan import Record
from .service import Reader


def secret_of(config: dict) -> str:
    try:
        return SecretRef(**config["client_secret"]).read()
    except ChallengeConfigError as exc:
        raise MdmUnavailable(f"client secret: {exc}") from None


def make_reader(*, timeout: float) -> Reader:
    async def read(config: dict, state: dict) -> tuple[list[Record], dict]:
        secret = secret_of(config)
        async with aiohttp.ClientSession() as session:
            if config["kind"] == "jamf":
                jamf = JamfClient(session, config["url"], config["client_id"], secret, id_field=config["id_field"],
                                  timeout=timeout)
                return await jamf.inventory(), state
            graph = GraphClient(session, config["tenant"], config["client_id"], secret,
                                authority_url=config["authority_url"], graph_url=config["graph_url"],
                                id_field=config["id_field"], timeout=timeout)
            managed = await graph.managed_devices()
            disabled = set(state.get("directory_disabled") or [])
            try:
                changes, link = await graph.entra_changes(state.get("delta_link"))
            except MdmUnavailable:
                if not state.get("delta_link"):
                    raise
                # an expired delta link: read the directory in full again
                disabled.clear()
                changes, link = await graph.entra_changes(None)
            for entra_id, enabled in changes.items():
                if enabled is False:
                    disabled.add(entra_id)
                else:
                    disabled.discard(entra_id)
            records = graph.records(managed, {d: False for d in disabled})
            return records, {"delta_link": link, "directory_disabled": sorted(disabled)}

    return read
