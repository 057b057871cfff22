"""The NDES ``mscep_admin`` page that Jamf Pro ("Dynamic-Microsoft CA") and other NDES scrapers read."""
from __future__ import annotations

import html

_HEAD = ('<HTML><Head><Meta HTTP-Equiv="Content-Type" Content="text/html; charset={charset}">'
         '<Title>Network Device Enrollment Service</Title></Head>\r\n'
         '<Body BgColor=#FFFFFF><Font ID=locPageFont Face="Arial">\r\n'
         '<Table Border=0 CellSpacing=0 CellPadding=4 Width=100% BgColor=#008080>\r\n'
         '<TR><TD><Font Color=#FFFFFF><LocID ID=locMSCertSrv><Font Face="Arial" Size=-1><B><I>Microsoft</I></B> '
         'Active Directory Certificate Services  -  {name}  </Font></LocID></Font></TD></TR>\r\n'
         '</Table>\r\n<P><B> Network Device Enrollment Service </B>\r\n'
         '<P> Network Device Enrollment Service allows you to obtain certificates for routers or other network '
         'devices using the Simple Certificate Enrollment Protocol (SCEP).\r\n')
_TAIL = '</Font></Body></HTML>\r\n'


def _group(hex_digits: str) -> str:
    return " ".join(hex_digits[i:i + 8] for i in range(0, len(hex_digits), 8))


def challenge_page(*, challenge: str, ca_thumbprint_hex: str, minutes: int, ca_name: str, charset: str) -> str:
    """The page NDES shows; scrapers read ``The enrollment challenge password is: <B> ... </B>``."""
    return (_HEAD.format(charset=charset, name=html.escape(ca_name))
            + '<P> To complete certificate enrollment for your network device you will need the following '
              'information:\r\n'
            + f'<P> The thumbprint (hash value) for the CA certificate is: <B> {_group(ca_thumbprint_hex.upper())} '
              '</B>\r\n'
            + f'<P> The enrollment challenge password is: <B> {html.escape(challenge)} </B>\r\n'
            + f'<P> This password can be used only once and will expire within {minutes} minutes.\r\n'
            + '<P> Each enrollment requires a new challenge password. You can refresh this web page to obtain a new '
              'challenge password. </P>\r\n'
            + _TAIL)


def cache_full_page(*, ca_name: str, charset: str) -> str:
    """NDES's answer when too many unused passwords are outstanding."""
    return (_HEAD.format(charset=charset, name=html.escape(ca_name))
            + '<P> The password cache is full. Use an existing password or wait until the existing passwords '
              'expire. </P>\r\n' + _TAIL)


def encode(text: str, encoding: str) -> tuple[bytes, str]:
    """The body and its Content-Type charset (UTF-16LE without BOM, as NDES sends it)."""
    return text.encode(encoding), encoding
