//! Web Push (RFC 8030): the server's VAPID key (RFC 8292) and encrypted requests to a
//! browser's push service (RFC 8291, through `web-push-native`). The key is a P-256
//! scalar kept in the database (`domain::notify`), so every node signs with the same one
//! and browsers' subscriptions stay valid across restarts.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;

/// Base64url without padding, as Web Push writes keys.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes base64url, padded or not.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text.trim_end_matches('=')).ok()
}

/// A browser's subscription: its push service's endpoint and the keys it encrypts to.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub endpoint: String,
    /// The browser's P-256 public key (65 bytes, uncompressed), base64url.
    pub p256dh: String,
    /// The browser's 16-byte authentication secret, base64url.
    pub auth: String,
}

impl Subscription {
    /// Whether the keys are what a browser gives (a point on P-256, a 16-byte secret) and
    /// the endpoint an http(s) URL.
    pub fn check(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.endpoint).map_err(|_| "endpoint is not a URL")?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err("endpoint must be an http(s) URL".into());
        }
        self.keys().map(|_| ())
    }

    fn keys(&self) -> Result<(p256::PublicKey, web_push_native::Auth), String> {
        let public = unb64(&self.p256dh)
            .and_then(|k| p256::PublicKey::from_sec1_bytes(&k).ok())
            .ok_or("keys.p256dh is not a P-256 public key")?;
        let auth = unb64(&self.auth)
            .filter(|a| a.len() == 16)
            .ok_or("keys.auth must be 16 bytes, base64url")?;
        Ok((public, web_push_native::Auth::clone_from_slice(&auth)))
    }
}

/// The server's VAPID key.
#[derive(Clone)]
pub struct Vapid {
    key: SigningKey,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public", &self.public_key())
            .finish()
    }
}

impl Vapid {
    /// A fresh secret scalar (32 bytes) for [`Vapid::from_secret`].
    pub fn generate() -> [u8; 32] {
        loop {
            let bytes: [u8; 32] = rand::random();
            if SigningKey::from_slice(&bytes).is_ok() {
                return bytes;
            }
        }
    }

    pub fn from_secret(bytes: &[u8]) -> Option<Vapid> {
        SigningKey::from_slice(bytes).ok().map(|key| Vapid { key })
    }

    /// The public key browsers subscribe with (`applicationServerKey`): the uncompressed
    /// point, base64url.
    pub fn public_key(&self) -> String {
        b64(self
            .key
            .verifying_key()
            .as_affine()
            .to_encoded_point(false)
            .as_bytes())
    }

    /// The `Authorization` header for a push to `endpoint`: an ES256 token for the push
    /// service's origin, valid 12 hours from `now_s`, naming `subject` as the contact.
    fn authorization(&self, endpoint: &reqwest::Url, subject: &str, now_s: i64) -> String {
        let audience = endpoint.origin().ascii_serialization();
        let header = b64(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = b64(serde_json::json!({
            "aud": audience,
            "exp": now_s + 12 * 3600,
            "sub": subject,
        })
        .to_string()
        .as_bytes());
        let signed = format!("{header}.{claims}");
        let signature: Signature = self.key.sign(signed.as_bytes());
        format!(
            "vapid t={signed}.{}, k={}",
            b64(&signature.to_bytes()),
            self.public_key()
        )
    }

    /// The encrypted, signed request that pushes `payload` to `subscription`; the push
    /// service keeps it up to `ttl_s` seconds for a browser that is off.
    pub fn request(
        &self,
        subscription: &Subscription,
        payload: Vec<u8>,
        subject: &str,
        now_s: i64,
        ttl_s: u64,
    ) -> Result<reqwest::Request, String> {
        let url = reqwest::Url::parse(&subscription.endpoint).map_err(|e| e.to_string())?;
        let uri = subscription
            .endpoint
            .parse()
            .map_err(|_| "endpoint is not a URI".to_owned())?;
        let (public, auth) = subscription.keys()?;
        let mut request = web_push_native::WebPushBuilder::new(uri, public, auth)
            .with_valid_duration(std::time::Duration::from_secs(ttl_s))
            .build(payload)
            .map_err(|e| e.to_string())?;
        let authorization = self.authorization(&url, subject, now_s);
        request.headers_mut().insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&authorization).map_err(|e| e.to_string())?,
        );
        reqwest::Request::try_from(request).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn a_vapid_token_is_signed_by_the_public_key_it_names() {
        let vapid = Vapid::from_secret(&Vapid::generate()).expect("test");
        let url = reqwest::Url::parse("https://push.example.net/send/abc?x=1").expect("test");
        let header = vapid.authorization(&url, "mailto:ops@example.org", 1_000);
        let (t, k) = header
            .strip_prefix("vapid t=")
            .expect("test")
            .split_once(", k=")
            .expect("test");
        assert_eq!(k, vapid.public_key());
        let (signed, signature) = t.rsplit_once('.').expect("test");
        let key = VerifyingKey::from_sec1_bytes(&unb64(k).expect("test")).expect("test");
        let signature = Signature::from_slice(&unb64(signature).expect("test")).expect("test");
        key.verify(signed.as_bytes(), &signature).expect("test");
        let claims: serde_json::Value =
            serde_json::from_slice(&unb64(signed.split('.').nth(1).expect("test")).expect("test"))
                .expect("test");
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["exp"], 1_000 + 12 * 3600);
        assert_eq!(claims["sub"], "mailto:ops@example.org");
    }

    #[test]
    fn bad_subscription_keys_are_refused() {
        let good = Subscription {
            endpoint: "https://push.example.net/x".into(),
            p256dh: Vapid::from_secret(&Vapid::generate())
                .expect("test")
                .public_key(),
            auth: b64(&[7u8; 16]),
        };
        assert!(good.check().is_ok());
        for bad in [
            Subscription {
                auth: b64(&[7u8; 15]),
                ..good.clone()
            },
            Subscription {
                p256dh: b64(&[4u8; 65]),
                ..good.clone()
            },
            Subscription {
                endpoint: "ftp://push.example.net/x".into(),
                ..good.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
