//! The HTTP client that posts to one endpoint: HTTP/1.1 over one kept
//! connection (opened again after an error), plain or through rustls.
//!
//! Built on hyper's own client connection rather than a client library:
//! hyper and rustls are already what the server runs on, an endpoint is a
//! single origin (no pool, no redirects, no proxies to manage), and every
//! request is bounded by the endpoint's `timeout`, connection included.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, Method, Request, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// An answer body is read (so the connection can be reused) up to this
/// size; past it the connection is dropped instead.
const ANSWER_BYTES_MAX: usize = 64 * 1024;

/// Where the system keeps its CA bundle, by distribution family.
const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A parsed endpoint URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub uri: Uri,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "url {url:?}: only http:// and https:// are supported"
                ))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("url {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Target {
            https,
            host,
            port,
            uri,
        })
    }
}

pub struct Client {
    target: Target,
    tls: Option<TlsConnector>,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(target: Target, ca: &Path, timeout: Duration) -> Result<Client, String> {
        let tls = if target.https {
            Some(tls_connector(ca)?)
        } else {
            None
        };
        Ok(Client {
            target,
            tls,
            timeout,
            conn: None,
        })
    }

    /// Posts `body`; the status, or why there is none. Bounded by the
    /// timeout as a whole.
    pub async fn post(&mut self, headers: &HeaderMap, body: Bytes) -> Result<StatusCode, String> {
        match tokio::time::timeout(self.timeout, self.post_inner(headers, body)).await {
            Ok(r) => {
                if r.is_err() {
                    self.conn = None;
                }
                r
            }
            Err(_) => {
                // A late answer must not be read as the next request's.
                self.conn = None;
                Err(format!("no answer within {:?}", self.timeout))
            }
        }
    }

    async fn post_inner(&mut self, headers: &HeaderMap, body: Bytes) -> Result<StatusCode, String> {
        let reusable = self
            .conn
            .as_mut()
            .is_some_and(|c| !c.is_closed() && c.is_ready());
        if !reusable {
            self.conn = Some(self.connect().await?);
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.target.uri.path_and_query().map_or("/", |p| p.as_str()))
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        *request.headers_mut() = headers.clone();
        let authority = match self.target.uri.authority() {
            Some(a) => a.as_str().to_owned(),
            None => self.target.host.clone(),
        };
        if let Ok(v) = authority.parse() {
            request.headers_mut().insert(header::HOST, v);
        }
        let answer = conn
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = answer.status();
        let keep = Limited::new(answer.into_body(), ANSWER_BYTES_MAX)
            .collect()
            .await
            .is_ok();
        if !keep {
            self.conn = None;
        }
        Ok(status)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", t.host, t.port))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some(tls) => {
                let name = ServerName::try_from(t.host.clone())
                    .map_err(|e| format!("{:?} is not a TLS server name: {e}", t.host))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {} failed: {e}", t.host))?;
                handshake(TokioIo::new(stream)).await
            }
        }
    }
}

async fn handshake<S>(io: TokioIo<S>) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    // Ends by itself when `send` is dropped or the peer closes.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

fn tls_connector(ca: &Path) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let files: Vec<&Path> = if ca.as_os_str().is_empty() {
        SYSTEM_CA_BUNDLES
            .iter()
            .map(Path::new)
            .filter(|p| p.exists())
            .take(1)
            .collect()
    } else {
        vec![ca]
    };
    for file in files {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("CA file {}: {e}", file.display()))?;
        let (_added, _ignored) = roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err(
            "no CA certificate to check an https endpoint against: set the endpoint's ca".into(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Target::parse("https://hooks.example:8443/a?b=1").unwrap();
        assert!(t.https);
        assert_eq!((t.host.as_str(), t.port), ("hooks.example", 8443));
        let t = Target::parse("http://127.0.0.1/x").unwrap();
        assert_eq!(t.port, 80);
        assert!(Target::parse("ftp://h/").is_err());
        assert!(Target::parse("not a url").is_err());
        assert!(Target::parse("/relative").is_err());
    }
}
