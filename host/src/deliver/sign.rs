//! Standard Webhooks signatures: `v1,` and the base64 HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{body}`, one per secret, space-separated, so a
//! client can rotate its secret without missing a delivery.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// The length of one signature: `v1,` and 32 bytes in base64.
const ONE: usize = 3 + 44;

/// The `webhook-signature` header value for one attempt. Made in one
/// allocation of its exact length, which the header value then takes as is.
pub fn sign(secrets: &[Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity((secrets.len() * (ONE + 1)).saturating_sub(1));
    for (i, s) in secrets.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str("v1,");
        STANDARD.encode_string(mac(&s.key, msg_id, timestamp, body), &mut out);
    }
    out
}

fn mac(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg_id.as_bytes());
    m.update(b".");
    // The timestamp's digits, written on the stack.
    let mut digits = [0u8; 20];
    let mut cursor = std::io::Cursor::new(&mut digits[..]);
    std::io::Write::write_fmt(&mut cursor, format_args!("{timestamp}")).expect("20 digits fit");
    let n = cursor.position() as usize;
    m.update(&digits[..n]);
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().into()
}

/// Whether any `v1,` signature in `header` is `secret`'s for this message (used
/// by `hookwasm receive`). Compared in constant time.
pub fn verify(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let mut m = Hmac::<Sha256>::new_from_slice(&secret.key).expect("HMAC takes any key length");
    m.update(format!("{msg_id}.{timestamp}.").as_bytes());
    m.update(body);
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| match STANDARD.decode(sig) {
            Ok(bytes) => m.clone().verify_slice(&bytes).is_ok(),
            Err(_) => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // The example in the Standard Webhooks specification.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(
            std::slice::from_ref(&secret),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(sig.capacity(), sig.len(), "made at its exact length");
        let two = sign(&[secret.clone(), secret.clone()], "msg_1", -1, body);
        assert_eq!(two.len(), 2 * 47 + 1);
        assert_eq!(two.capacity(), two.len());
        assert!(verify(&secret, "msg_1", -1, body, &two));
        assert!(verify(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            &sig
        ));
        assert!(!verify(&secret, "msg_other", 1614265330, body, &sig));
    }
}
