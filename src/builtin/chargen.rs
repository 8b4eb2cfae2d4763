//! RFC 864 character generator: lines of 72 printable ASCII characters (32..=126), each line
//! starting one character further along the 95-character ring, ended by CRLF.

const FIRST: u8 = b' ';
const RING: usize = 95;
const LINE: usize = 72;

/// Where the endless TCP stream has got to.
#[derive(Debug, Default, Clone)]
pub struct Cursor {
    line: usize,
}

impl Cursor {
    /// Appends whole lines to `out` until it holds at least `at_least` bytes.
    pub fn fill(&mut self, out: &mut Vec<u8>, at_least: usize) {
        while out.len() < at_least {
            push_line(out, self.line);
            self.line = (self.line + 1) % RING;
        }
    }
}

fn push_line(out: &mut Vec<u8>, line: usize) {
    out.extend((0..LINE).map(|i| FIRST + ((line + i) % RING) as u8));
    out.extend_from_slice(b"\r\n");
}

/// A UDP answer: `len` bytes of the stream from its first line (RFC 864 asks for a random
/// length between 0 and 512, which the caller picks).
pub fn datagram(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + LINE + 2);
    Cursor::default().fill(&mut out, len);
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_rotate_by_one_and_wrap_after_95() {
        let mut out = Vec::new();
        Cursor::default().fill(&mut out, 96 * 74);
        let lines: Vec<&[u8]> = out.split(|b| *b == b'\n').collect();
        assert_eq!(
            lines[0],
            &b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg\r"[..]
        );
        assert_eq!(lines[1][0], b'!');
        assert_eq!(lines[94][0], b'~');
        assert_eq!(lines[95], lines[0]);
    }
}
