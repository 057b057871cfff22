"""The MDM clients hold the OAuth client secret (Jamf Pro's API client, the Entra app's): no representation of
them shows it, as none of the PKCS#11 PIN does (a log line, an error or a traceback that shows the object)."""
from __future__ import annotations

import aiohttp

from scep_server.mdm.clients import GraphClient, JamfClient


async def test_the_client_secret_is_in_no_representation():
    async with aiohttp.ClientSession() as session:
        clients = [(JamfClient(session, "https://jamf.example", "api-client", "s3cret-jamf"), "s3cret-jamf"),
                   (GraphClient(session, "contoso.onmicrosoft.com", "app", "s3cret-entra"), "s3cret-entra")]
        for client, secret in clients:
            assert client.credentials.client_secret == secret  # kept, for the token request
            shown = repr(client.credentials) + str(client.credentials) + repr(vars(client))
            assert secret not in shown and "client_id=" in shown
