//! The cluster secret: every Bridge call carries it, and the owner node
//! compares it in constant time before it claims anything.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

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

    /// Adds the secret to an outgoing request.
    pub fn attach(&self, metadata: &mut MetadataMap) -> Result<(), Status> {
        if let Some(s) = &self.0 {
            let value = s
                .parse()
                .map_err(|_| Status::internal("the cluster secret is not a valid header value"))?;
            metadata.insert(SECRET_HEADER, value);
        }
        Ok(())
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

/// Server side: refuses a request that does not carry the secret.
pub fn check_secret<T>(secret: &Secret, request: Request<T>) -> Result<Request<T>, Status> {
    let Some(expected) = &secret.0 else {
        return Ok(request);
    };
    let given = request
        .metadata()
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // ct_eq on slices of different lengths is false without early exit on content.
    if bool::from(given.ct_eq(expected.as_bytes())) {
        Ok(request)
    } else {
        Err(Status::unauthenticated("wrong or missing cluster secret"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_secret_passes() {
        let secret = Secret::new(Some("hunter2"));
        let mut ok = Request::new(());
        secret.attach(ok.metadata_mut()).unwrap();
        assert!(check_secret(&secret, ok).is_ok());
        let mut wrong = Request::new(());
        Secret::new(Some("hunter3"))
            .attach(wrong.metadata_mut())
            .unwrap();
        assert_eq!(
            check_secret(&secret, wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(check_secret(&secret, Request::new(())).is_err());
        assert!(check_secret(&Secret::new(None), Request::new(())).is_ok());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
