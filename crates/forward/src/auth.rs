//! The cluster secret: every Bridge call carries it, and the owner node
//! compares it in constant time before it claims anything.

use std::sync::Arc;

use http::HeaderMap;
use subtle::ConstantTimeEq;
use tonic::Status;

/// The request header that carries the cluster secret.
pub const SECRET_HEADER: &str = "x-dtcp-cluster-secret";

/// The cluster secret, or none for an insecure plane. `Debug` hides it.
#[derive(Clone, Default)]
pub struct Secret(Option<Arc<str>>);

impl Secret {
    /// A secret, or none.
    pub fn new(secret: Option<&str>) -> Self {
        Secret(secret.map(Arc::from))
    }

    /// Adds the secret to an outgoing request's headers.
    pub fn attach(&self, headers: &mut HeaderMap) -> Result<(), Status> {
        if let Some(s) = &self.0 {
            let value = s
                .parse()
                .map_err(|_| Status::internal("the cluster secret is not a valid header value"))?;
            headers.insert(SECRET_HEADER, value);
        }
        Ok(())
    }

    /// Server side: whether a request's headers carry the secret (always,
    /// for an insecure plane). Compared in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.0 else {
            return true;
        };
        let given = headers
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // ct_eq on slices of different lengths is false without early exit on content.
        bool::from(given.ct_eq(expected.as_bytes()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Secret(<set>)"
        } else {
            "Secret(<none>)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_secret_passes() {
        let secret = Secret::new(Some("hunter2"));
        let mut ok = HeaderMap::new();
        secret.attach(&mut ok).unwrap();
        assert!(secret.admits(&ok));
        let mut wrong = HeaderMap::new();
        Secret::new(Some("hunter3")).attach(&mut wrong).unwrap();
        assert!(!secret.admits(&wrong));
        assert!(!secret.admits(&HeaderMap::new()));
        assert!(Secret::new(None).admits(&HeaderMap::new()));
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
