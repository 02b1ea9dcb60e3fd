#!/usr/bin/env python3
"""Writes the seed corpus (small valid and near-valid headers) under corpus/<target>/."""
import os, struct

SIG = b"\r\n\r\n\x00\r\nQUIT\n"

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF

def tlv(t, v):
    return bytes([t]) + struct.pack(">H", len(v)) + v

def v2(vc, fam, body):
    return SIG + bytes([vc, fam]) + struct.pack(">H", len(body)) + body

def with_crc(vc, fam, body):
    h = bytearray(v2(vc, fam, body + tlv(3, b"\0\0\0\0")))
    h[-4:] = struct.pack(">I", crc32c(bytes(h)))
    return bytes(h)

ip4 = bytes([192, 168, 0, 1, 192, 168, 0, 11]) + struct.pack(">HH", 56324, 443)
ip6 = bytes(range(16)) + bytes(15) + b"\x01" + struct.pack(">HH", 1, 65535)
unix = b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")
ssl = tlv(0x20, b"\x07\0\0\0\0" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client") + tlv(0x23, b"TLS_AES_128_GCM_SHA256"))

v1 = {
    "v1_tcp4": b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    "v1_tcp4_min": b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
    "v1_tcp4_max": b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
    "v1_tcp6": b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n",
    "v1_tcp6_full": b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    "v1_tcp6_mapped": b"PROXY TCP6 ::ffff:1.2.3.4 ::1 80 8080\r\n",
    "v1_unknown": b"PROXY UNKNOWN\r\n",
    "v1_unknown_fields": b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    "v1_leading_zero": b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n",
    "v1_lone_cr": b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\r",
    "v1_with_payload": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n\r\n",
    "v1_tcp6_dotted_too_long": b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n",
}
v2s = {
    "v2_tcp4": v2(0x21, 0x11, ip4),
    "v2_udp4": v2(0x21, 0x12, ip4),
    "v2_tcp6": v2(0x21, 0x21, ip6),
    "v2_udp6": v2(0x21, 0x22, ip6),
    "v2_unix_stream": v2(0x21, 0x31, unix),
    "v2_unix_dgram": v2(0x21, 0x32, unix),
    "v2_local": v2(0x20, 0x00, b""),
    "v2_proxy_unspec_tlv": v2(0x21, 0x00, tlv(1, b"h2")),
    "v2_tcp4_crc": with_crc(0x21, 0x11, ip4),
    "v2_tlvs_crc": with_crc(0x21, 0x11, ip4 + tlv(1, b"h2") + tlv(2, b"example.com") + tlv(5, b"id-1") + ssl + tlv(0x30, b"ns") + tlv(0xEA, b"\x01vpce-0123") + tlv(0xEE, b"\x01\x01\x02\x03\x04") + tlv(0xE0, bytes(range(8))) + tlv(0xF1, b"x")),
    "v2_local_with_block": v2(0x20, 0x11, ip4 + tlv(4, b"")),
    "v2_tcp6_noop": v2(0x21, 0x21, ip6 + tlv(4, bytes(10))),
}
# AWS NLB health check: LOCAL, family 11, len 84: CRC TLV then a 74-byte NOOP (offset 16).
aws = bytearray(v2(0x20, 0x11, tlv(3, b"\0\0\0\0") + tlv(4, bytes(74))))
aws[19:23] = struct.pack(">I", crc32c(bytes(aws)))
assert aws[19:23] == bytes.fromhex("bce5951f"), aws[19:23].hex()
v2s["v2_aws_nlb_local"] = bytes(aws)

def write(target, items):
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in items.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)

write("parse_v1", {k: v for k, v in v1.items()} | {k + "_body": v[6:] for k, v in v1.items()})
write("parse_v2", v2s | {k + "_body": v[12:] for k, v in v2s.items()})
write("parse_auto", v1 | v2s)
write("roundtrip", {
    "v1": b"\x00\x00\x01\x02\x03\x04\x00\x01\x00\x05\x06\x07\x08\x00\x02",
    "v2_tlvs": b"\x82\x00\x01\x02\x03\x04\x00\x01\x00\x05\x06\x07\x08\x00\x02\x01\x02h2\x02\x0bexample.com\x08\x05\x01\x00\x00\x00\x00\x07TLSv1.3",
    "v2_unix": b"\x04\x00\x01\x05\x05/a/b/c/d/e/",
    "local": b"\x03\x05\x03id1",
})
