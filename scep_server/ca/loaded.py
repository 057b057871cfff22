"""The CAs loaded in one process, the issuing one first (`Runtime.cas`).

The SCEP threads read the mapping (the names never issued, which CA signed a request, which RA an envelope is
addressed to) while the event loop changes it: a CA rollover activated elsewhere is picked up and put first, a
renewed RA certificate is loaded. A dict changed in place would, for a moment, be empty or half reordered to a
reader in another thread, or stop that reader's iteration with "dictionary changed size during iteration".
Every change here publishes a new dict in one reference assignment instead (copy on write: changes are rare, a
few per CA lifetime), and an iteration runs over the dict it began with, whole and unchanged.
"""
from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, KeysView, MutableMapping, ValuesView
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .authority import CertificateAuthority


class LoadedCas(MutableMapping):
    """CA name -> CA, in the order given (the issuing CA first); see the module's docstring."""

    __slots__ = ("_cas",)

    def __init__(self, cas: "Iterable[tuple[str, CertificateAuthority]] | dict[str, CertificateAuthority]" = ()):
        self._cas: dict[str, CertificateAuthority] = dict(cas)

    def __getitem__(self, name: str) -> "CertificateAuthority":
        return self._cas[name]

    def __contains__(self, name: object) -> bool:
        return name in self._cas

    def __iter__(self) -> Iterator[str]:
        return iter(self._cas)

    def __len__(self) -> int:
        return len(self._cas)

    def get(self, name: str, default=None):
        return self._cas.get(name, default)

    # the views of one published dict, which is never changed (the mixins' views would look each name up again
    # in whatever dict is current by then)
    def keys(self) -> KeysView[str]:
        return self._cas.keys()

    def values(self) -> "ValuesView[CertificateAuthority]":
        return self._cas.values()

    def items(self) -> "ItemsView[str, CertificateAuthority]":
        return self._cas.items()

    def __setitem__(self, name: str, ca: "CertificateAuthority") -> None:
        self._cas = {**self._cas, name: ca}

    def __delitem__(self, name: str) -> None:
        if name not in self._cas:
            raise KeyError(name)
        self._cas = {n: ca for n, ca in self._cas.items() if n != name}

    def replace(self, cas: "dict[str, CertificateAuthority]") -> None:
        """All of them at once, in this order."""
        self._cas = dict(cas)

    def __repr__(self) -> str:
        return f"LoadedCas({list(self._cas)!r})"
