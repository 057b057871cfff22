"""The reader the guide tests follow a page with: commands over several lines, tables by section."""
from __future__ import annotations

import pytest

from tests.guides.guide import Guide, fill

PAGE = """# A guide

## First

```sh
curl -o x https://scep.example.com/ca/default.crt
scep-server profile add p --settings-json '{"a": 1,
    "b": 2}'
scep-server mdm configure jamf --url https://example.jamfcloud.com \\
    --client-id <client-id>
```

| MDM field | value |
|-----------|-------|
| URL       | `https://scep.example.com/scep/p` |
| Events    | `A`, `B` (optionally `C`) |
| Note      | plain words |

## Second

   ```sh
   scep-server challenge configure p --password '<challenge password>'
   ```

| MDM field | value |
|-----------|-------|
| URL       | `https://scep.example.com/scep/q` |
"""


@pytest.fixture
def guide(tmp_path) -> Guide:
    g = Guide.__new__(Guide)
    g.path, g.text, g.taken = tmp_path / "page.md", PAGE, []
    return g


def test_commands_tables_and_placeholders(guide):
    assert guide.commands() == [
        ["scep-server", "profile", "add", "p", "--settings-json", '{"a": 1,\n"b": 2}'],
        ["scep-server", "mdm", "configure", "jamf", "--url", "https://example.jamfcloud.com", "--client-id",
         "<client-id>"],
        ["scep-server", "challenge", "configure", "p", "--password", "<challenge password>"]]
    assert guide.table("First") == {"URL": "https://scep.example.com/scep/p", "Events": "A",
                                    "Note": "plain words"}
    assert guide.cells("First")["Events"][1] == ["A", "B", "C"]
    assert guide.table("Second") == {"URL": "https://scep.example.com/scep/q"}
    with pytest.raises(AssertionError):
        guide.command("scep-server", "token")  # none
    configure = guide.command("scep-server", "challenge", "configure", "p")
    assert fill(configure, {"<challenge password>": "pw"})[-1] == "pw"
    with pytest.raises(AssertionError, match="placeholder"):
        fill(configure, {})
    assert len(guide.not_taken()) == 2
