//! Quick end-to-end checks of the public API.

use smartproxy_proxy_protocol::*;

#[test]
fn v1_tcp4_and_v2_roundtrip_smoke() {
    let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET";
    let Ok(Parsed::Complete { header, consumed }) = parse(line) else {
        panic!("{:?}", parse(line))
    };
    assert_eq!(consumed, line.len() - 3);
    assert_eq!(header.source(), Some("192.168.0.1:56324".parse().unwrap()));
    for k in 0..consumed {
        assert!(matches!(parse(&line[..k]), Ok(Parsed::Incomplete { .. })), "{k}");
    }
    let h = Header::v2("[::1]:1".parse().unwrap(), "1.2.3.4:5".parse().unwrap())
        .unwrap()
        .with_crc32c(true);
    let mut out = Vec::new();
    let n = h.encode(&mut out).unwrap();
    assert_eq!(parse(&out), Ok(Parsed::Complete { header: h.clone(), consumed: n }));
    let v1 = Header::v1("[::1]:1".parse().unwrap(), "1.2.3.4:5".parse().unwrap()).unwrap();
    let b = v1.to_vec().unwrap();
    assert_eq!(b, b"PROXY TCP6 ::1 ::ffff:1.2.3.4 1 5\r\n");
    assert_eq!(parse(&b), Ok(Parsed::Complete { header: v1.clone(), consumed: b.len() }));
    assert_eq!(v1.encoded_len(), b.len());
}
