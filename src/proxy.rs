//! PROXY protocol v1/v2 header parsing (HAProxy's proxy-protocol.txt): a pure function of the
//! bytes read so far, so the event loop owns all buffering, deadlines and socket state.
//!
//! Contract with the caller: call [`parse`] on everything the client has sent so far. On
//! [`Parsed::Incomplete`] wait for more until the deadline; on [`Parsed::Invalid`] close the
//! connection and log the reason; on [`Parsed::Done`] the header is `buf[..len]` and what follows
//! is application data for the service. rinetd's loop peeks (MSG_PEEK) and then consumes exactly
//! `len` bytes, so that data stays in the socket for the handler. The buffer never needs to hold
//! more than [`MAX_HEADER_LEN`] bytes: by then every header is either `Done` or `Invalid`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 line the spec allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header: the fixed 16 bytes plus the largest 16-bit length.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;
/// IPv6 text is at most 39 characters, 45 with an embedded dotted quad (`::ffff:1.2.3.4` form).
const V6_TEXT_MAX: usize = 45;

/// What the bytes read so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Need more bytes. Never returned once `buf` holds as many bytes as the largest header of
    /// the version it began (v1: [`V1_MAX_LEN`], v2: [`MAX_HEADER_LEN`]), nor once the bytes
    /// read can no longer begin a valid header: a client that sends `GET /` is rejected at once.
    Incomplete,
    /// A complete header of `len` bytes; `buf[len..]` is application data. `addresses` is
    /// (source, destination), or `None` for v2 LOCAL, v1 UNKNOWN and families other than
    /// TCP over IPv4/IPv6, in which case the spec says to keep the connection's own addresses.
    Done {
        len: usize,
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
    /// Not a valid PROXY header, however many more bytes arrive; the reason is for the log.
    Invalid(&'static str),
}

/// Parses the start of `buf` as a PROXY protocol v1 or v2 header (see the module doc for how the
/// caller must treat each outcome). Never panics, whatever the input.
pub fn parse(buf: &[u8]) -> Parsed {
    if agrees_with(buf, V1_PREFIX) {
        parse_v1(buf)
    } else if agrees_with(buf, V2_SIGNATURE) {
        parse_v2(buf)
    } else {
        Parsed::Invalid("not a PROXY header")
    }
}

/// Whether `buf` and `signature` are equal as far as both go, i.e. `buf` may still turn out to
/// begin with `signature`.
fn agrees_with(buf: &[u8], signature: &[u8]) -> bool {
    buf.iter().zip(signature).all(|(a, b)| a == b)
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    if let Some(lf) = window.iter().position(|&b| b == b'\n') {
        let Some(line) = window.get(..lf).and_then(|l| l.strip_suffix(b"\r")) else {
            return Parsed::Invalid("v1 line not ending in CRLF");
        };
        return match v1_fields(line, true) {
            Ok(addresses) => Parsed::Done {
                len: lf + 1,
                addresses,
            },
            Err(reason) => Parsed::Invalid(reason),
        };
    }
    if buf.len() >= V1_MAX_LEN {
        return Parsed::Invalid("v1 header longer than 107 bytes");
    }
    // A trailing CR means the line is over as soon as its LF arrives, so it is judged whole now
    // rather than after another read.
    let (line, complete) = match window.strip_suffix(b"\r") {
        Some(line) => (line, true),
        None => (window, false),
    };
    match v1_fields(line, complete) {
        Ok(_) => Parsed::Incomplete,
        Err(reason) => Parsed::Invalid(reason),
    }
}

#[derive(Clone, Copy)]
enum V1Family {
    Tcp4,
    Tcp6,
}

/// Checks a v1 line without its CRLF. When `complete` is false the last field may still grow,
/// so it only has to be the beginning of something valid; the addresses are then not returned.
fn v1_fields(
    line: &[u8],
    complete: bool,
) -> Result<Option<(SocketAddr, SocketAddr)>, &'static str> {
    if line.contains(&b'\r') {
        return Err("CR inside v1 line");
    }
    let count = line.split(|&b| b == b' ').count();
    let mut family = V1Family::Tcp4;
    let (mut src, mut dst, mut src_port, mut dst_port) = (None, None, None, None);
    for (i, field) in line.split(|&b| b == b' ').enumerate() {
        let partial = !complete && i + 1 == count;
        match i {
            0 if field == b"PROXY" || (partial && b"PROXY".starts_with(field)) => {}
            0 => return Err("not a PROXY header"),
            1 => match field {
                b"TCP4" => family = V1Family::Tcp4,
                b"TCP6" => family = V1Family::Tcp6,
                // The spec has the receiver ignore whatever follows UNKNOWN up to the CRLF.
                b"UNKNOWN" => return Ok(None),
                _ if partial
                    && [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
                        .iter()
                        .any(|p| p.starts_with(field)) =>
                {
                    return Ok(None);
                }
                _ => return Err("bad v1 protocol"),
            },
            2 => src = v1_address(field, family, partial)?,
            3 => dst = v1_address(field, family, partial)?,
            4 => src_port = v1_port(field, partial)?,
            5 => dst_port = v1_port(field, partial)?,
            _ => return Err("too many fields in v1 header"),
        }
    }
    if !complete {
        return Ok(None);
    }
    match (src, dst, src_port, dst_port) {
        (Some(src), Some(dst), Some(src_port), Some(dst_port)) => Ok(Some((
            SocketAddr::new(src, src_port),
            SocketAddr::new(dst, dst_port),
        ))),
        _ => Err("missing fields in v1 header"),
    }
}

/// A v1 address of the announced family; `None` while it is still partial.
fn v1_address(
    field: &[u8],
    family: V1Family,
    partial: bool,
) -> Result<Option<IpAddr>, &'static str> {
    const BAD: &str = "bad v1 address";
    let text = std::str::from_utf8(field).map_err(|_| BAD)?;
    match (family, partial) {
        // Rust's parsers already refuse what the spec refuses: leading zeros in a dotted quad,
        // zone ids, and an address of the other family.
        (V1Family::Tcp4, false) => text
            .parse::<Ipv4Addr>()
            .map(|a| Some(a.into()))
            .map_err(|_| BAD),
        (V1Family::Tcp6, false) => text
            .parse::<Ipv6Addr>()
            .map(|a| Some(a.into()))
            .map_err(|_| BAD),
        (V1Family::Tcp4, true) if ipv4_prefix(text) => Ok(None),
        (V1Family::Tcp6, true)
            if text.len() <= V6_TEXT_MAX
                && text
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') =>
        {
            Ok(None)
        }
        (_, true) => Err(BAD),
    }
}

