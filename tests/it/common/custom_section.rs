//! A component with a custom section appended: the same code under a new content
//! hash, which the host (and its cache) take for a new plugin version. Shared by
//! the tests and the reload benchmark.

/// `wasm` with a custom section named `hookwasm-variant` holding `tag`.
pub fn with_custom_section(wasm: &[u8], tag: &str) -> Vec<u8> {
    with_named_section(wasm, "hookwasm-variant", tag.as_bytes())
}

/// `wasm` with a custom section `name` holding `payload`, appended at the end.
pub fn with_named_section(wasm: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0);
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}
