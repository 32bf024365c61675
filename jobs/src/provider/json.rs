//! JSON string literals for provider request bodies, written eight bytes at a time.
//!
//! A Resend batch request is mostly HTML (about 7 KB per message, 100 messages per
//! request), and serde_json's writer looks up every byte of it in a table to find the few
//! that need escaping: 3.8% of the whole machine in a 1,000,000-recipient `mailing bench`
//! profile (BENCHMARKS.md, fifteenth stop). [`push_str`] tests a whole 64-bit word for a
//! byte to escape at once and copies the runs in between. Its output is byte for byte
//! serde_json's (the tests compare them on generated strings).

/// Eight copies of `b`, one per byte of a word.
const fn repeat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

const ONES: u64 = repeat(0x01);
const HIGHS: u64 = repeat(0x80);

/// The high bit of each byte of `word` that is below 0x20 (a control character), a
/// double quote or a backslash. A borrow can also mark a byte *above* a marked one, but
/// the lowest mark is always a true one, which is all [`push_str`] reads.
fn special_bytes(word: u64) -> u64 {
    // The classic "has a byte less than n" test, for n = 0x20 and for zero after XOR.
    let below_space = word.wrapping_sub(repeat(0x20)) & !word & HIGHS;
    let quote = word ^ repeat(b'"');
    let quote = quote.wrapping_sub(ONES) & !quote & HIGHS;
    let backslash = word ^ repeat(b'\\');
    let backslash = backslash.wrapping_sub(ONES) & !backslash & HIGHS;
    below_space | quote | backslash
}

/// Whether serde_json escapes byte `b` inside a string.
fn is_special(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Appends the escape serde_json writes for `b`, one of the [`is_special`] bytes.
fn push_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0c => b'f',
        _ => {
            let hex = |nibble: u8| HEX[usize::from(nibble & 0xf)];
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex(b >> 4), hex(b)]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

/// Appends `s` to `out` as a JSON string literal, quotes included: `"` and `\` escaped
/// with a backslash, control characters as `\n`, `\r`, `\t`, `\b`, `\f` or `\u00xx`, and
/// every other character (UTF-8 included) as itself.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // `copied`: the bytes before it are in `out`. `at`: the next byte to look at.
    let (mut copied, mut at) = (0, 0);
    while at < bytes.len() {
        if let Some(chunk) = bytes.get(at..at + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let marks = special_bytes(u64::from_le_bytes(word));
            if marks == 0 {
                at += 8;
                continue;
            }
            // Little-endian: the lowest mark is the chunk's first special byte.
            at += (marks.trailing_zeros() / 8) as usize;
        } else if !is_special(bytes[at]) {
            // The last few bytes, fewer than a word, one at a time.
            at += 1;
            continue;
        }
        out.extend_from_slice(&bytes[copied..at]);
        push_escape(out, bytes[at]);
        at += 1;
        copied = at;
    }
    out.extend_from_slice(&bytes[copied..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        push_str(&mut out, s);
        String::from_utf8(out).expect("the output is UTF-8")
    }

    #[test]
    fn every_ascii_character_is_written_as_serde_json_writes_it() {
        for b in 0u8..=0x7f {
            let s = char::from(b).to_string();
            assert_eq!(
                ours(&s),
                serde_json::to_string(&s).unwrap(),
                "byte {b:#04x}"
            );
            // And at every offset of a word, with plain text around it.
            for pad in 0..9 {
                let s = format!("{}{}{}", "a".repeat(pad), char::from(b), "z".repeat(9));
                assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
            }
        }
    }

    #[test]
    fn generated_strings_are_written_as_serde_json_writes_them() {
        // Plain bytes, every byte to escape, bytes next to them (0x1f, 0x20, 0x21, 0x23,
        // 0x5b, 0x5d, 0x7f) and multi-byte characters, whose bytes are all >= 0x80.
        const POOL: &[char] = &[
            'a', 'Z', ' ', '<', '>', '=', '"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{0}',
            '\u{1}', '\u{1f}', '!', '#', '[', ']', '\u{7f}', 'é', 'ü', '€', '中', '\u{2028}', '😀',
            '\u{a0}',
        ];
        for _ in 0..20_000 {
            let len = rand::random_range(0..48);
            let s: String = (0..len)
                .map(|_| POOL[rand::random_range(0..POOL.len())])
                .collect();
            assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn html_round_trips() {
        let html =
            "<p class=\"card\">Dear Ann,\n\tyou save 10% \\ on <b>item 3</b>.</p>".repeat(50);
        let back: String = serde_json::from_str(&ours(&html)).unwrap();
        assert_eq!(back, html);
    }
}
