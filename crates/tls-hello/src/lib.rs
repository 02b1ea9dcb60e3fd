//! Sans-I/O TLS ClientHello peek: SNI, ALPN, versions, resumption flags.
