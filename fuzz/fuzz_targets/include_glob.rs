//! The `include:` glob matcher: the input is a pattern, a NUL, then a file name (no NUL: the
//! input ends the name). It must agree with a plain reference matcher written from fnmatch(3)
//! and stay within its bound of (pattern length + 1) × (name length + 1) steps, whatever the
//! stars: it can never take exponential time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rinetd::fuzzing::glob_matches_counting;

fuzz_target!(|data: &[u8]| {
    let (pattern, name) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &b""[..]),
    };
    let (matched, steps) = glob_matches_counting(pattern, name);
    let bound = (pattern.len() + 1) * (name.len() + 1);
    assert!(steps <= bound, "{steps} steps for a bound of {bound}");
    // The reference is slow; a file name has at most 255 bytes (NAME_MAX) anyway.
    if pattern.len() > 255 || name.len() > 255 {
        return;
    }
    let mut memo = vec![None; bound];
    let expected = reference(pattern, name, 0, 0, &mut memo);
    assert_eq!(
        matched,
        expected,
        "pattern {:?} name {:?}",
        String::from_utf8_lossy(pattern),
        String::from_utf8_lossy(name)
    );
});

/// fnmatch(3) without flags, on bytes, the slow and obvious way (memoized on the pair of
/// positions so that stars stay polynomial): `*` any run, `?` any byte, `[…]` a bracket
/// expression, anything else itself.
fn reference(p: &[u8], n: &[u8], i: usize, j: usize, memo: &mut [Option<bool>]) -> bool {
    let key = i * (n.len() + 1) + j;
    if let Some(known) = memo[key] {
        return known;
    }
    let result = match p.get(i) {
        None => j == n.len(),
        Some(b'*') => (j..=n.len()).any(|k| reference(p, n, i + 1, k, memo)),
        Some(b'?') => j < n.len() && reference(p, n, i + 1, j + 1, memo),
        Some(&byte) => match if byte == b'[' {
            bracket(&p[i + 1..])
        } else {
            None
        } {
            Some((length, members, negated)) => {
                j < n.len()
                    && members[usize::from(n[j])] != negated
                    && reference(p, n, i + 1 + length, j + 1, memo)
            }
            None => j < n.len() && n[j] == byte && reference(p, n, i + 1, j + 1, memo),
        },
    };
    memo[key] = Some(result);
    result
}

/// A bracket expression, given the pattern after its `[`: its length up to and including the
/// closing `]`, the bytes it names and whether it is negated (`!` or `^` first). `None` when
/// nothing closes it, and the `[` is then an ordinary byte. A `]` first (after any `!`) is a
/// member; `a-z` is the bytes from `a` to `z`; a `-` first or last is itself.
fn bracket(rest: &[u8]) -> Option<(usize, [bool; 256], bool)> {
    let negated = matches!(rest.first(), Some(b'!' | b'^'));
    let start = usize::from(negated);
    let mut members = [false; 256];
    let mut k = start;
    loop {
        let &byte = rest.get(k)?;
        if byte == b']' && k > start {
            return Some((k + 1, members, negated));
        }
        match (rest.get(k + 1), rest.get(k + 2)) {
            (Some(b'-'), Some(&end)) if end != b']' => {
                for b in byte..=end {
                    members[usize::from(b)] = true;
                }
                k += 3;
            }
            _ => {
                members[usize::from(byte)] = true;
                k += 1;
            }
        }
    }
}
