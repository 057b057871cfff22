"""The certificate authority: keys, issuance, serials and the certificate inventory."""