/// Whether `text` can still grow into a dotted quad. Any prefix of a valid address completes with
/// at most one digit and then `.0` groups, so trying those few completions is exact.
fn ipv4_prefix(text: &str) -> bool {
    if text.len() > 15 || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    ["", "0"].iter().any(|digit| {
        ["", ".0", ".0.0", ".0.0.0"]
            .iter()
            .any(|groups| format!("{text}{digit}{groups}").parse::<Ipv4Addr>().is_ok())
    })
}

/// A v1 port: decimal, 0-65535, no sign and no leading zero (the spec forbids them to avoid any
/// octal confusion); `None` while it is still partial.
fn v1_port(field: &[u8], partial: bool) -> Result<Option<u16>, &'static str> {
    const BAD: &str = "bad v1 port";
    if field.len() > 5
        || !field.iter().all(u8::is_ascii_digit)
        || (field.len() > 1 && field.first() == Some(&b'0'))
    {
        return Err(BAD);
    }
    let value = field
        .iter()
        .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    let port = u16::try_from(value).map_err(|_| BAD)?;
    match (partial, field.is_empty()) {
        (true, _) => Ok(None),
        (false, true) => Err(BAD),
        (false, false) => Ok(Some(port)),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let Some(&version_command) = buf.get(12) else {
        return Parsed::Incomplete;
    };
    if version_command >> 4 != 2 {
        return Parsed::Invalid("bad v2 version");
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Invalid("bad v2 command"),
    };
    let Some(&family) = buf.get(13) else {
        return Parsed::Incomplete;
    };
    // The spec has LOCAL discard the address block "including the family which is ignored", so
    // only PROXY is held to a known family and a block long enough for it.
    let needed = match (local, family) {
        (true, _) | (false, 0x00) => 0,
        (false, 0x11 | 0x12) => 12,
        (false, 0x21 | 0x22) => 36,
        (false, 0x31 | 0x32) => 216,
        (false, _) => return Parsed::Invalid("bad v2 address family"),
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Parsed::Incomplete;
    };
    let block_len = usize::from(u16::from_be_bytes([hi, lo]));
    if block_len < needed {
        return Parsed::Invalid("v2 length too short for address family");
    }
    let len = V2_FIXED_LEN + block_len;
    let Some(block) = buf.get(V2_FIXED_LEN..len) else {
        return Parsed::Incomplete;
    };
    // Only TCP matters to rinetd; UDP and UNIX blocks are valid but keep the real endpoints.
    // TLVs after the addresses are skipped unread.
    let addresses = match (local, family) {
        (false, 0x11) => v2_inet(block),
        (false, 0x21) => v2_inet6(block),
        _ => None,
    };
    if !local && matches!(family, 0x11 | 0x21) && addresses.is_none() {
        // Unreachable after the length check above, but a wrong answer beats a panic.
        return Parsed::Invalid("v2 length too short for address family");
    }
    Parsed::Done { len, addresses }
}

fn v2_inet(block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let src: [u8; 4] = array(block, 0)?;
    let dst: [u8; 4] = array(block, 4)?;
    let src_port = u16::from_be_bytes(array(block, 8)?);
    let dst_port = u16::from_be_bytes(array(block, 10)?);
    Some((
        SocketAddr::new(Ipv4Addr::from(src).into(), src_port),
        SocketAddr::new(Ipv4Addr::from(dst).into(), dst_port),
    ))
}

fn v2_inet6(block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let src: [u8; 16] = array(block, 0)?;
    let dst: [u8; 16] = array(block, 16)?;
    let src_port = u16::from_be_bytes(array(block, 32)?);
    let dst_port = u16::from_be_bytes(array(block, 34)?);
    Some((
        SocketAddr::new(Ipv6Addr::from(src).into(), src_port),
        SocketAddr::new(Ipv6Addr::from(dst).into(), dst_port),
    ))
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn done(len: usize, src: &str, dst: &str) -> Parsed {
        Parsed::Done {
            len,
            addresses: Some((addr(src), addr(dst))),
        }
    }

    fn is_invalid(p: &Parsed) -> bool {
        matches!(p, Parsed::Invalid(_))
    }

    /// Every proper prefix of a complete header must ask for more.
    fn assert_prefixes_incomplete(header: &[u8]) {
        for n in 0..header.len() {
            assert_eq!(
                parse(&header[..n]),
                Parsed::Incomplete,
                "prefix of {n} bytes of {header:?}"
            );
        }
    }

    /// A v2 header: signature, version/command, family, length, then `block`.
    fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(version_command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn inet_block() -> Vec<u8> {
        let mut b = vec![192, 0, 2, 1, 198, 51, 100, 2];
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    fn inet6_block() -> Vec<u8> {
        let mut b = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        b.extend_from_slice(&"::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&65535u16.to_be_bytes());
        b
    }

    /// A PP2_TYPE_AUTHORITY and a PP2_TYPE_NOOP TLV, which must be skipped.
    const TLVS: &[u8] = b"\x02\x00\x0bexample.com\x04\x00\x02\x00\x00";

    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        assert_eq!(
            parse(h),
            done(h.len(), "192.168.0.1:56324", "192.168.0.11:443")
        );
        let h = b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n";
        assert_eq!(
            parse(h),
            done(h.len(), "255.255.255.255:65535", "0.0.0.0:0")
        );
    }

    #[test]
    fn v1_tcp6() {
        let h = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 1 65535\r\n";
        assert_eq!(
            parse(h),
            done(h.len(), "[2001:db8::1]:1", "[::ffff:10.0.0.1]:65535")
        );
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let h = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(h.len(), 104);
        let sa = format!("[{full}]:65535");
        assert_eq!(parse(h.as_bytes()), done(104, &sa, &sa));
    }

    #[test]
    fn v1_unknown() {
        for h in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff:f::f 1.2.3.4 65535 whatever\r\n",
            b"PROXY UNKNOWN \r\n",
        ] {
            assert_eq!(
                parse(h),
                Parsed::Done {
                    len: h.len(),
                    addresses: None
                }
            );
            assert_prefixes_incomplete(h);
        }
        // The spec's worst case is exactly the limit and must be accepted.
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(V1_MAX_LEN - 2, b'f');
        h.extend_from_slice(b"\r\n");
        assert_eq!(
            parse(&h),
            Parsed::Done {
                len: V1_MAX_LEN,
                addresses: None
            }
        );
    }

    #[test]
    fn v1_every_prefix_is_incomplete() {
        assert_prefixes_incomplete(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        assert_prefixes_incomplete(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 10000\r\n");
        assert_prefixes_incomplete(b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 1 65535\r\n");
    }

    #[test]
    fn v1_data_after_header_is_left() {
        let mut buf = b"PROXY TCP4 1.2.3.4 5.6.7.8 111 222\r\n".to_vec();
        let header_len = buf.len();
        buf.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(parse(&buf), done(header_len, "1.2.3.4:111", "5.6.7.8:222"));
        // Even a second PROXY line is the client's business, not part of the header.
        let mut buf = b"PROXY UNKNOWN\r\n".to_vec();
        buf.extend_from_slice(b"PROXY TCP4 1.2.3.4 5.6.7.8 111 222\r\n");
        assert_eq!(
            parse(&buf),
            Parsed::Done {
                len: 15,
                addresses: None
            }
        );
    }

    #[test]
    fn v1_bad() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.0\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 111 222\r\n",
            b"PROXY\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 222\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 222\r\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 222\rX",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 99999\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 +22\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 022\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 -1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 0x16\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 \r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 222 333\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 111 222\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 111 222\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 111 222\r\n",
            b"PROXY TCP6 ::1 5.6.7.8 111 222\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 111 222\r\n",
            b"PROXY TCP4 1.2.3.04 5.6.7.8 111 222\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 111 222\r\n",
            b"PROXY TCP4 256.2.3.4 5.6.7.8 111 222\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 111 222\r\n",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 111 222\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 222 \r\n",
            b"PROXY TCP4 1.2.3.4\t5.6.7.8 111 222\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 111 222\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY UNKNOWN\r\r\n",
            b"PROXY UNKNOWN x\ry\r\n",
        ];
        for h in bad {
            assert!(is_invalid(&parse(h)), "{:?}", String::from_utf8_lossy(h));
        }
    }

    #[test]
    fn v1_too_long() {
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(V1_MAX_LEN - 1, b'f');
        h.extend_from_slice(b"\r\n");
        assert!(is_invalid(&parse(&h)));
        // Without any CRLF the verdict comes at 107 bytes, not at the deadline.
        assert_eq!(parse(&h[..V1_MAX_LEN - 1]), Parsed::Incomplete);
        assert!(is_invalid(&parse(&h[..V1_MAX_LEN])));
        assert!(is_invalid(&parse(&[b'P'; 200])));
    }

    #[test]
    fn invalid_as_soon_as_it_shows() {
        let early: &[&[u8]] = &[
            b"G",
            b"\x16\x03\x01",
            b"\r\n\r\n\0\r\nQUIT\r",
            b"PROXY TCP5",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111 222 ",
            b"PROXY TCP4 256",
            b"PROXY TCP4 1.2.3.4.",
            b"PROXY TCP4 01",
            b"PROXY TCP4 ::",
            b"PROXY TCP6 1.2.3.4 g",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 00",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 111\r",
        ];
        for h in early {
            assert!(is_invalid(&parse(h)), "{:?}", String::from_utf8_lossy(h));
        }
        // Port 0 is a valid start; "00" above is not.
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 0"), Parsed::Incomplete);
        assert_eq!(parse(b""), Parsed::Incomplete);
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 111 222\r"),
            Parsed::Incomplete
        );
    }

    #[test]
    fn v2_proxy_inet_with_tlvs() {
        let mut block = inet_block();
        block.extend_from_slice(TLVS);
        let h = v2(0x21, 0x11, &block);
        assert_eq!(
            parse(&h),
            done(h.len(), "192.0.2.1:56324", "198.51.100.2:443")
        );
        assert_prefixes_incomplete(&h);
    }

    #[test]
    fn v2_proxy_inet6_with_tlvs() {
        let mut block = inet6_block();
        block.extend_from_slice(TLVS);
        let h = v2(0x21, 0x21, &block);
        assert_eq!(
            parse(&h),
            done(h.len(), "[2001:db8::1]:1", "[::ffff:10.0.0.1]:65535")
        );
        assert_prefixes_incomplete(&h);
    }

    #[test]
    fn v2_without_usable_addresses() {
        let none = |h: &[u8]| Parsed::Done {
            len: h.len(),
            addresses: None,
        };
        let cases = [
            v2(0x20, 0x00, b""),
            // LOCAL ignores the family, the block is still skipped by its length.
            v2(0x20, 0x11, &inet_block()),
            v2(0x20, 0x11, b""),
            v2(0x20, 0xff, b"junk"),
            v2(0x21, 0x00, b""),
            v2(0x21, 0x00, TLVS),
            v2(0x21, 0x12, &inet_block()),
            v2(0x21, 0x22, &inet6_block()),
            v2(0x21, 0x31, &[0; 216]),
            v2(0x21, 0x32, &[0; 216]),
        ];
        for h in &cases {
            assert_eq!(parse(h), none(h), "{h:?}");
            assert_prefixes_incomplete(h);
        }
    }

    #[test]
    fn v2_largest_header() {
        let h = v2(0x21, 0x11, &[0; 65535]);
        assert_eq!(h.len(), MAX_HEADER_LEN);
        assert!(matches!(
            parse(&h),
            Parsed::Done {
                len: MAX_HEADER_LEN,
                ..
            }
        ));
        assert_eq!(parse(&h[..MAX_HEADER_LEN - 1]), Parsed::Incomplete);
    }

    #[test]
    fn v2_bad() {
        let inet = inet_block();
        let bad = [
            v2(0x11, 0x11, &inet),
            v2(0x31, 0x11, &inet),
            v2(0x01, 0x11, &inet),
            v2(0x22, 0x11, &inet),
            v2(0x2f, 0x11, &inet),
            v2(0x21, 0x13, &inet),
            v2(0x21, 0x10, &inet),
            v2(0x21, 0x41, &inet),
            v2(0x21, 0x01, &inet),
            v2(0x21, 0x11, &inet[..11]),
            v2(0x21, 0x11, b""),
            v2(0x21, 0x21, &inet6_block()[..35]),
            v2(0x21, 0x21, &inet),
            v2(0x21, 0x31, &[0; 215]),
        ];
        for h in &bad {
            assert!(is_invalid(&parse(h)), "{h:?}");
            // The verdict needs no more than the fixed 16 bytes.
            assert!(is_invalid(&parse(&h[..16])), "{h:?}");
        }
        // Version and command are judged on byte 13 alone.
        assert!(is_invalid(&parse(&v2(0x11, 0x11, &inet)[..13])));
        assert!(is_invalid(&parse(&v2(0x23, 0x11, &inet)[..13])));
        let mut sig = V2_SIGNATURE.to_vec();
        sig[11] = b'X';
        assert!(is_invalid(&parse(&sig)));
    }

    #[test]
    fn v2_data_after_header_is_left() {
        let mut buf = v2(0x21, 0x11, &inet_block());
        let header_len = buf.len();
        assert_eq!(header_len, 28);
        buf.extend_from_slice(b"SSH-2.0-OpenSSH\r\n");
        assert_eq!(parse(&buf), done(28, "192.0.2.1:56324", "198.51.100.2:443"));
        let mut buf = v2(0x20, 0x00, b"");
        buf.extend_from_slice(&v2(0x21, 0x11, &inet_block()));
        assert_eq!(
            parse(&buf),
            Parsed::Done {
                len: 16,
                addresses: None
            }
        );
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Feeding `buf` a byte at a time must behave like one read: once Invalid, always Invalid;
    /// once Done, the same Done; Incomplete only below the version's maximum length.
    fn assert_consistent_prefixes(buf: &[u8]) {
        let mut verdict = Parsed::Incomplete;
        for n in 0..=buf.len() {
            let now = parse(&buf[..n]);
            match (&verdict, &now) {
                (Parsed::Incomplete, Parsed::Incomplete) => {
                    let limit = if buf.first() == Some(&b'P') {
                        V1_MAX_LEN
                    } else {
                        MAX_HEADER_LEN
                    };
                    assert!(n < limit, "incomplete at {n} bytes: {buf:?}");
                }
                (Parsed::Incomplete, Parsed::Done { len, .. }) => assert_eq!(*len, n, "{buf:?}"),
                (Parsed::Incomplete, Parsed::Invalid(_)) => {}
                (Parsed::Invalid(_), Parsed::Invalid(_)) => {}
                (Parsed::Done { .. }, _) => assert_eq!(verdict, now, "{buf:?}"),
                _ => panic!("{verdict:?} then {now:?} at {n} bytes: {buf:?}"),
            }
            verdict = now;
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let seeds: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 1 65535\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(0x21, 0x11, &inet_block()),
            v2(0x21, 0x21, &inet6_block()),
            v2(0x20, 0x00, TLVS),
        ];
        // Bytes that matter to the grammar, so random strings get past the first checks.
        let alphabet = b"PROXY TCP46UNKNOW0123456789.:abcdef\r\n\0QUIT\x21\x11\x20";
        for round in 0..30_000 {
            let buf: Vec<u8> = match round % 3 {
                0 => {
                    let len = rng.below(130);
                    (0..len).map(|_| rng.next() as u8).collect()
                }
                1 => {
                    let mut b = if rng.below(2) == 0 {
                        V1_PREFIX.to_vec()
                    } else {
                        V2_SIGNATURE.to_vec()
                    };
                    let len = rng.below(120);
                    b.extend((0..len).map(|_| alphabet[rng.below(alphabet.len())]));
                    b
                }
                _ => {
                    let mut b = seeds[rng.below(seeds.len())].clone();
                    for _ in 0..=rng.below(3) {
                        let at = rng.below(b.len() + 1);
                        match rng.below(3) {
                            0 if at < b.len() => b[at] = rng.next() as u8,
                            1 if at < b.len() => {
                                b.remove(at);
                            }
                            _ => b.insert(at, alphabet[rng.below(alphabet.len())]),
                        }
                    }
                    let tail = rng.below(8);
                    b.extend((0..tail).map(|_| rng.next() as u8));
                    b
                }
            };
            assert_consistent_prefixes(&buf);
        }
    }
}
